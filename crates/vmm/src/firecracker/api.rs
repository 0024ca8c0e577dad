//! Firecracker's REST API as this backend speaks it: every request it can
//! send is a variant of [`Request`], each with a typed body named after the
//! API description's definition (`../shared/reference/firecracker-api.yaml`,
//! swagger 2.0). Only the fields banger sets are declared; optional ones are
//! omitted when unset, as Firecracker applies its defaults then.
//!
//! A test outside this crate (`crates/fc-fake/tests/request_bodies.rs`)
//! validates [`Request::examples`], which sets every field of every body,
//! against the description turned into JSON schemas that forbid unknown
//! fields: a field renamed here, or one the description does not have,
//! fails it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An HTTP method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// One call on Firecracker's API socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `GET /`: [`InstanceInfo`].
    DescribeInstance,
    /// `GET /version`: [`FirecrackerVersion`].
    Version,
    /// `PUT /machine-config`. Pre-boot only.
    PutMachineConfig(MachineConfiguration),
    /// `PUT /boot-source`. Pre-boot only.
    PutBootSource(BootSource),
    /// `PUT /drives/{drive_id}`. Pre-boot only.
    PutDrive(Drive),
    /// `PUT /network-interfaces/{iface_id}`. Pre-boot only.
    PutNetworkInterface(NetworkInterface),
    /// `PUT /vsock`. Pre-boot only.
    PutVsock(Vsock),
    /// `PUT /actions`.
    Action(InstanceActionInfo),
    /// `PATCH /vm`: pause or resume.
    PatchVm(VmState),
    /// `PUT /snapshot/create`: on a paused VM.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`: on a fresh process, instead of configuring one.
    LoadSnapshot(SnapshotLoadParams),
}

impl Request {
    pub fn method(&self) -> Method {
        match self {
            Request::DescribeInstance | Request::Version => Method::Get,
            Request::PatchVm(_) => Method::Patch,
            _ => Method::Put,
        }
    }

    /// The path, with ids filled in. Ids are checked by the backend
    /// before they get here (`[A-Za-z0-9._-]`), so they need no escaping.
    pub fn path(&self) -> String {
        match self {
            Request::DescribeInstance => "/".into(),
            Request::Version => "/version".into(),
            Request::PutMachineConfig(_) => "/machine-config".into(),
            Request::PutBootSource(_) => "/boot-source".into(),
            Request::PutDrive(d) => format!("/drives/{}", d.drive_id),
            Request::PutNetworkInterface(n) => format!("/network-interfaces/{}", n.iface_id),
            Request::PutVsock(_) => "/vsock".into(),
            Request::Action(_) => "/actions".into(),
            Request::PatchVm(_) => "/vm".into(),
            Request::CreateSnapshot(_) => "/snapshot/create".into(),
            Request::LoadSnapshot(_) => "/snapshot/load".into(),
        }
    }

    /// The JSON body, if the call has one.
    pub fn body(&self) -> Option<serde_json::Value> {
        fn json<T: Serialize>(body: &T) -> serde_json::Value {
            // These types are plain structs of strings, numbers, booleans
            // and enums: serialising them to a `Value` cannot fail.
            serde_json::to_value(body).unwrap_or(serde_json::Value::Null)
        }
        match self {
            Request::DescribeInstance | Request::Version => None,
            Request::PutMachineConfig(b) => Some(json(b)),
            Request::PutBootSource(b) => Some(json(b)),
            Request::PutDrive(b) => Some(json(b)),
            Request::PutNetworkInterface(b) => Some(json(b)),
            Request::PutVsock(b) => Some(json(b)),
            Request::Action(b) => Some(json(b)),
            Request::PatchVm(b) => Some(json(b)),
            Request::CreateSnapshot(b) => Some(json(b)),
            Request::LoadSnapshot(b) => Some(json(b)),
        }
    }

    /// `METHOD /path`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method().as_str(), self.path())
    }

    /// One request of every kind, with every optional field set: what the
    /// schema test validates (see the module docs).
    pub fn examples() -> Vec<Request> {
        vec![
            Request::DescribeInstance,
            Request::Version,
            Request::PutMachineConfig(MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 256,
                smt: Some(false),
                track_dirty_pages: Some(false),
            }),
            Request::PutBootSource(BootSource {
                kernel_image_path: "/k/vmlinux".into(),
                initrd_path: Some("/k/initrd.img".into()),
                boot_args: Some("console=ttyS0 reboot=k panic=1".into()),
            }),
            Request::PutDrive(Drive {
                drive_id: "root".into(),
                path_on_host: "root.raw".into(),
                is_root_device: true,
                is_read_only: false,
            }),
            Request::PutNetworkInterface(NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "bgtap0".into(),
                guest_mac: Some("02:fc:00:00:00:01".into()),
            }),
            Request::PutVsock(Vsock {
                guest_cid: 3,
                uds_path: "vsock.sock".into(),
            }),
            Request::Action(InstanceActionInfo {
                action_type: ActionType::InstanceStart,
            }),
            Request::Action(InstanceActionInfo {
                action_type: ActionType::SendCtrlAltDel,
            }),
            Request::PatchVm(VmState {
                state: VmStateValue::Paused,
            }),
            Request::PatchVm(VmState {
                state: VmStateValue::Resumed,
            }),
            Request::CreateSnapshot(SnapshotCreateParams {
                snapshot_type: Some(SnapshotType::Full),
                snapshot_path: "/s/vmstate".into(),
                mem_file_path: "/s/vmstate.mem".into(),
            }),
            Request::LoadSnapshot(SnapshotLoadParams {
                snapshot_path: "/s/vmstate".into(),
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: "/s/vmstate.mem".into(),
                },
                resume_vm: Some(true),
                network_overrides: vec![NetworkOverride {
                    iface_id: "eth0".into(),
                    host_dev_name: "bgtap1".into(),
                }],
                vsock_override: Some(VsockOverride {
                    uds_path: "vsock.sock".into(),
                }),
            }),
        ]
    }
}

/// `MachineConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
}

/// `BootSource`. `boot_args` replaces Firecracker's default command line
/// (which has `nomodule`) entirely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `Drive`, as a virtio-block device on a file or block device. A
/// relative `path_on_host` is opened relative to Firecracker's working
/// directory (the VM directory), which is how a restored VM opens its own
/// disks: the snapshot records the path as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

/// `NetworkInterface` on an existing TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `Vsock`: Firecracker listens on `uds_path` for host connections
/// (`CONNECT PORT\n`, answered `OK ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// `InstanceActionInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    InstanceStart,
    /// The guest sees Ctrl-Alt-Del on its i8042 keyboard controller.
    SendCtrlAltDel,
}

/// `Vm`: the body of `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    pub state: VmStateValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStateValue {
    Paused,
    Resumed,
}

/// `SnapshotCreateParams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    Full,
}

/// `SnapshotLoadParams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: PathBuf,
    pub mem_backend: MemoryBackend,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

/// `MemoryBackend`: the guest memory file, mapped privately (writes stay
/// in the process), so one file can start many VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    File,
}

/// `NetworkOverride`: a restored NIC on another TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `VsockOverride`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    pub uds_path: PathBuf,
}

/// `InstanceInfo`, the answer to `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `FirecrackerVersion`, the answer to `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    pub firecracker_version: String,
}

/// `Error`: the body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFault {
    #[serde(default)]
    pub fault_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_their_documented_method_path_and_body() {
        let drive = Request::PutDrive(Drive {
            drive_id: "root".into(),
            path_on_host: "root.raw".into(),
            is_root_device: true,
            is_read_only: false,
        });
        assert_eq!(drive.describe(), "PUT /drives/root");
        assert_eq!(
            drive.body().unwrap().to_string(),
            r#"{"drive_id":"root","is_read_only":false,"is_root_device":true,"path_on_host":"root.raw"}"#
        );
        let pause = Request::PatchVm(VmState {
            state: VmStateValue::Paused,
        });
        assert_eq!(pause.describe(), "PATCH /vm");
        assert_eq!(pause.body().unwrap().to_string(), r#"{"state":"Paused"}"#);
        assert_eq!(Request::DescribeInstance.describe(), "GET /");
        assert_eq!(Request::DescribeInstance.body(), None);
        // Unset optional fields are left out.
        let boot = Request::PutBootSource(BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        });
        assert_eq!(
            boot.body().unwrap().to_string(),
            r#"{"kernel_image_path":"/k"}"#
        );
    }

    #[test]
    fn instance_info_reads_not_started() {
        let info: InstanceInfo = serde_json::from_str(
            r#"{"app_name":"Firecracker","id":"x","state":"Not started","vmm_version":"1.17.0"}"#,
        )
        .unwrap();
        assert_eq!(info.state, InstanceState::NotStarted);
    }
}
