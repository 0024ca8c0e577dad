//! `docs/cli.md` is generated from the command line's definition
//! (`banger_cli::reference::markdown`): this test regenerates it and fails
//! when the checked-in copy differs. After changing a command, rewrite it
//! with `BANGER_UPDATE_DOCS=1 cargo test -p banger-cli --test cli_reference`
//! and review the diff.

#![allow(clippy::unwrap_used)] // test code

use std::path::PathBuf;

fn reference_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md")
}

#[test]
fn checked_in_cli_reference_matches_the_command_line() {
    let fresh = banger_cli::reference::markdown();
    let path = reference_file();
    if std::env::var_os("BANGER_UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} is out of date: rerun with BANGER_UPDATE_DOCS=1 \
         (BANGER_UPDATE_DOCS=1 cargo test -p banger-cli --test cli_reference) and review the diff",
        path.display()
    );
}
