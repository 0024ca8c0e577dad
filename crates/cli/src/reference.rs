//! Documents generated from the command line's definition ([`Cli`]):
//! shell completions (clap_complete), man pages (clap_mangen, one per
//! command and subcommand: `banger-vm-create.1`) and the Markdown reference
//! `docs/cli.md` (kept in sync by `crates/cli/tests/cli_reference.rs`).
//!
//! `banger completions SHELL` and `banger man --dir DIR` print or write the
//! first two; `scripts/quickstart.sh` and `banger system install` install
//! them under a prefix's `share/` ([`install_share`]).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command, CommandFactory};
use clap_complete::Shell;

use crate::Cli;

/// The command tree as clap builds it (globals propagated, help added).
fn command() -> Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn io::Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "banger", out);
}

/// The completion script for `shell`, as text.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut buf = Vec::new();
    completions(shell, &mut buf);
    buf
}

/// Writes one man page per visible command into `dir` (created if
/// missing): `banger.1`, `banger-vm.1`, `banger-vm-create.1`, ... Returns
/// the files written.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, cmd) in man_commands() {
        let man = clap_mangen::Man::new(cmd.clone().display_name(&name));
        let mut buf = Vec::new();
        man.render(&mut buf)?;
        let path = dir.join(format!("{name}.1"));
        fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

/// Every visible command with its man page name (`banger-vm-create`),
/// parents before children.
fn man_commands() -> Vec<(String, Command)> {
    fn walk(cmd: &Command, name: String, out: &mut Vec<(String, Command)>) {
        out.push((name.clone(), cmd.clone()));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, format!("{name}-{}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(&command(), "banger".to_owned(), &mut out);
    out
}

/// Where the completions and man pages live under a `share` directory
/// (`/usr/local/share`, `~/.local/share`), as (path, contents).
pub fn share_files(share: &Path) -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = vec![
        (
            share.join("bash-completion/completions/banger"),
            completion_script(Shell::Bash),
        ),
        (
            share.join("zsh/site-functions/_banger"),
            completion_script(Shell::Zsh),
        ),
        (
            share.join("fish/vendor_completions.d/banger.fish"),
            completion_script(Shell::Fish),
        ),
    ];
    let man_dir = share.join("man/man1");
    for (name, cmd) in man_commands() {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.display_name(&name)).render(&mut buf)?;
        files.push((man_dir.join(format!("{name}.1")), buf));
    }
    Ok(files)
}

/// Writes [`share_files`] under `share`, creating directories (0755).
/// Returns the files written.
pub fn install_share(share: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (path, contents) in share_files(share)? {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, contents)?;
        written.push(path);
    }
    Ok(written)
}

/// Removes what [`install_share`] writes, and any other `banger*.1` page
/// an older banger left in `share/man/man1`. Returns the files removed.
pub fn remove_share(share: &Path) -> io::Result<Vec<PathBuf>> {
    let mut candidates: Vec<PathBuf> = share_files(share)?.into_iter().map(|(p, _)| p).collect();
    let man_dir = share.join("man/man1");
    if let Ok(entries) = fs::read_dir(&man_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name == "banger.1" || (name.starts_with("banger-") && name.ends_with(".1"));
            if ours && !candidates.contains(&entry.path()) {
                candidates.push(entry.path());
            }
        }
    }
    let mut removed = Vec::new();
    for path in candidates {
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    // The completion directories install may have created, when now
    // empty (remove_dir refuses a directory that is not).
    for dir in [
        "bash-completion/completions",
        "bash-completion",
        "zsh/site-functions",
        "zsh",
        "fish/vendor_completions.d",
        "fish",
    ] {
        let _ = fs::remove_dir(share.join(dir));
    }
    Ok(removed)
}

/// The Markdown reference of every visible command: its description, usage
/// and options. `docs/cli.md` is this text.
pub fn markdown() -> String {
    let root = command();
    let mut out = String::from(
        "# banger command reference\n\n\
         <!-- Generated from the command line's definition (crates/cli/src/args.rs).\n     \
         Do not edit: regenerate with\n     \
         BANGER_UPDATE_DOCS=1 cargo test -p banger-cli --test cli_reference -->\n\n\
         The same text is in `banger help COMMAND` and `man banger-COMMAND`\n\
         (`man banger-vm-create`).\n\n",
    );
    let mut all = Vec::new();
    fn walk<'a>(cmd: &'a Command, path: String, out: &mut Vec<(String, &'a Command)>) {
        out.push((path.clone(), cmd));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, format!("{path} {}", sub.get_name()), out);
        }
    }
    walk(&root, "banger".to_owned(), &mut all);

    out.push_str("## Commands\n\n");
    for (path, cmd) in &all[1..] {
        let _ = writeln!(
            out,
            "- [`{path}`](#{}): {}",
            anchor(path),
            first_line(cmd.get_about().map(|s| s.to_string()).unwrap_or_default())
        );
    }
    out.push('\n');

    for (path, cmd) in &all {
        let _ = writeln!(out, "## {path}\n");
        let about = cmd
            .get_long_about()
            .or(cmd.get_about())
            .map(|s| s.to_string())
            .unwrap_or_default();
        if !about.is_empty() {
            let _ = writeln!(out, "{}\n", about.trim());
        }
        let mut usage_cmd = (*cmd).clone().bin_name(path.clone());
        let usage = usage_cmd.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ").trim();
        let _ = writeln!(out, "```text\n{usage}\n```\n");
        let aliases: Vec<&str> = cmd.get_visible_aliases().collect();
        if !aliases.is_empty() {
            let _ = writeln!(out, "Alias: `{}`.\n", aliases.join("`, `"));
        }
        let subs: Vec<&Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
        if !subs.is_empty() {
            out.push_str("Commands:\n\n");
            for sub in subs {
                let _ = writeln!(
                    out,
                    "- [`{}`](#{}): {}",
                    sub.get_name(),
                    anchor(&format!("{path} {}", sub.get_name())),
                    first_line(sub.get_about().map(|s| s.to_string()).unwrap_or_default())
                );
            }
            out.push('\n');
        }
        let is_root = std::ptr::eq(*cmd, &root);
        let args: Vec<&Arg> = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter(|a| is_root || !a.is_global_set())
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .collect();
        if !args.is_empty() {
            out.push_str("| Argument | Description |\n| --- | --- |\n");
            for arg in args {
                let _ = writeln!(out, "| {} | {} |", arg_name(arg), arg_help(arg));
            }
            out.push('\n');
        }
        if let Some(after) = cmd.get_after_long_help().or(cmd.get_after_help()) {
            let _ = writeln!(out, "```text\n{}\n```\n", after.to_string().trim());
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn first_line(s: String) -> String {
    s.lines().next().unwrap_or_default().trim().to_owned()
}

/// GitHub's anchor for a heading: lowercase, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn arg_name(arg: &Arg) -> String {
    let value = || -> String {
        let names: Vec<String> = arg
            .get_value_names()
            .map(|v| v.iter().map(|n| n.to_string()).collect())
            .unwrap_or_else(|| vec![arg.get_id().as_str().to_uppercase()]);
        names
            .iter()
            .map(|n| format!("<{n}>"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let takes_value = !matches!(
        arg.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count | ArgAction::Help
    );
    let mut name = match (arg.get_short(), arg.get_long()) {
        (Some(s), Some(l)) => format!("`-{s}`, `--{l}`"),
        (None, Some(l)) => format!("`--{l}`"),
        (Some(s), None) => format!("`-{s}`"),
        (None, None) => {
            let v = value();
            let v = if arg.is_last_set() {
                format!("-- {v}...")
            } else if matches!(arg.get_action(), ArgAction::Append) {
                format!("{v}...")
            } else {
                v
            };
            return format!("`{v}`");
        }
    };
    if takes_value {
        name.pop();
        let _ = write!(name, " {}`", value());
    }
    name
}

fn arg_help(arg: &Arg) -> String {
    let mut help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    // Sentences appended below follow a full stop.
    if !help.is_empty() && !help.ends_with(['.', '!', '?']) {
        help.push('.');
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| format!("`{}`", p.get_name()))
        .collect();
    let takes_value = !matches!(
        arg.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count | ArgAction::Help
    );
    if takes_value && !possible.is_empty() {
        let _ = write!(help, " One of: {}.", possible.join(", "));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    if takes_value && !defaults.is_empty() {
        let _ = write!(help, " Default: `{}`.", defaults.join(","));
    }
    if let Some(env) = arg.get_env() {
        let _ = write!(help, " Environment: `{}`.", env.to_string_lossy());
    }
    if arg.is_required_set() {
        help.push_str(" Required.");
    }
    help.trim().replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_are_named_by_their_command_path() {
        let names: Vec<String> = man_commands().into_iter().map(|(n, _)| n).collect();
        for want in [
            "banger",
            "banger-vm",
            "banger-vm-create",
            "banger-system-install",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("ssh-proxy")), "hidden");
    }

    #[test]
    fn the_vm_create_page_has_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let page = dir.path().join("banger-vm-create.1");
        assert!(written.contains(&page));
        let roff = fs::read_to_string(page).unwrap();
        assert!(roff.starts_with(".ie"), "{roff}");
        assert!(roff.contains(".TH banger-vm-create 1"), "{roff}");
        assert!(roff.contains("\\-\\-memory"), "{roff}");
    }

    #[test]
    fn bash_completion_knows_the_subcommands() {
        let text = String::from_utf8(completion_script(Shell::Bash)).unwrap();
        assert!(text.contains("_banger()"));
        for word in ["start", "stop", "stats"] {
            assert!(text.contains(word), "{word}");
        }
    }

    #[test]
    fn share_install_and_removal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        let written = install_share(&share).unwrap();
        assert!(share.join("bash-completion/completions/banger").is_file());
        assert!(share.join("man/man1/banger-vm-create.1").is_file());
        fs::write(share.join("man/man1/banger-gone.1"), "old").unwrap();
        fs::write(share.join("man/man1/other.1"), "not ours").unwrap();
        let removed = remove_share(&share).unwrap();
        assert_eq!(removed.len(), written.len() + 1);
        assert!(share.join("man/man1/other.1").is_file());
        assert!(
            !share.join("bash-completion").exists(),
            "empty dirs removed"
        );
    }

    #[test]
    fn the_markdown_reference_lists_every_command() {
        let md = markdown();
        assert!(md.contains("## banger vm create\n"));
        assert!(md.contains("| `--memory <SIZE>` |"));
        assert!(!md.contains("ssh-proxy"));
    }
}
