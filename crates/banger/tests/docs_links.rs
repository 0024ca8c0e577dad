//! Every reference in the repository points at a document inside it.
//!
//! - No file under `crates/`, `docs/` or `scripts/`, nor README.md or
//!   ARCHITECTURE.md, refers to the product brief outside the repository
//!   (its file name, or its numbered capabilities): a reader of the
//!   repository could not follow such a reference. What the code refers
//!   to is in docs/capabilities.md and the per-area documents.
//! - Every `docs/*.md` a code comment or a document mentions exists,
//!   and a heading named with it (`(docs/vms.md, "Lifecycle")`) is a
//!   heading of that document.
//! - Every relative Markdown link resolves to a file, and its `#anchor`
//!   (if any) to a heading of the target.
//!
//! Failures name each offending `file:line`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::fs;
use std::path::{Path, PathBuf};

/// Mentions of other projects' documents, which are not in this
/// repository: (file, path mentioned).
const FOREIGN: &[(&str, &str)] = &[
    // Cloud Hypervisor's logging guide, which the module docs cite.
    ("crates/daemon/src/logging.rs", "docs/logging.md"),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every text file under the checked roots, as (path relative to the
/// repository, contents). Build outputs and hidden directories are skipped.
fn files() -> Vec<(String, String)> {
    let root = repo_root();
    let mut out = Vec::new();
    let mut pending: Vec<PathBuf> = ["crates", "docs", "scripts", "README.md", "ARCHITECTURE.md"]
        .iter()
        .map(|p| root.join(p))
        .collect();
    while let Some(path) = pending.pop() {
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if meta.is_dir() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "target" || name.starts_with('.') {
                continue;
            }
            for entry in fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if meta.is_file() {
            // Binary files (fixtures) are not documents.
            if let Ok(text) = fs::read_to_string(&path) {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, text));
            }
        }
    }
    out.sort();
    assert!(
        out.iter()
            .any(|(p, _)| p == "crates/banger/tests/docs_links.rs"),
        "the walk missed this very file: wrong repository root {}",
        root.display()
    );
    out
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// What on `line` refers to the brief outside the repository, if anything.
/// The needles are assembled so that this file does not match itself.
fn outside_reference(line: &str) -> Option<&'static str> {
    let word = concat!("SP", "EC");
    let bytes = line.as_bytes();
    for (i, _) in line.match_indices(word) {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + word.len()).copied();
        if !before.is_some_and(is_word_byte) && !after.is_some_and(is_word_byte) {
            return Some("the product brief outside the repository");
        }
    }
    let numbered = concat!("capabil", "ity C");
    for (i, _) in line.match_indices(numbered) {
        if bytes
            .get(i + numbered.len())
            .is_some_and(u8::is_ascii_digit)
        {
            return Some("a numbered capability of the brief");
        }
    }
    None
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/')
}

/// The `docs/*.md` paths mentioned in `text`, each with the heading
/// quoted right after it (`docs/vms.md, "Lifecycle"`), if any.
fn doc_mentions(text: &str) -> Vec<(String, Option<String>)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    for (start, _) in text.match_indices("docs/") {
        if start > 0 && is_path_byte(bytes[start - 1]) {
            continue; // part of a longer path, such as `../docs/x.md`
        }
        let mut end = start;
        while end < bytes.len() && is_path_byte(bytes[end]) {
            end += 1;
        }
        let token = text[start..end].trim_end_matches('.');
        if !token.ends_with(".md") {
            continue;
        }
        let rest = &text[start + token.len()..];
        let heading = rest
            .strip_prefix(", \"")
            .and_then(|r| r.split_once('"'))
            .map(|(h, _)| h.to_owned());
        out.push((token.to_owned(), heading));
    }
    out
}

/// The headings of a Markdown document (outside code blocks), as written.
fn headings(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            let text = line.trim_start_matches('#');
            if text.starts_with(' ') {
                out.push(text.trim().to_owned());
            }
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, other
/// punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Checks one mention of a repository document; `None` when it holds.
fn check_doc(root: &Path, path: &str, heading: Option<&str>) -> Option<String> {
    let Ok(doc) = fs::read_to_string(root.join(path)) else {
        return Some(format!("{path} does not exist"));
    };
    let heading = heading?;
    if headings(&doc).iter().any(|h| h == heading) {
        None
    } else {
        Some(format!("{path} has no heading {heading:?}"))
    }
}

/// The targets of the inline links `[text](target)` on `line`.
fn link_targets(line: &str) -> Vec<&str> {
    line.match_indices("](")
        .filter_map(|(i, _)| line[i + 2..].split_once(')').map(|(t, _)| t))
        .collect()
}

#[test]
fn no_reference_points_outside_the_repository() {
    let mut bad = Vec::new();
    for (path, text) in files() {
        for (n, line) in text.lines().enumerate() {
            if let Some(what) = outside_reference(line) {
                bad.push(format!(
                    "{path}:{}: refers to {what}: {}",
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "references a reader of the repository cannot follow (point them at docs/ \
         instead, e.g. docs/capabilities.md):\n{}",
        bad.join("\n")
    );
}

#[test]
fn documents_named_in_code_comments_and_docs_exist() {
    let root = repo_root();
    let mut bad = Vec::new();
    let mut seen = 0;
    for (path, text) in files() {
        let markdown = path.ends_with(".md");
        if !markdown && !path.ends_with(".rs") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            // In Rust, only comments: string literals may build paths.
            let checked = if markdown {
                line
            } else {
                match line.find("//") {
                    Some(i) => &line[i..],
                    None => continue,
                }
            };
            for (doc, heading) in doc_mentions(checked) {
                if FOREIGN.contains(&(path.as_str(), doc.as_str())) {
                    continue;
                }
                seen += 1;
                if let Some(why) = check_doc(&root, &doc, heading.as_deref()) {
                    bad.push(format!("{path}:{}: {why}", n + 1));
                }
            }
        }
    }
    assert!(
        seen > 0,
        "no mention of docs/*.md found: is the pattern broken?"
    );
    assert!(
        bad.is_empty(),
        "mentions of repository documents that do not resolve:\n{}",
        bad.join("\n")
    );
}

#[test]
fn relative_markdown_links_resolve() {
    let root = repo_root();
    let mut bad = Vec::new();
    for (path, text) in files() {
        if !path.ends_with(".md") {
            continue;
        }
        let dir = root.join(&path).parent().unwrap().to_owned();
        let mut in_code = false;
        for (n, line) in text.lines().enumerate() {
            if line.starts_with("```") {
                in_code = !in_code;
            }
            if in_code {
                continue;
            }
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target, None),
                };
                let file = if file.is_empty() {
                    root.join(&path)
                } else {
                    dir.join(file)
                };
                let why = match (fs::read_to_string(&file), anchor) {
                    (Err(_), _) if file.is_dir() => None,
                    (Err(_), _) => Some(format!("link target {target} does not exist")),
                    (Ok(_), None) => None,
                    (Ok(doc), Some(a)) => (!headings(&doc).iter().any(|h| slug(h) == a))
                        .then(|| format!("link target {target}: no heading with anchor #{a}")),
                };
                if let Some(why) = why {
                    bad.push(format!("{path}:{}: {why}", n + 1));
                }
            }
        }
    }
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn the_checks_see_what_they_look_for() {
    let brief = concat!("../shared/", "SP", "EC.md");
    assert!(outside_reference(&format!("See `{brief}`.")).is_some());
    assert!(outside_reference(concat!("//! The VM lifecycle (SP", "EC C3)")).is_some());
    assert!(outside_reference(concat!("(capabil", "ity C8)")).is_some());
    assert!(outside_reference(concat!("boot far slower (SP", "EC, measured facts).")).is_some());
    for fine in [
        "Ipv4Addr::UNSPECIFIED",
        "BANGER_VMM_TEST_LAUNCH_SPEC",
        "VmSpec",
        "spec.rs",
    ] {
        assert_eq!(outside_reference(fine), None, "{fine}");
    }
    assert_eq!(
        doc_mentions(r#"//! See (docs/vms.md, "Lifecycle") and docs/agent.md."#),
        vec![
            ("docs/vms.md".to_owned(), Some("Lifecycle".to_owned())),
            ("docs/agent.md".to_owned(), None)
        ]
    );
    assert!(doc_mentions("include_str!(\"../../docs/rpc.md\")").is_empty());
    assert_eq!(
        slug("The guest agent (`banger-agent`)"),
        "the-guest-agent-banger-agent"
    );
    assert_eq!(slug("VM lifecycle"), "vm-lifecycle");
}
