//! Drives the built `fake-firecracker` over its API socket with a hyper
//! client, as banger's backend will drive Firecracker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use banger_fc_fake::{ApiDescription, VSOCK_ECHO_ENV};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_fake-firecracker");
const WAIT: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;

fn description() -> Option<ApiDescription> {
    let path = ApiDescription::default_path();
    if !path.exists() {
        eprintln!(
            "skipped: no Firecracker API description at {} (set BANGER_FC_API_DESCRIPTION)",
            path.display()
        );
        return None;
    }
    Some(ApiDescription::load(&path).expect("the description loads"))
}

/// Lines of one output stream, collected by a task as they come.
struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn collect(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle` (seen before or arriving).
    async fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.rx.recv().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no line with {needle:?}; saw {:?}", self.seen),
        }
    }
}

/// One fake Firecracker process.
struct Fc {
    child: Child,
    sock: PathBuf,
    stdout: Lines,
    stderr: Lines,
}

impl Fc {
    async fn start(dir: &Path, sock: &str, id: &str, echo: bool) -> Self {
        let sock = dir.join(sock);
        let mut command = Command::new(BIN);
        command
            .arg("--api-sock")
            .arg(&sock)
            .args(["--id", id])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if echo {
            command.env(VSOCK_ECHO_ENV, "1");
        } else {
            command.env_remove(VSOCK_ECHO_ENV);
        }
        let mut child = command.spawn().expect("spawn fake-firecracker");
        let stdout = Lines::collect(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::collect(child.stderr.take().expect("piped stderr"));
        let mut fc = Self {
            child,
            sock,
            stdout,
            stderr,
        };
        fc.stderr.wait_for("serving the API on").await;
        fc
    }

    /// One request on a connection of its own; the answer's status and
    /// JSON body.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let stream = UnixStream::connect(&self.sock).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://localhost{path}"))
            .header("Host", "localhost")
            .header("Accept", "application/json");
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = request.body(Full::new(bytes)).expect("request");
        let response = sender.send_request(request).await.expect("answer");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON answer")
        };
        (status, body)
    }

    /// A call that must answer 204.
    async fn ok(&self, method: &str, path: &str, body: Value) {
        let (status, answer) = self.call(method, path, Some(body)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{method} {path}: {answer}");
    }

    /// A call that must answer 400 with a fault message containing `needle`.
    async fn fails(&self, method: &str, path: &str, body: Option<Value>, needle: &str) {
        let (status, answer) = self.call(method, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {answer}");
        let message = answer["fault_message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{method} {path}: {message:?} lacks {needle:?}"
        );
    }

    /// A GET whose answer must be 200 and match the description.
    async fn get(&self, description: &ApiDescription, path: &str) -> Value {
        let (status, body) = self.call("GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        description
            .validate_response("GET", path, 200, Some(&body))
            .expect("the answer matches the description");
        body
    }

    async fn state(&self, description: &ApiDescription) -> String {
        let info = self.get(description, "/").await;
        info["state"].as_str().expect("state").to_owned()
    }

    async fn exit_code(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the process exits")
            .expect("wait");
        status.code()
    }

    async fn terminate(&mut self) {
        let pid = self.child.id().expect("running");
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        self.exit_code().await;
        assert!(!self.sock.exists(), "the API socket is removed on exit");
    }
}

/// A 64-bit ELF header followed by a "guest" that prints `banner`.
fn stub_elf(path: &Path, banner: &str) {
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.resize(64, 0);
    bytes.extend_from_slice(b"\x00\xf4");
    bytes.extend_from_slice(banner.as_bytes());
    bytes.extend_from_slice(b"\r\n\x00");
    std::fs::write(path, bytes).expect("write kernel");
}

fn sparse_file(path: &Path, len: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .expect("create disk");
}

#[tokio::test]
async fn boot_pause_snapshot_poweroff_and_restore() {
    let Some(d) = description() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = dir.path().join("vmlinux");
    stub_elf(&kernel, "banger stub guest: hello");
    sparse_file(&dir.path().join("root.img"), MIB);

    let mut fc = Fc::start(dir.path(), "api.sock", "flow-1", false).await;
    assert_eq!(fc.state(&d).await, "Not started");
    let machine = fc.get(&d, "/machine-config").await;
    assert_eq!(machine["vcpu_count"], 1);
    assert_eq!(machine["mem_size_mib"], 128);

    fc.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": 64}),
    )
    .await;
    fc.ok(
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k"}),
    )
    .await;
    // Relative to the process's working directory, as Firecracker takes it.
    fc.ok(
        "PUT",
        "/drives/root",
        json!({"drive_id": "root", "path_on_host": "root.img", "is_root_device": true, "is_read_only": false}),
    )
    .await;
    fc.ok(
        "PUT",
        "/logger",
        json!({"log_path": "fc.log", "level": "Info"}),
    )
    .await;
    fc.ok(
        "PUT",
        "/vsock",
        json!({"guest_cid": 3, "uds_path": "v.sock"}),
    )
    .await;
    fc.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}))
        .await;
    fc.stdout.wait_for("banger stub guest: hello").await;
    assert_eq!(fc.state(&d).await, "Running");

    let config = fc.get(&d, "/vm/config").await;
    assert_eq!(config["machine-config"]["mem_size_mib"], 64);
    assert_eq!(config["drives"][0]["path_on_host"], "root.img");
    assert_eq!(config["vsock"]["uds_path"], "v.sock");
    let version = fc.get(&d, "/version").await;
    assert_eq!(
        version["firecracker_version"],
        format!("{}-fake", d.version())
    );

    fc.fails(
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 1, "mem_size_mib": 64})),
        "not supported after starting the microVM",
    )
    .await;
    fc.fails(
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_path": "snap", "mem_file_path": "mem"})),
        "unavailable while running",
    )
    .await;

    fc.ok("PATCH", "/vm", json!({"state": "Paused"})).await;
    assert_eq!(fc.state(&d).await, "Paused");
    fc.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_path": "snap", "mem_file_path": "mem", "snapshot_type": "Full"}),
    )
    .await;
    let mem_len = std::fs::metadata(dir.path().join("mem"))
        .expect("memory file")
        .len();
    assert_eq!(mem_len, 64 * MIB);
    fc.ok("PATCH", "/vm", json!({"state": "Resumed"})).await;
    assert_eq!(fc.state(&d).await, "Running");

    fc.ok("PUT", "/actions", json!({"action_type": "SendCtrlAltDel"}))
        .await;
    assert_eq!(fc.exit_code().await, Some(0), "the guest powered off");
    assert!(!fc.sock.exists(), "the API socket is removed on exit");
    let log = std::fs::read_to_string(dir.path().join("fc.log")).expect("log file");
    assert!(log.contains("[fake-firecracker] InstanceStart"), "{log}");

    // A fresh process restores it; the first one's vsock socket is still
    // there, so the restore moves it as banger will.
    let mut restored = Fc::start(dir.path(), "api2.sock", "flow-2", true).await;
    restored
        .ok(
            "PUT",
            "/snapshot/load",
            json!({
                "snapshot_path": "snap",
                "mem_backend": {"backend_type": "File", "backend_path": "mem"},
                "resume_vm": true,
                "vsock_override": {"uds_path": "v2.sock"},
            }),
        )
        .await;
    restored
        .stdout
        .wait_for("fake-firecracker: guest resumed from snapshot")
        .await;
    assert_eq!(restored.state(&d).await, "Running");
    let config = restored.get(&d, "/vm/config").await;
    assert_eq!(config["machine-config"]["mem_size_mib"], 64);
    assert_eq!(config["vsock"]["uds_path"], "v2.sock");
    assert!(config.get("boot-source").is_none());
    restored
        .fails(
            "PUT",
            "/drives/data",
            Some(json!({"drive_id": "data", "path_on_host": "root.img", "is_root_device": false})),
            "not supported after starting the microVM",
        )
        .await;

    // The hybrid vsock handshake, with the echoing guest.
    let mut vsock = UnixStream::connect(dir.path().join("v2.sock"))
        .await
        .expect("vsock connect");
    vsock.write_all(b"CONNECT 52\n").await.expect("request");
    let mut reply = vec![0u8; b"OK 1073741824\n".len()];
    vsock.read_exact(&mut reply).await.expect("OK line");
    assert_eq!(reply, b"OK 1073741824\n");
    vsock.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    vsock.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping");

    restored.terminate().await;
}

#[tokio::test]
async fn documented_errors() {
    let Some(_d) = description() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x55u8; 4096]).expect("write");

    let mut fc = Fc::start(dir.path(), "api.sock", "errors", false).await;
    fc.fails(
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
        "without kernel configuration",
    )
    .await;
    fc.fails(
        "PATCH",
        "/vm",
        Some(json!({"state": "Paused"})),
        "not supported before starting the microVM",
    )
    .await;

    // A TAP that is not there: Firecracker opens it here, and so fails.
    fc.fails(
        "PUT",
        "/network-interfaces/eth0",
        Some(json!({"iface_id": "eth0", "host_dev_name": "bgtap-none"})),
        "Open tap device failed",
    )
    .await;

    // A field Firecracker does not know: 400 and the line tests grep.
    fc.fails(
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 1, "mem_size_mib": 64, "vcpus": 1})),
        "/vcpus: unknown field",
    )
    .await;
    let line = fc
        .stderr
        .wait_for("fake-firecracker: schema violation: PUT /machine-config")
        .await;
    assert!(line.contains("/vcpus: unknown field"), "{line}");
    fc.fails(
        "PUT",
        "/no-such-thing",
        Some(json!({})),
        "Invalid request method and/or path",
    )
    .await;
    fc.fails(
        "PUT",
        "/boot-source",
        Some(json!({"kernel_image_path": "missing-kernel"})),
        "The kernel file cannot be opened",
    )
    .await;
    fc.fails(
        "PUT",
        "/drives/root",
        Some(json!({"drive_id": "root", "path_on_host": "missing.img", "is_root_device": true})),
        "missing.img",
    )
    .await;

    fc.ok(
        "PUT",
        "/vsock",
        json!({"guest_cid": 3, "uds_path": "v.sock"}),
    )
    .await;
    fc.ok("PUT", "/boot-source", json!({"kernel_image_path": garbage}))
        .await;
    fc.fails(
        "PUT",
        "/snapshot/load",
        Some(json!({"snapshot_path": "snap", "mem_file_path": "mem"})),
        "not allowed after configuring boot-specific resources",
    )
    .await;
    fc.fails(
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
        "Invalid bzImage",
    )
    .await;
    assert_eq!(fc.state(&_d).await, "Not started");

    // No guest listens on the vsock port: the connection is closed.
    let mut vsock = UnixStream::connect(dir.path().join("v.sock"))
        .await
        .expect("vsock connect");
    vsock.write_all(b"CONNECT 52\n").await.expect("request");
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, vsock.read_to_end(&mut rest))
        .await
        .expect("closed")
        .expect("read");
    assert!(rest.is_empty(), "{rest:?}");

    // A second process on the same socket path refuses to start.
    let output = Command::new(BIN)
        .arg("--api-sock")
        .arg(&fc.sock)
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Failed to open the API socket"),
        "{output:?}"
    );
    assert!(fc.sock.exists(), "the other process's socket is left alone");

    fc.terminate().await;
}

#[tokio::test]
async fn command_line() {
    let Some(d) = description() else { return };
    let found = banger_fc_fake::fake_binary().expect("fake_binary finds the built binary");
    assert_eq!(
        found.canonicalize().expect("found"),
        Path::new(BIN).canonicalize().expect("built")
    );
    let output = Command::new(BIN)
        .arg("--version")
        .output()
        .await
        .expect("run");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("Firecracker v{}-fake", d.version())
    );
    for args in [
        &["--api-sock", "x", "--no-such-flag"][..],
        &["--api-sock", "x", "--id", "under_score"],
        &["--api-sock", "x", "--id", &"a".repeat(65)],
        &[],
    ] {
        let output = Command::new(BIN).args(args).output().await.expect("run");
        assert!(!output.status.success(), "{args:?} was accepted");
    }
}
