//! Workspaces, host side: which files make a project ([`file_set`]), a
//! record of what was put into a guest ([`Base::record`]), the guest's
//! changes against it as a binary-safe git patch ([`Base::diff`]), and
//! that patch applied to the host only when every file it touches is as
//! it was put in ([`Base::apply`]).
//!
//! The record is a commit in a private git directory (the caller keeps it
//! beside the VM), so a diff is git's own: the pulled guest tree is staged
//! against that commit with the project's own `.gitignore` files in force
//! (build outputs stay out) and `git diff --cached --binary` writes the
//! patch. git runs as a program (the host's own, which the project uses
//! already): its diff, binary patches and ignore rules are not ours to
//! write again. Moving files into and out of the guest is the caller's.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The ignore file of a project outside git (gitignore syntax).
pub const IGNORE_FILE: &str = ".bangerignore";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("run git ({what})")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("git {what} failed ({status}): {stderr}")]
    Git {
        what: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("walk {dir}")]
    Walk {
        dir: PathBuf,
        #[source]
        source: ignore::Error,
    },
    /// Files the patch touches changed on the host since they were put
    /// into the guest: nothing was applied.
    #[error(
        "changed on the host since they were put into the guest (nothing applied): {}",
        .0.join(", ")
    )]
    HostChanged(Vec<String>),
}

/// Runs git with `args`, `stdin` on its standard input; its stdout.
fn git(
    what: &'static str,
    args: &[&std::ffi::OsStr],
    stdin: &[u8],
) -> Result<Vec<u8>, WorkspaceError> {
    git_in(None, what, args, stdin)
}

/// [`git`] in the directory `cwd` (`git apply` takes paths from there).
fn git_in(
    cwd: Option<&Path>,
    what: &'static str,
    args: &[&std::ffi::OsStr],
    stdin: &[u8],
) -> Result<Vec<u8>, WorkspaceError> {
    let mut command = Command::new("git");
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let mut child = command
        .args(args)
        // Our own identity and no user configuration in the way (hooks,
        // signing, line-ending conversion).
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| WorkspaceError::Spawn { what, source })?;
    if let Some(mut input) = child.stdin.take() {
        // A git that does not read its input closes the pipe: its status
        // says what went wrong.
        let _ = input.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|source| WorkspaceError::Spawn { what, source })?;
    if !out.status.success() {
        return Err(WorkspaceError::Git {
            what,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

fn nul_separated(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// The files that make the project in `dir`, relative to it, sorted: in a
/// git work tree, those git tracks plus the untracked ones it does not
/// ignore (tracked files deleted from the work tree, and submodules, left
/// out); elsewhere every file under `dir` minus what `.bangerignore`
/// files exclude.
pub fn file_set(dir: &Path) -> Result<Vec<PathBuf>, WorkspaceError> {
    if !dir.is_dir() {
        return Err(WorkspaceError::NotADirectory(dir.to_owned()));
    }
    let inside = git(
        "rev-parse",
        &[
            os("-C"),
            dir.as_os_str(),
            os("rev-parse"),
            os("--is-inside-work-tree"),
        ],
        b"",
    );
    let mut files: Vec<PathBuf> = match inside {
        Ok(out) if out.starts_with(b"true") => {
            let listed = git(
                "ls-files",
                &[
                    os("-C"),
                    dir.as_os_str(),
                    os("ls-files"),
                    os("-z"),
                    os("--cached"),
                    os("--others"),
                    os("--exclude-standard"),
                ],
                b"",
            )?;
            let mut seen = std::collections::BTreeSet::new();
            nul_separated(&listed)
                .into_iter()
                .map(PathBuf::from)
                .filter(|p| {
                    std::fs::symlink_metadata(dir.join(p)).is_ok_and(|m| !m.is_dir())
                        && seen.insert(p.clone())
                })
                .collect()
        }
        _ => {
            let mut found = Vec::new();
            let walk = ignore::WalkBuilder::new(dir)
                .hidden(false)
                .git_ignore(false)
                .git_global(false)
                .git_exclude(false)
                .ignore(false)
                .parents(false)
                .add_custom_ignore_filename(IGNORE_FILE)
                .build();
            for entry in walk {
                let entry = entry.map_err(|source| WorkspaceError::Walk {
                    dir: dir.to_owned(),
                    source,
                })?;
                if entry.file_type().is_some_and(|t| !t.is_dir()) {
                    if let Ok(rel) = entry.path().strip_prefix(dir) {
                        found.push(rel.to_owned());
                    }
                }
            }
            found
        }
    };
    files.sort();
    Ok(files)
}

/// How one file differs from the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One file that differs from the base (path relative to the project).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

/// A copy's changes against the base: its files, and the size of the
/// patch written (to a file: a guest chooses how large it is).
#[derive(Debug, Clone)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub patch_bytes: u64,
}

/// What was put into a guest: a commit in a private git directory.
#[derive(Debug, Clone)]
pub struct Base {
    git_dir: PathBuf,
}

impl Base {
    /// The record kept in `git_dir` (made by [`Base::record`]).
    pub fn at(git_dir: &Path) -> Self {
        Base {
            git_dir: git_dir.to_owned(),
        }
    }

    fn git(
        &self,
        what: &'static str,
        work_tree: Option<&Path>,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<Vec<u8>, WorkspaceError> {
        let git_dir = format!("--git-dir={}", self.git_dir.display());
        let mut all: Vec<&std::ffi::OsStr> = vec![os(&git_dir)];
        let tree;
        if let Some(w) = work_tree {
            tree = format!("--work-tree={}", w.display());
            all.push(os(&tree));
        }
        all.extend(args.iter().map(|a| os(a)));
        git_in(work_tree, what, &all, stdin)
    }

    /// Records `files` of `work_tree` (as [`file_set`] chose them) as the
    /// base, in a new git directory `git_dir`. Returns the commit id.
    pub fn record(
        git_dir: &Path,
        work_tree: &Path,
        files: &[PathBuf],
    ) -> Result<(Base, String), WorkspaceError> {
        let base = Base::at(git_dir);
        git(
            "init",
            &[os("init"), os("-q"), os("--bare"), git_dir.as_os_str()],
            b"",
        )?;
        // Fast zlib for the objects of a record nobody pushes anywhere:
        // recording a large project costs hashing, not compressing.
        base.git(
            "config",
            None,
            &["config", "core.looseCompression", "1"],
            b"",
        )?;
        let mut list = Vec::new();
        for f in files {
            list.extend_from_slice(f.as_os_str().as_encoded_bytes());
            list.push(0);
        }
        base.git(
            "add",
            Some(work_tree),
            &[
                "-c",
                "core.bare=false",
                "add",
                "-f",
                "--pathspec-from-file=-",
                "--pathspec-file-nul",
            ],
            &list,
        )?;
        let commit = base.commit(work_tree, "put into the guest")?;
        Ok((base, commit))
    }

    fn commit(&self, work_tree: &Path, message: &str) -> Result<String, WorkspaceError> {
        self.git(
            "commit",
            Some(work_tree),
            &[
                "-c",
                "core.bare=false",
                "-c",
                "user.name=banger",
                "-c",
                "user.email=banger@localhost",
                "commit",
                "-q",
                "--no-verify",
                "--allow-empty",
                "-m",
                message,
            ],
            b"",
        )?;
        self.head()
    }

    /// The base's commit id.
    pub fn head(&self) -> Result<String, WorkspaceError> {
        let head = self.git("rev-parse", None, &["rev-parse", "HEAD"], b"")?;
        Ok(String::from_utf8_lossy(&head).trim().to_owned())
    }

    /// Stages `tree` against the base in the private index, with the
    /// project's `.gitignore` files (and a top-level `.bangerignore`) in
    /// force, runs `then`, and puts the index back to the base whatever
    /// `then` did.
    fn staged<T>(
        &self,
        tree: &Path,
        then: impl FnOnce(&Self) -> Result<T, WorkspaceError>,
    ) -> Result<T, WorkspaceError> {
        let bangerignore = tree.join(IGNORE_FILE);
        let excludes = format!("core.excludesFile={}", bangerignore.display());
        self.git("read-tree", None, &["read-tree", "HEAD"], b"")?;
        let staged = self
            .git(
                "add",
                Some(tree),
                &["-c", "core.bare=false", "-c", &excludes, "add", "-A"],
                b"",
            )
            .and_then(|_| then(self));
        self.git("read-tree", None, &["read-tree", "HEAD"], b"")?;
        staged
    }

    /// The staged changes against the base, one per path.
    fn staged_changes(&self, tree: &Path) -> Result<Vec<Change>, WorkspaceError> {
        let out = self.git(
            "diff --name-status",
            Some(tree),
            &[
                "-c",
                "core.bare=false",
                "diff",
                "--cached",
                "--name-status",
                "-z",
                "--no-renames",
                "HEAD",
            ],
            b"",
        )?;
        // `STATUS\0PATH\0` per file.
        let fields = nul_separated(&out);
        Ok(fields
            .chunks(2)
            .filter_map(|pair| match pair {
                [status, path] => Some(Change {
                    path: path.clone(),
                    kind: match status.as_str() {
                        "A" => ChangeKind::Added,
                        "D" => ChangeKind::Deleted,
                        _ => ChangeKind::Modified,
                    },
                }),
                _ => None,
            })
            .collect())
    }

    /// What differs in `tree` (a copy of the project: the guest's, pulled
    /// whole, or the host's own) from the base, file by file, sorted.
    pub fn changes(&self, tree: &Path) -> Result<Vec<Change>, WorkspaceError> {
        self.staged(tree, |base| base.staged_changes(tree))
    }

    /// The changes in `pulled` (the guest's copy of the project, fetched
    /// whole) against the base, file by file, and as a binary-safe git
    /// patch written to `patch_file` (an absolute path), with paths
    /// relative to the project (`a/PATH`, `b/PATH`). Files the project's
    /// `.gitignore` files (or a top-level `.bangerignore`) exclude are
    /// left out unless the base has them.
    pub fn diff(&self, pulled: &Path, patch_file: &Path) -> Result<Diff, WorkspaceError> {
        let output = format!("--output={}", patch_file.display());
        self.staged(pulled, |base| {
            base.git(
                "diff",
                Some(pulled),
                &[
                    "-c",
                    "core.bare=false",
                    "diff",
                    "--cached",
                    "--binary",
                    "--no-renames",
                    "--no-color",
                    &output,
                    "HEAD",
                ],
                b"",
            )?;
            let patch_bytes = std::fs::metadata(patch_file).map_or(0, |m| m.len());
            Ok(Diff {
                changes: base.staged_changes(pulled)?,
                patch_bytes,
            })
        })
    }

    /// Moves the base on to hold `paths` as they are now in `work_tree`
    /// (files pushed into the guest, or removed there, since the base
    /// was recorded). Returns the new commit id.
    pub fn advance(&self, work_tree: &Path, paths: &[String]) -> Result<String, WorkspaceError> {
        self.git("read-tree", None, &["read-tree", "HEAD"], b"")?;
        let mut list = Vec::new();
        for p in paths {
            list.extend_from_slice(p.as_bytes());
            list.push(0);
        }
        self.git(
            "add",
            Some(work_tree),
            &[
                "-c",
                "core.bare=false",
                "add",
                "-A",
                "-f",
                "--pathspec-from-file=-",
                "--pathspec-file-nul",
            ],
            &list,
        )?;
        self.commit(work_tree, "pushed into the guest")
    }

    /// The paths the patch in `patch` touches.
    fn touched(&self, patch: &str) -> Result<Vec<String>, WorkspaceError> {
        let out = self.git("apply", None, &["apply", "--numstat", "-z", patch], b"")?;
        // `ADDED\tDELETED\tPATH\0` per file (no renames: diff said so).
        Ok(nul_separated(&out)
            .into_iter()
            .filter_map(|line| line.splitn(3, '\t').nth(2).map(str::to_owned))
            .collect())
    }

    /// Applies the patch in `patch_file` (from [`Base::diff`]; an
    /// absolute path) to the project in `host`, refusing, with nothing
    /// changed, when a file it touches differs on the host from what was
    /// put into the guest; then the base moves on to include the patch.
    /// Returns the paths it changed.
    pub fn apply(&self, host: &Path, patch_file: &Path) -> Result<Vec<String>, WorkspaceError> {
        let patch = patch_file.to_string_lossy();
        let patch = patch.as_ref();
        let touched = self.touched(patch)?;
        if touched.is_empty() {
            return Ok(touched);
        }
        let mut changed = Vec::new();
        for path in &touched {
            let spec = format!("HEAD:{path}");
            let in_base = self
                .git(
                    "rev-parse",
                    None,
                    &["rev-parse", "-q", "--verify", &spec],
                    b"",
                )
                .ok()
                .map(|o| String::from_utf8_lossy(&o).trim().to_owned());
            let on_host = host.join(path);
            let same = match (&in_base, std::fs::symlink_metadata(&on_host)) {
                (None, Err(_)) => true,
                (None, Ok(_)) | (Some(_), Err(_)) => false,
                (Some(blob), Ok(_)) => {
                    let hashed = git(
                        "hash-object",
                        &[os("hash-object"), os("--no-filters"), on_host.as_os_str()],
                        b"",
                    )?;
                    String::from_utf8_lossy(&hashed).trim() == blob
                }
            };
            if !same {
                changed.push(path.clone());
            }
        }
        if !changed.is_empty() {
            return Err(WorkspaceError::HostChanged(changed));
        }
        let tree = Some(host);
        let apply = [
            "-c",
            "core.bare=false",
            "apply",
            "--binary",
            "--whitespace=nowarn",
        ];
        self.git(
            "apply --check",
            tree,
            &[&apply[..], &["--check", patch]].concat(),
            b"",
        )?;
        self.git("apply", tree, &[&apply[..], &[patch]].concat(), b"")?;
        // The base now holds the patch too: what the host and guest share.
        self.git("read-tree", None, &["read-tree", "HEAD"], b"")?;
        self.git(
            "apply --cached",
            tree,
            &[&apply[..], &["--cached", patch]].concat(),
            b"",
        )?;
        self.commit(host, "applied on the host")?;
        Ok(touched)
    }
}

#[cfg(test)]
mod tests;
