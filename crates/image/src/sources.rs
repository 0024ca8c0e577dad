//! The host's apt sources, narrowed to one suite, for mmdebstrap.
//!
//! Without a mirror argument mmdebstrap falls back to its own built-in
//! default. banger instead hands it the host's own sources for the suite
//! being built (`SUITE`, `SUITE-updates`, `SUITE-security`, ...), read at run
//! time from `/etc/apt/sources.list` and `/etc/apt/sources.list.d/`, so an
//! image is built from the same mirrors (or local proxy) as the host uses.
//! When the host has no source for the suite, mmdebstrap's default is used.

use std::fs;
use std::path::Path;

/// A deb822 paragraph: fields in order, each with its (possibly multi-line) value.
type Paragraph = Vec<(String, String)>;

/// Deb822 text (`*.sources` style) holding the host's `deb` sources for
/// `suite`, or `None` when it has none.
pub(crate) fn host_sources_for(suite: &str) -> Option<String> {
    sources_for(Path::new("/etc/apt"), suite)
}

pub(crate) fn sources_for(etc_apt: &Path, suite: &str) -> Option<String> {
    let mut paragraphs = Vec::new();
    if let Ok(text) = fs::read_to_string(etc_apt.join("sources.list")) {
        paragraphs.extend(parse_one_line(&text));
    }
    let mut files: Vec<_> = fs::read_dir(etc_apt.join("sources.list.d"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for path in files {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let name = path.to_string_lossy();
        if name.ends_with(".sources") {
            paragraphs.extend(parse_deb822(&text));
        } else if name.ends_with(".list") {
            paragraphs.extend(parse_one_line(&text));
        }
    }
    let kept: Vec<String> = paragraphs
        .into_iter()
        .filter_map(|p| narrow(p, suite))
        .map(|p| render(&p))
        .collect();
    (!kept.is_empty()).then(|| kept.join("\n"))
}

fn field<'a>(p: &'a Paragraph, key: &str) -> Option<&'a str> {
    p.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// Keeps an enabled `deb` paragraph, with only the suites of `suite`.
fn narrow(mut p: Paragraph, suite: &str) -> Option<Paragraph> {
    let types = field(&p, "Types")?;
    if !types.split_whitespace().any(|t| t == "deb") {
        return None;
    }
    if field(&p, "Enabled").is_some_and(|v| v.trim().eq_ignore_ascii_case("no")) {
        return None;
    }
    let prefix = format!("{suite}-");
    let suites: Vec<&str> = field(&p, "Suites")?
        .split_whitespace()
        .filter(|s| *s == suite || s.starts_with(&prefix))
        .collect();
    if suites.is_empty() {
        return None;
    }
    let suites = suites.join(" ");
    for (k, v) in &mut p {
        if k.eq_ignore_ascii_case("Types") {
            *v = "deb".into();
        } else if k.eq_ignore_ascii_case("Suites") {
            v.clone_from(&suites);
        }
    }
    Some(p)
}

fn render(p: &Paragraph) -> String {
    let mut out = String::new();
    for (k, v) in p {
        out.push_str(k);
        out.push(':');
        let mut lines = v.split('\n');
        if let Some(first) = lines.next() {
            if !first.is_empty() {
                out.push(' ');
                out.push_str(first);
            }
        }
        for line in lines {
            out.push('\n');
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Deb822 paragraphs; continuation lines (leading space) are kept verbatim.
fn parse_deb822(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut current: Paragraph = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            current.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `deb [signed-by=/k.gpg arch=amd64] URI SUITE COMP...` lines as paragraphs.
fn parse_one_line(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut options = Vec::new();
        if let Some(after) = rest.strip_prefix('[') {
            let Some((opts, tail)) = after.split_once(']') else {
                continue;
            };
            options = opts.split_whitespace().map(str::to_owned).collect();
            rest = tail.trim_start();
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        let [uri, suite, components @ ..] = words.as_slice() else {
            continue;
        };
        let mut p: Paragraph = vec![
            ("Types".into(), "deb".into()),
            ("URIs".into(), (*uri).to_owned()),
            ("Suites".into(), (*suite).to_owned()),
        ];
        if !components.is_empty() {
            p.push(("Components".into(), components.join(" ")));
        }
        for opt in options {
            let Some((k, v)) = opt.split_once('=') else {
                continue;
            };
            let key = match k {
                "signed-by" => "Signed-By",
                "arch" => "Architectures",
                "trusted" => "Trusted",
                _ => continue,
            };
            p.push((key.into(), v.replace(',', " ")));
        }
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb deb-src
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates trixie
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://other.example/x
Suites: nodistro
Components: main

Types: deb
Enabled: no
URIs: http://off.example/debian
Suites: bookworm
Components: main
";

    #[test]
    fn narrows_deb822_to_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sources.list.d")).unwrap();
        fs::write(dir.path().join("sources.list.d/debian.sources"), DEB822).unwrap();
        fs::write(
            dir.path().join("sources.list.d/x.disabled"),
            "deb http://no/ bookworm main\n",
        )
        .unwrap();
        let text = sources_for(dir.path(), "bookworm").unwrap();
        assert_eq!(
            text,
            "\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----
"
        );
        let trixie = sources_for(dir.path(), "trixie").unwrap();
        assert!(trixie.contains("Suites: trixie\n"));
        assert_eq!(sources_for(dir.path(), "sid"), None);
    }

    #[test]
    fn converts_one_line_format() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("sources.list"),
            "# main\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main non-free # x\n\
             deb-src http://m.example/debian bookworm main\n\
             deb http://m.example/debian-security bookworm-security main\n",
        )
        .unwrap();
        let text = sources_for(dir.path(), "bookworm").unwrap();
        assert_eq!(
            text,
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\nComponents: main non-free\nArchitectures: amd64\nSigned-By: /k.gpg\n\
             \nTypes: deb\nURIs: http://m.example/debian-security\nSuites: bookworm-security\nComponents: main\n"
        );
    }

    #[test]
    fn no_sources_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sources_for(dir.path(), "bookworm"), None);
    }
}
