//! The fake's request handling: the API description's check, then
//! Firecracker's state machine (pre-boot configuration, start, pause and
//! resume, snapshots) with its answers and, where it has them, its error
//! messages (Firecracker's `src/vmm/src/rpc_interface.rs` and
//! `src/firecracker/src/api_server/`).
//!
//! Runs on a blocking thread: it reads kernels and writes snapshot files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use banger_fc_fake::{ApiDescription, RequestError};
use hyper::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::config::{BootSource, Drive, MachineConfig, NetworkInterface, Phase, VmConfig, Vsock};
use crate::{guest, snapshot, vsock};

const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";
const ID_MISMATCH: &str = "The id from the path does not match the id from the body!";

/// An answer to one request.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Value>,
    /// The guest powers off once this answer is out: the process exits 0.
    pub power_off: bool,
}

impl Reply {
    fn no_content() -> Self {
        Self {
            status: StatusCode::NO_CONTENT,
            body: None,
            power_off: false,
        }
    }

    fn json(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body: Some(body),
            power_off: false,
        }
    }

    pub fn fault(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: Some(json!({ "fault_message": message.into() })),
            power_off: false,
        }
    }
}

/// A `400` answer on its way out of a handler.
struct Fault(String);

impl From<Fault> for Reply {
    fn from(fault: Fault) -> Self {
        Reply::fault(fault.0)
    }
}

type Answer = Result<Reply, Fault>;

fn fault<T>(message: impl Into<String>) -> Result<T, Fault> {
    Err(Fault(message.into()))
}

/// What the process is: its id, its microVM and the files and sockets it
/// opened for it.
#[derive(Debug)]
pub struct Fake {
    description: ApiDescription,
    id: String,
    vmm_version: String,
    phase: Phase,
    /// A resource other than the logger, metrics or serial was configured:
    /// loading a snapshot is refused from then on.
    boot_path: bool,
    config: VmConfig,
    logger: Option<File>,
    metrics: Option<File>,
    vsock_task: Option<AbortHandle>,
    vsock_echo: bool,
    /// `SendCtrlAltDel` reached a paused guest: it powers off on resume.
    ctrl_alt_del_pending: bool,
    /// Restored from a snapshot and not run since.
    restored: bool,
    rt: Handle,
}

impl Fake {
    pub fn new(description: ApiDescription, id: String, vsock_echo: bool, rt: Handle) -> Self {
        let vmm_version = format!("{}-fake", description.version());
        Self {
            description,
            id,
            vmm_version,
            phase: Phase::NotStarted,
            boot_path: false,
            config: VmConfig::default(),
            logger: None,
            metrics: None,
            vsock_task: None,
            vsock_echo,
            ctrl_alt_del_pending: false,
            restored: false,
            rt,
        }
    }

    /// One request: `body` is the raw request body (empty for none).
    pub fn handle(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        let body = if body.is_empty() {
            None
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(value) => Some(value),
                Err(e) => {
                    eprintln!(
                        "fake-firecracker: schema violation: {method} {path}: the body is not JSON: {e}"
                    );
                    return Reply::fault(format!(
                        "An error occurred when deserializing the json body of a request: {e}."
                    ));
                }
            }
        };
        if let Err(e) = self
            .description
            .validate_request(method, path, body.as_ref())
        {
            eprintln!("fake-firecracker: schema violation: {method} {path}: {e}");
            return Reply::fault(match e {
                RequestError::UnknownOperation { .. } => {
                    format!("Invalid request method and/or path: {method} {path}.")
                }
                RequestError::MissingBody { .. } => format!("Empty {method} request."),
                RequestError::UnexpectedBody { .. } => {
                    format!("{method} request cannot have a body.")
                }
                other => other.to_string(),
            });
        }
        let reply = self.route(method, path, body).unwrap_or_else(Reply::from);
        self.log(&format!("{method} {path}: {}", reply.status.as_u16()));
        reply
    }

    fn route(&mut self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", [""]) => Ok(Reply::json(json!({
                "app_name": "Firecracker",
                "id": self.id,
                "state": self.phase,
                "vmm_version": self.vmm_version,
            }))),
            ("GET", ["version"]) => Ok(Reply::json(
                json!({ "firecracker_version": self.vmm_version }),
            )),
            ("GET", ["vm", "config"]) => Ok(Reply::json(to_value(&self.config)?)),
            ("GET", ["machine-config"]) => Ok(Reply::json(to_value(&self.config.machine)?)),
            ("PUT", ["machine-config"]) => self.put_machine_config(parse(body)?),
            ("PATCH", ["machine-config"]) => self.patch_machine_config(body),
            ("PUT", ["boot-source"]) => self.put_boot_source(parse(body)?),
            ("PUT", ["drives", id]) => self.put_drive(id, parse(body)?),
            ("PATCH", ["drives", id]) => self.patch_drive(id, body),
            ("PUT", ["network-interfaces", id]) => self.put_network_interface(id, parse(body)?),
            ("PATCH", ["network-interfaces", id]) => self.patch_network_interface(id, body),
            ("PUT", ["vsock"]) => self.put_vsock(parse(body)?),
            ("PUT", ["logger"]) => self.put_logger(body),
            ("PUT", ["metrics"]) => self.put_metrics(body),
            ("PUT", ["actions"]) => self.action(body),
            ("PATCH", ["vm"]) => self.patch_vm(body),
            ("PUT", ["snapshot", "create"]) => self.create_snapshot(body),
            ("PUT", ["snapshot", "load"]) => self.load_snapshot(body),
            ("PUT", _) => self.put_other(&segments, body),
            _ => {
                let operation = self
                    .description
                    .operation_id(method, path)
                    .unwrap_or(path)
                    .to_owned();
                fault(format!("fake-firecracker does not implement {operation}"))
            }
        }
    }

    fn pre_boot(&self) -> Result<(), Fault> {
        if self.phase == Phase::NotStarted {
            Ok(())
        } else {
            fault(NOT_AFTER_START)
        }
    }

    fn post_boot(&self) -> Result<(), Fault> {
        if self.phase == Phase::NotStarted {
            fault(NOT_BEFORE_START)
        } else {
            Ok(())
        }
    }

    fn put_machine_config(&mut self, config: MachineConfig) -> Answer {
        self.pre_boot()?;
        check_machine_config(&config)?;
        self.boot_path = true;
        self.config.machine = config;
        Ok(Reply::no_content())
    }

    fn patch_machine_config(&mut self, body: Option<Value>) -> Answer {
        self.pre_boot()?;
        let mut merged = to_value(&self.config.machine)?;
        if let (Value::Object(current), Some(Value::Object(patch))) = (&mut merged, body) {
            current.extend(patch);
        }
        let config: MachineConfig = parse(Some(merged))?;
        check_machine_config(&config)?;
        self.boot_path = true;
        self.config.machine = config;
        Ok(Reply::no_content())
    }

    fn put_boot_source(&mut self, boot: BootSource) -> Answer {
        self.pre_boot()?;
        File::open(&boot.kernel_image_path).or_else(|e| {
            fault(format!(
                "Boot source error: The kernel file cannot be opened: {e}"
            ))
        })?;
        if let Some(initrd) = &boot.initrd_path {
            File::open(initrd).or_else(|e| {
                fault(format!(
                    "Boot source error: The initrd file cannot be opened due to invalid path or \
                     invalid permissions. {e}"
                ))
            })?;
        }
        self.boot_path = true;
        self.config.boot_source = Some(boot);
        Ok(Reply::no_content())
    }

    fn put_drive(&mut self, id: &str, drive: Drive) -> Answer {
        self.pre_boot()?;
        checked_id(id)?;
        if drive.drive_id != id {
            return fault(ID_MISMATCH);
        }
        if drive.socket.is_none() {
            let Some(path) = &drive.path_on_host else {
                return fault(
                    "Drive config error: Unable to create the virtio block device: \
                     path_on_host is missing",
                );
            };
            open_backing_file(path, drive.is_read_only.unwrap_or(false)).or_else(|e| {
                fault(format!(
                    "Drive config error: Unable to create the virtio block device: Virtio \
                     backend error: Error manipulating the backing file: {e} {path}"
                ))
            })?;
        }
        let other_root = self
            .config
            .drives
            .iter()
            .any(|d| d.is_root_device && d.drive_id != id);
        if drive.is_root_device && other_root {
            return fault("Drive config error: A root block device already exists!");
        }
        self.config.drives.retain(|d| d.drive_id != id);
        // Firecracker keeps the root device first.
        if drive.is_root_device {
            self.config.drives.insert(0, drive);
        } else {
            self.config.drives.push(drive);
        }
        self.boot_path = true;
        Ok(Reply::no_content())
    }

    fn patch_drive(&mut self, id: &str, body: Option<Value>) -> Answer {
        self.post_boot()?;
        checked_id(id)?;
        let body = body.unwrap_or(Value::Null);
        if body.get("drive_id").and_then(Value::as_str) != Some(id) {
            return fault(ID_MISMATCH);
        }
        let Some(index) = self.config.drives.iter().position(|d| d.drive_id == id) else {
            return fault(
                "Drive config error: Unable to patch the block device: the drive is not \
                 configured Please verify the request arguments.",
            );
        };
        if let Some(path) = body.get("path_on_host").and_then(Value::as_str) {
            let read_only = self.config.drives[index].is_read_only.unwrap_or(false);
            open_backing_file(path, read_only).or_else(|e| {
                fault(format!(
                    "Drive config error: Unable to patch the block device: {e} {path} Please \
                     verify the request arguments."
                ))
            })?;
            self.config.drives[index].path_on_host = Some(path.to_owned());
        }
        if let Some(limiter) = body.get("rate_limiter") {
            self.config.drives[index]
                .rest
                .insert("rate_limiter".to_owned(), limiter.clone());
        }
        Ok(Reply::no_content())
    }

    fn put_network_interface(&mut self, id: &str, nic: NetworkInterface) -> Answer {
        self.pre_boot()?;
        checked_id(id)?;
        if nic.iface_id != id {
            return fault(ID_MISMATCH);
        }
        if let Some(mac) = &nic.guest_mac
            && !is_mac(mac)
        {
            return fault(format!(
                "An error occurred when deserializing the json body of a request: invalid MAC \
                 address {mac:?}."
            ));
        }
        // Firecracker opens the TAP here and fails the request when it
        // cannot; the fake looks the device up in its network namespace.
        if let Err(e) = tap_exists(&nic.host_dev_name) {
            return fault(format!(
                "Could not create the network device: Open tap device failed: Error while \
                 creating ifreq structure: {e}. Invalid TUN/TAP Backend provided by {}. Check \
                 our documentation on setting up the network devices.",
                nic.host_dev_name
            ));
        }
        let taken = self
            .config
            .network_interfaces
            .iter()
            .any(|n| n.iface_id != id && n.host_dev_name == nic.host_dev_name);
        if taken {
            return fault(format!(
                "Network config error: The host device name {} is already in use.",
                nic.host_dev_name
            ));
        }
        if let Some(existing) = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == id)
        {
            *existing = nic;
        } else {
            self.config.network_interfaces.push(nic);
        }
        self.boot_path = true;
        Ok(Reply::no_content())
    }

    fn patch_network_interface(&mut self, id: &str, body: Option<Value>) -> Answer {
        self.post_boot()?;
        checked_id(id)?;
        let body = body.unwrap_or(Value::Null);
        if body.get("iface_id").and_then(Value::as_str) != Some(id) {
            return fault(ID_MISMATCH);
        }
        let Some(nic) = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == id)
        else {
            return fault(format!(
                "Network config error: Invalid interface ID - not found: {id}"
            ));
        };
        for key in ["rx_rate_limiter", "tx_rate_limiter"] {
            if let Some(limiter) = body.get(key) {
                nic.rest.insert(key.to_owned(), limiter.clone());
            }
        }
        Ok(Reply::no_content())
    }

    fn put_vsock(&mut self, config: Vsock) -> Answer {
        self.pre_boot()?;
        self.bind_vsock(&config.uds_path).or_else(|e| {
            fault(format!(
                "Vsock config error: Cannot create backend for vsock device: Error binding to \
                 the host-side Unix socket: {e}"
            ))
        })?;
        self.boot_path = true;
        self.config.vsock = Some(config);
        Ok(Reply::no_content())
    }

    /// Serves `uds_path` in place of the socket served so far (whose file
    /// stays, as Firecracker leaves it).
    fn bind_vsock(&mut self, uds_path: &str) -> std::io::Result<()> {
        let task = vsock::bind(Path::new(uds_path), self.vsock_echo, &self.rt)?;
        if let Some(old) = self.vsock_task.replace(task) {
            old.abort();
        }
        Ok(())
    }

    /// `--log-path`: the log from the start.
    pub fn log_to(&mut self, path: &Path) -> std::io::Result<()> {
        self.logger = Some(open_output(&path.to_string_lossy())?);
        self.log(&format!("Running Firecracker v{}", self.vmm_version));
        Ok(())
    }

    fn put_logger(&mut self, body: Option<Value>) -> Answer {
        self.pre_boot()?;
        let body = body.unwrap_or_else(|| json!({}));
        if let Some(path) = body.get("log_path").and_then(Value::as_str) {
            // Firecracker creates the file (since v1.14) and writes there from then on.
            let file = open_output(path)
                .or_else(|e| fault(format!("Logger error: Failed to open target file: {e}")))?;
            self.logger = Some(file);
        }
        self.config.logger = Some(body);
        self.log(&format!("Running Firecracker v{}", self.vmm_version));
        Ok(Reply::no_content())
    }

    fn put_metrics(&mut self, body: Option<Value>) -> Answer {
        self.pre_boot()?;
        if self.metrics.is_some() {
            return fault("Metrics error: Reinitialization of metrics not allowed.");
        }
        let body = body.unwrap_or_else(|| json!({}));
        let path = body
            .get("metrics_path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let file = open_output(path).or_else(|e| {
            fault(format!(
                "Metrics error: Cannot initialize the metrics system due to bad user input: {e}"
            ))
        })?;
        self.metrics = Some(file);
        self.config.metrics = Some(body);
        Ok(Reply::no_content())
    }

    fn action(&mut self, body: Option<Value>) -> Answer {
        let action = body
            .as_ref()
            .and_then(|b| b.get("action_type"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        match action {
            "InstanceStart" => self.start(),
            "FlushMetrics" => {
                self.post_boot()?;
                if let Some(metrics) = &mut self.metrics {
                    let line = json!({ "utc_timestamp_ms": now_ms(), "fake_firecracker": {} });
                    writeln!(metrics, "{line}").or_else(|e| {
                        fault(format!(
                            "Internal VMM error: Metrics error: Failed to write metrics: {e}"
                        ))
                    })?;
                }
                Ok(Reply::no_content())
            }
            "SendCtrlAltDel" => {
                self.post_boot()?;
                self.log("SendCtrlAltDel");
                let mut reply = Reply::no_content();
                if self.phase == Phase::Running {
                    self.log("guest powered off");
                    reply.power_off = true;
                } else {
                    self.ctrl_alt_del_pending = true;
                }
                Ok(reply)
            }
            other => fault(format!(
                "fake-firecracker does not implement action {other}"
            )),
        }
    }

    fn start(&mut self) -> Answer {
        self.pre_boot()?;
        let Some(boot) = &self.config.boot_source else {
            return fault(
                "Start microvm error: Cannot start microvm without kernel configuration.",
            );
        };
        let (kind, kernel) = guest::inspect(Path::new(&boot.kernel_image_path)).or_else(|e| {
            fault(format!(
                "Start microvm error: System configuration error: Cannot load kernel due to \
                 invalid memory configuration or invalid kernel image: {e}"
            ))
        })?;
        self.phase = Phase::Running;
        self.log("InstanceStart");
        if let Err(e) = guest::boot(kind, &kernel) {
            eprintln!("fake-firecracker: cannot write the serial console: {e}");
        }
        Ok(Reply::no_content())
    }

    fn patch_vm(&mut self, body: Option<Value>) -> Answer {
        self.post_boot()?;
        let state = body
            .as_ref()
            .and_then(|b| b.get("state"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut reply = Reply::no_content();
        match state {
            "Paused" => {
                self.phase = Phase::Paused;
                self.log("paused");
            }
            "Resumed" => {
                self.phase = Phase::Running;
                self.log("resumed");
                if std::mem::take(&mut self.restored)
                    && let Err(e) = guest::resumed()
                {
                    eprintln!("fake-firecracker: cannot write the serial console: {e}");
                }
                if std::mem::take(&mut self.ctrl_alt_del_pending) {
                    self.log("guest powered off");
                    reply.power_off = true;
                }
            }
            other => return fault(format!("fake-firecracker does not know state {other}")),
        }
        Ok(reply)
    }

    fn create_snapshot(&mut self, body: Option<Value>) -> Answer {
        self.post_boot()?;
        if self.phase != Phase::Paused {
            return fault(
                "Create snapshot error: Cannot save the microVM state: Operation not allowed: \
                 save/restore unavailable while running",
            );
        }
        let body = body.unwrap_or(Value::Null);
        let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default();
        let state = snapshot::State {
            magic: snapshot::MAGIC.to_owned(),
            vmm_version: self.vmm_version.clone(),
            state: Phase::Paused,
            machine_config: self.config.machine.clone(),
            drives: self.config.drives.clone(),
            network_interfaces: self.config.network_interfaces.clone(),
            vsock: self.config.vsock.clone(),
        };
        snapshot::write(
            &state,
            Path::new(field("snapshot_path")),
            Path::new(field("mem_file_path")),
        )
        .or_else(|e| fault(format!("Create snapshot error: {e}")))?;
        self.log(&format!("snapshot created: {}", field("snapshot_path")));
        Ok(Reply::no_content())
    }

    fn load_snapshot(&mut self, body: Option<Value>) -> Answer {
        self.pre_boot()?;
        if self.boot_path {
            return fault(
                "Load snapshot error: Loading a microVM snapshot not allowed after configuring \
                 boot-specific resources.",
            );
        }
        let body = body.unwrap_or(Value::Null);
        let deserialize = |what: &str| {
            fault(format!(
                "An error occurred when deserializing the json body of a request: {what}."
            ))
        };
        let mem_path = match (body.get("mem_backend"), body.get("mem_file_path")) {
            (Some(_), Some(_)) => {
                return deserialize(
                    "too many fields: either `mem_backend` or `mem_file_path` exclusively is \
                     required",
                );
            }
            (None, None) => {
                return deserialize(
                    "missing field: either `mem_backend` or `mem_file_path` is required",
                );
            }
            (None, Some(path)) => path.as_str().unwrap_or_default(),
            (Some(backend), None) => {
                if backend.get("backend_type").and_then(Value::as_str) != Some("File") {
                    return fault("fake-firecracker implements only the File memory backend");
                }
                backend
                    .get("backend_path")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            }
        };
        let snapshot_path = body
            .get("snapshot_path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let restore_error = |e: String| {
            Fault(format!(
                "Load snapshot error: Failed to restore from snapshot: {e}"
            ))
        };
        let mut state =
            snapshot::read(Path::new(snapshot_path), Path::new(mem_path)).map_err(restore_error)?;

        let overrides = body
            .get("network_overrides")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for entry in overrides {
            let iface = entry.get("iface_id").and_then(Value::as_str);
            let nic = state
                .network_interfaces
                .iter_mut()
                .find(|n| Some(n.iface_id.as_str()) == iface);
            let Some(nic) = nic else {
                return Err(restore_error(
                    "Failed to get snapshot state from file: Unknown Network Device.".to_owned(),
                ));
            };
            if let Some(dev) = entry.get("host_dev_name").and_then(Value::as_str) {
                nic.host_dev_name = dev.to_owned();
            }
        }
        if let Some(uds) = body
            .pointer("/vsock_override/uds_path")
            .and_then(Value::as_str)
        {
            let Some(vsock) = &mut state.vsock else {
                return Err(restore_error(
                    "Failed to get snapshot state from file: Unknown Vsock Device.".to_owned(),
                ));
            };
            vsock.uds_path = uds.to_owned();
        }
        for drive in &state.drives {
            if let Some(path) = &drive.path_on_host {
                open_backing_file(path, drive.is_read_only.unwrap_or(false)).map_err(|e| {
                    restore_error(format!(
                        "Failed to build microVM from snapshot: Cannot restore devices: Block: \
                         Error manipulating the backing file: {e} {path}"
                    ))
                })?;
            }
        }
        if let Some(vsock) = &state.vsock {
            self.bind_vsock(&vsock.uds_path).map_err(|e| {
                restore_error(format!(
                    "Failed to build microVM from snapshot: Cannot restore devices: Vsock: \
                     Error binding to the host-side Unix socket: {e}"
                ))
            })?;
        }

        let track_dirty_pages = ["track_dirty_pages", "enable_diff_snapshots"]
            .iter()
            .any(|k| body.get(*k).and_then(Value::as_bool) == Some(true));
        state.machine_config.track_dirty_pages = track_dirty_pages;
        self.config.machine = state.machine_config;
        self.config.drives = state.drives;
        self.config.network_interfaces = state.network_interfaces;
        self.config.vsock = state.vsock;
        self.phase = Phase::Paused;
        self.restored = true;
        self.log(&format!("snapshot loaded: {snapshot_path}"));
        if body.get("resume_vm").and_then(Value::as_bool) == Some(true) {
            self.phase = Phase::Running;
            self.restored = false;
            self.log("resumed");
            if let Err(e) = guest::resumed() {
                eprintln!("fake-firecracker: cannot write the serial console: {e}");
            }
        }
        Ok(Reply::no_content())
    }

    /// Other documented PUTs: accepted before start, kept for
    /// `GET /vm/config` where it has a place for them, without effect.
    fn put_other(&mut self, segments: &[&str], body: Option<Value>) -> Answer {
        let (key, sets_boot_path) = match segments {
            ["balloon"] => (Some("balloon"), true),
            ["cpu-config"] => (Some("cpu-config"), true),
            ["mmds", "config"] => (Some("mmds-config"), true),
            ["entropy"] => (Some("entropy"), true),
            ["hotplug", "memory"] => (Some("memory-hotplug"), true),
            ["pmem", _] => (Some("pmem"), true),
            // MMDS contents can be replaced at any time.
            ["mmds"] => return Ok(Reply::no_content()),
            _ => (None, false),
        };
        self.pre_boot()?;
        if let ["pmem", id] = segments {
            checked_id(id)?;
            let body = body.unwrap_or(Value::Null);
            if body.get("id").and_then(Value::as_str) != Some(id) {
                return fault(ID_MISMATCH);
            }
            let list = self
                .config
                .others
                .entry("pmem")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                list.retain(|p| p.get("id") != body.get("id"));
                list.push(body);
            }
        } else if let (Some(key), Some(body)) = (key, body) {
            self.config.others.insert(key.to_owned(), body);
        }
        self.boot_path |= sets_boot_path;
        Ok(Reply::no_content())
    }

    /// A line in the log file, if one is configured. Like Firecracker, a
    /// log that cannot be written does not fail the request.
    fn log(&mut self, line: &str) {
        if let Some(logger) = &mut self.logger {
            let _ = writeln!(logger, "[fake-firecracker] {line}");
        }
    }
}

fn parse<T: DeserializeOwned>(body: Option<Value>) -> Result<T, Fault> {
    serde_json::from_value(body.unwrap_or(Value::Null)).or_else(|e| {
        fault(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, Fault> {
    serde_json::to_value(value).or_else(|e| fault(format!("Internal VMM error: {e}")))
}

fn check_machine_config(config: &MachineConfig) -> Result<(), Fault> {
    if config.mem_size_mib == 0 {
        return fault(
            "Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.",
        );
    }
    if config.smt && config.vcpu_count > 1 && config.vcpu_count % 2 == 1 {
        return fault(
            "Machine config error: The number of vCPUs must be 1 or an even number if SMT is enabled.",
        );
    }
    Ok(())
}

/// Firecracker's check of a resource id in a path.
fn checked_id(id: &str) -> Result<(), Fault> {
    if id.is_empty() {
        return fault("The ID cannot be empty.");
    }
    if !id.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        return fault("API Resource IDs can only contain alphanumeric characters and underscores.");
    }
    Ok(())
}

/// Whether a network device `name` exists in this process's network
/// namespace (`/sys/class/net` may show another one's).
fn tap_exists(name: &str) -> std::io::Result<()> {
    use rustix::net::{AddressFamily, SocketType, netdevice::name_to_index, socket};
    let probe = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    name_to_index(&probe, name)?;
    Ok(())
}

fn is_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Opens a drive's file as Firecracker does (read-write unless read-only);
/// a relative path is relative to the process's working directory.
fn open_backing_file(path: &str, read_only: bool) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(!read_only).open(path)
}

/// A log or metrics file: created if missing, appended to.
fn open_output(path: &str) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}
