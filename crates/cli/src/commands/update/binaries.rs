//! The new build `banger update` installs: where its four binaries are
//! (`--from DIR`, or a checkout built first with `--source DIR`), and
//! whether each runs and says which build it is (`NAME --version`:
//! `NAME VERSION (build ID)`; the agent says only its version).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::UpdateError;

/// The binaries update replaces, in the order they are swapped: the
/// CLI last, so a failure part way leaves the running command's own file
/// for the rollback to find as it was.
pub(super) const NAMES: [&str; 4] = ["banger-agent", "banger-helper", "bangerd", "banger"];

/// How long a new binary gets to print its version.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Where scripts/build-agent.sh puts the static agent, relative to the
/// cargo target dir.
const CARGO_AGENT: &str = "x86_64-unknown-linux-gnu/release/banger-agent";

/// What `NAME --version` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reported {
    pub version: String,
    pub build_id: Option<String>,
}

/// One new binary: where it is and what it said it is.
#[derive(Debug, Clone)]
pub(super) struct NewBinary {
    pub name: &'static str,
    pub path: PathBuf,
    pub reported: Reported,
}

/// The checked new build: its four binaries and its build id (banger's
/// and bangerd's, which agree).
#[derive(Debug, Clone)]
pub(super) struct NewBuild {
    pub binaries: Vec<NewBinary>,
    pub version: String,
    pub build_id: String,
}

/// The four binaries in `dir`; the agent may instead be where
/// scripts/build-agent.sh puts it when `dir` is a cargo target dir's
/// `release` (`agent` overrides both: the path that script printed).
pub(super) fn locate(
    dir: &Path,
    agent: Option<PathBuf>,
) -> Result<Vec<(&'static str, PathBuf)>, UpdateError> {
    let mut found = Vec::new();
    // The CLI first: a directory without it is reported as such, not as
    // one without an agent.
    for name in NAMES.into_iter().rev() {
        let mut candidates = vec![dir.join(name)];
        if name == "banger-agent" {
            if let Some(a) = &agent {
                candidates = vec![a.clone()];
            } else if let Some(target) = dir.parent() {
                candidates.push(target.join(CARGO_AGENT));
            }
        }
        match candidates.iter().find(|p| p.is_file()) {
            Some(p) => found.insert(0, (name, p.clone())),
            None => {
                let looked: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                let hint = if name == "banger-agent" {
                    "; build it with scripts/build-agent.sh"
                } else {
                    ""
                };
                return Err(UpdateError::Missing {
                    name,
                    looked: format!("{}{hint}", looked.join(", ")),
                });
            }
        }
    }
    Ok(found)
}

/// Runs each binary's `--version` and checks that banger, bangerd and
/// banger-helper are of one build.
pub(super) fn check(
    dir: &Path,
    found: Vec<(&'static str, PathBuf)>,
) -> Result<NewBuild, UpdateError> {
    let mut binaries = Vec::new();
    for (name, path) in found {
        let reported = version_of(name, &path)?;
        if name != "banger-agent" && reported.build_id.is_none() {
            return Err(UpdateError::NoBuildId {
                binary: path,
                said: format!("{name} {}", reported.version),
            });
        }
        binaries.push(NewBinary {
            name,
            path,
            reported,
        });
    }
    let id_of = |name: &str| {
        binaries
            .iter()
            .find(|b| b.name == name)
            .and_then(|b| b.reported.build_id.clone())
            .unwrap_or_default()
    };
    let build_id = id_of("banger");
    for other in ["bangerd", "banger-helper"] {
        let theirs = id_of(other);
        if theirs != build_id {
            return Err(UpdateError::MixedBuilds {
                dir: dir.to_path_buf(),
                banger: build_id,
                other,
                theirs,
            });
        }
    }
    let version = binaries
        .iter()
        .find(|b| b.name == "banger")
        .map(|b| b.reported.version.clone())
        .unwrap_or_default();
    Ok(NewBuild {
        binaries,
        version,
        build_id,
    })
}

/// `PATH --version`, bounded in time, parsed as `NAME VERSION [(build ID)]`.
fn version_of(name: &'static str, path: &Path) -> Result<Reported, UpdateError> {
    let failed = |why: String| UpdateError::VersionFailed {
        binary: path.to_path_buf(),
        why,
    };
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "no answer within {} s",
                    VERSION_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(failed(format!("wait for it: {e}"))),
        }
    };
    // A version is a line; what a pipe holds is plenty.
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    if !status.success() {
        let said = stderr.trim();
        return Err(failed(if said.is_empty() {
            format!("it exited with {status}")
        } else {
            format!("it exited with {status}: {said}")
        }));
    }
    let line = stdout.lines().next().unwrap_or_default().trim().to_owned();
    parse_version(name, &line).ok_or(UpdateError::NotVersion {
        binary: path.to_path_buf(),
        name,
        said: line,
    })
}

/// `NAME VERSION` or `NAME VERSION (build ID)`; None when the line is not
/// `name`'s.
fn parse_version(name: &str, line: &str) -> Option<Reported> {
    let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
    let (version, build_id) = match rest.split_once(" (build ") {
        Some((v, tail)) => (v, Some(tail.strip_suffix(')')?.to_owned())),
        None => (rest, None),
    };
    let well_formed = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    if !well_formed(version) || !build_id.as_deref().is_none_or(well_formed) {
        return None;
    }
    Some(Reported {
        version: version.to_owned(),
        build_id,
    })
}

/// `--source DIR`: builds the checkout as scripts/quickstart.sh does
/// (release build of banger, bangerd and banger-helper, then
/// scripts/build-agent.sh), with cargo's output on stderr. Returns the
/// release dir and the static agent's path.
pub(super) fn build_source(checkout: &Path) -> Result<(PathBuf, PathBuf), UpdateError> {
    for needed in ["Cargo.toml", "scripts/deps.sh", "scripts/build-agent.sh"] {
        if !checkout.join(needed).is_file() {
            return Err(UpdateError::NotACheckout {
                dir: checkout.to_path_buf(),
                missing: needed,
            });
        }
    }
    // The same steps as scripts/quickstart.sh, and its target dir
    // (CARGO_TARGET_DIR, else the cache dir scripts/deps.sh names).
    const SCRIPT: &str = r#"set -euo pipefail
. scripts/deps.sh
use_cached_target_dir
cargo build --release --locked --bin banger --bin bangerd --bin banger-helper >&2
agent=$(./scripts/build-agent.sh)
printf '%s\n%s\n' "$CARGO_TARGET_DIR/release" "$agent"
"#;
    let output = Command::new("bash")
        .arg("-c")
        .arg(SCRIPT)
        .current_dir(checkout)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| UpdateError::Build {
            dir: checkout.to_path_buf(),
            why: format!("cannot run bash: {e}"),
        })?;
    if !output.status.success() {
        return Err(UpdateError::Build {
            dir: checkout.to_path_buf(),
            why: format!(
                "the build exited with {} (its output is above)",
                output.status
            ),
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines().rev();
    let (Some(agent), Some(release)) = (lines.next(), lines.next()) else {
        return Err(UpdateError::Build {
            dir: checkout.to_path_buf(),
            why: format!("the build did not say where its binaries are: {text:?}"),
        });
    };
    Ok((PathBuf::from(release), PathBuf::from(agent)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_with_and_without_a_build_id() {
        assert_eq!(
            parse_version("bangerd", "bangerd 0.1.0 (build 0123456789ab)"),
            Some(Reported {
                version: "0.1.0".into(),
                build_id: Some("0123456789ab".into())
            })
        );
        assert_eq!(
            parse_version("banger-agent", "banger-agent 0.1.0"),
            Some(Reported {
                version: "0.1.0".into(),
                build_id: None
            })
        );
        // Another binary's line, or none at all.
        assert_eq!(parse_version("banger", "bangerd 0.1.0 (build x)"), None);
        assert_eq!(parse_version("banger", "banger"), None);
        assert_eq!(parse_version("banger", "banger 0.1.0 (build )"), None);
        assert_eq!(parse_version("banger", "banger 0.1.0 (build x"), None);
        assert_eq!(parse_version("banger", ""), None);
    }

    #[test]
    fn a_source_dir_must_be_a_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_source(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                UpdateError::NotACheckout {
                    missing: "Cargo.toml",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn the_agent_may_be_where_build_agent_puts_it() {
        let target = tempfile::tempdir().unwrap();
        let release = target.path().join("release");
        let agent_dir = target.path().join("x86_64-unknown-linux-gnu/release");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::create_dir_all(&agent_dir).unwrap();
        for name in ["banger", "bangerd", "banger-helper"] {
            std::fs::write(release.join(name), "").unwrap();
        }
        let err = locate(&release, None).unwrap_err();
        assert!(
            matches!(
                err,
                UpdateError::Missing {
                    name: "banger-agent",
                    ..
                }
            ),
            "{err:?}"
        );
        std::fs::write(agent_dir.join("banger-agent"), "").unwrap();
        let found = locate(&release, None).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, NAMES, "in swap order");
        assert_eq!(found[0].1, agent_dir.join("banger-agent"));
    }
}
