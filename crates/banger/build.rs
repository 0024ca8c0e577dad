//! Computes `BANGER_BUILD_ID`: a hash of every source file of the workspace
//! plus the build profile and target. `banger` and `bangerd` are built from
//! this one package, so they always agree; any edit to the sources changes
//! the id, and the CLI then replaces a daemon built from older sources.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.clone());
    let crates = root.join("crates");
    let mut files = Vec::new();
    collect(&crates, &mut files);
    files.push(root.join("Cargo.toml"));
    files.push(root.join("Cargo.lock"));
    files.sort();

    let mut hash = Sha256::new();
    for key in ["PROFILE", "TARGET", "OPT_LEVEL"] {
        hash.update(env(key).as_bytes());
        hash.update([0]);
    }
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap_or(file);
        hash.update(rel.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(fs::read(file).unwrap_or_default());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let mut id = String::new();
    for b in digest.iter().take(6) {
        // Writing to a String cannot fail.
        let _ = write!(id, "{b:02x}");
    }
    println!("cargo:rustc-env=BANGER_BUILD_ID={id}");
    println!("cargo:rerun-if-changed={}", crates.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
}

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_default()
}

/// Source-like files under `dir`; snapshots and other data are hashed too,
/// since tests are built from them.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            collect(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}
