//! A real registry on loopback for image pull tests: Debian's
//! `docker-registry`, with images built by `umoci` and pushed by `skopeo`;
//! nothing comes from the internet. Digests are plain strings
//! (`sha256:HEX`). Used by crates/oci/tests/registry.rs and, through
//! crates/banger/tests/common/mod.rs, by the CLI's pull tests.

#![allow(dead_code)] // each test binary uses part of it

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOOLS: [&str; 5] = ["docker-registry", "skopeo", "umoci", "htpasswd", "debugfs"];

/// True when every tool is installed; else prints why `test` is skipped.
pub fn have_tools(test: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|tool| {
            !std::env::split_paths(&path)
                .chain([PathBuf::from("/sbin"), PathBuf::from("/usr/sbin")])
                .any(|dir| dir.join(tool).is_file())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "skipping {test}: {} not installed (apt-get install docker-registry skopeo umoci apache2-utils e2fsprogs)",
        missing.join(", ")
    );
    false
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A registry process on a free loopback port, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts one; with `htpasswd`, it wants that user and password.
    pub fn start(htpasswd: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, pass)) = htpasswd {
            let line = run(Command::new("htpasswd").args(["-Bbn", user, pass]));
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, line).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: banger-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Self { child, port, dir };
        registry.wait_ready();
        registry
    }

    /// Waits until `GET /v2/` answers (200, or 401 with auth).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("registry exited ({status}): {}", self.log());
            }
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = conn.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut answer = String::new();
                let _ = conn.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "registry not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes `layout:tag` as `name` (`REPO:TAG`); `all` copies a whole
    /// index (`skopeo copy --all`).
    pub fn push(&self, layout: &Layout, tag: &str, name: &str, creds: Option<&str>, all: bool) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        if let Some(creds) = creds {
            cmd.args(["--dest-creds", creds]);
        }
        cmd.arg(format!("oci:{}:{tag}", layout.path().display()))
            .arg(format!("docker://{}/{name}", self.host()));
        run(&mut cmd);
    }

    /// The registry's stored file for the blob `sha256:HEX`.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI image layout built with umoci.
pub struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(dir.path().join("layout")));
        Self { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("layout")
    }

    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.path().display())
    }

    pub fn umoci(&self, args: &[&str]) {
        run(Command::new("umoci").args(args));
    }

    pub fn new_image(&self, tag: &str) {
        self.umoci(&["new", "--image", &self.image(tag)]);
    }

    /// Adds a layer of `files` (relative paths and contents), owned by
    /// root, made with `tar` (umoci 0.4.7's `insert` writes tars that end
    /// early, which GNU tar and banger's flatten refuse).
    pub fn add_layer(&self, tag: &str, files: &[(&str, &[u8])]) {
        let src = tempfile::tempdir_in(self.dir.path()).unwrap();
        let mut names = Vec::new();
        for (path, content) in files {
            let p = src.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            names.push(path.split('/').next().unwrap().to_owned());
        }
        names.sort();
        names.dedup();
        let tar = self.dir.path().join("layer.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(src.path())
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&tar)
            .args(&names));
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &self.image(tag)])
            .arg(&tar));
    }

    /// Adds a layer of everything under `dir` as it is there: owners
    /// (numeric), modes, links and device nodes kept, so whiteout files
    /// (`.wh.NAME`, `.wh..wh..opq`) made there become whiteouts.
    pub fn add_layer_dir(&self, tag: &str, dir: &Path) {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let tar = self.dir.path().join("layer.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(dir)
            .args(["--numeric-owner", "-cf"])
            .arg(&tar)
            .args(&names));
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &self.image(tag)])
            .arg(&tar));
    }

    /// Adds a layer holding `/name` with `content` through `umoci insert`
    /// (fine for pulls; see [`Layout::add_layer`] for layers that get
    /// flattened).
    pub fn insert(&self, tag: &str, name: &str, content: &[u8]) {
        let src = self.dir.path().join(format!("src-{name}"));
        std::fs::write(&src, content).unwrap();
        run(Command::new("umoci")
            .args(["insert", "--image", &self.image(tag)])
            .arg(&src)
            .arg(format!("/{name}")));
    }

    fn json(&self, path: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// The layout's `index.json`.
    pub fn index(&self) -> serde_json::Value {
        self.json(&self.path().join("index.json"))
    }

    /// The descriptor of the manifest tagged `tag`.
    pub fn manifest_desc(&self, tag: &str) -> serde_json::Value {
        self.index()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone()
    }

    /// The digest (`sha256:HEX`) of the manifest tagged `tag`.
    pub fn manifest_digest(&self, tag: &str) -> String {
        self.manifest_desc(tag)["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The layer digests of the manifest tagged `tag`, bottom first.
    pub fn layer_digests(&self, tag: &str) -> Vec<String> {
        let digest = self.manifest_digest(tag);
        let hex = digest.strip_prefix("sha256:").unwrap();
        let manifest = self.json(&self.path().join("blobs/sha256").join(hex));
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Where fixtures too slow to make per test are kept between runs:
/// `$XDG_CACHE_HOME/banger/test-fixtures`, else `~/.cache/banger/test-fixtures`.
pub fn fixture_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp/banger-test-cache"))
        .join("banger/test-fixtures")
}

/// A Debian bookworm root filesystem as a tar:
/// `mmdebstrap --variant=minbase bookworm OUT.tar`, made once and kept in
/// [`fixture_cache_dir`] (written under a temp name, then renamed, so a
/// run that stops half-way leaves nothing that looks finished). Needs
/// root and mmdebstrap (with apt sources to fetch from); `Err` says why
/// it cannot be made here, for the caller to skip with.
pub fn debian_rootfs_tar() -> Result<PathBuf, String> {
    let dir = fixture_cache_dir();
    let tar = dir.join("debian-bookworm-minbase.tar");
    if tar.is_file() {
        return Ok(tar);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|d| d.join("mmdebstrap").is_file()) {
        return Err("mmdebstrap not installed (apt-get install mmdebstrap)".into());
    }
    let uid = run(Command::new("id").arg("-u"));
    if uid.trim() != "0" {
        return Err(format!(
            "making {} needs root (mmdebstrap --mode=root)",
            tar.display()
        ));
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix(".debian-")
        .tempdir_in(&dir)
        .unwrap();
    let out = tmp.path().join("rootfs.tar");
    eprintln!("making {} with mmdebstrap (once)", tar.display());
    run(Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
        ])
        .arg("bookworm")
        .arg(&out));
    std::fs::rename(&out, &tar).unwrap();
    Ok(tar)
}

/// Puts a Debian bookworm image tagged `tag` into `layout`: the
/// [`debian_rootfs_tar`] as one layer (`umoci raw add-layer`, gzip), with
/// the config `FOO=debian`, `/bin/bash`, working dir `/root`. `Err` says
/// why it cannot be made here (see [`debian_rootfs_tar`]).
pub fn debian_rootfs(layout: &Layout, tag: &str) -> Result<(), String> {
    let tar = debian_rootfs_tar()?;
    layout.new_image(tag);
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &layout.image(tag)])
        .arg(&tar));
    layout.umoci(&[
        "config",
        "--image",
        &layout.image(tag),
        "--config.env",
        "FOO=debian",
        "--config.cmd",
        "/bin/bash",
        "--config.workingdir",
        "/root",
    ]);
    Ok(())
}

/// Every file under `dir` (none when it is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Runs `debugfs -R REQUEST IMAGE` and returns what it printed.
pub fn debugfs(image: &Path, request: &str) -> String {
    let program = ["/sbin/debugfs", "/usr/sbin/debugfs"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("debugfs");
    let out = Command::new(program)
        .args(["-R", request])
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
