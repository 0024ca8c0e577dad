//! Golden snapshots of every RPC method's params and result, one example
//! each, in the order of the method list. A failure means the protocol
//! changed: if that was deliberate, review the new snapshot (`cargo insta
//! review`, or `INSTA_UPDATE=always cargo test`) and say so in the commit.
//! A method added to the list needs an example here, or
//! `every_method_has_an_example` fails.

#![allow(clippy::unwrap_used)] // test code

use banger_proto::agent::{DiskUsage, ListeningPort};
use banger_proto::daemon::{
    DaemonStatus, IpLease, NetworkStatus, PingResult, ShutdownParams, ShutdownResult, StoreStatus,
};
use banger_proto::events::{
    Event, EventFrame, EventKind, EventsSubscribeParams, EventsSubscribed, ObjectChange, StreamEnd,
};
use banger_proto::methods::{self as m, Method, NoParams};
use banger_proto::snapshot::{SnapshotView, VmForkParams, VmRestoreParams, VmSnapshotParams};
use banger_proto::vm::{
    CpParams, CpResult, Deleted, DoctorCheck, DoctorParams, DoctorReport, ExecBeginParams,
    ExecBegun, ExecIoParams, ExecIoResult, ImageBuildParams, ImageCachePruneParams,
    ImageCachePruneResult, ImageConfig, ImageOrigin, ImagePort, ImagePromoteParams,
    ImagePullParams, ImageView, KernelImportParams, KernelOrigin, KernelPullParams, KernelView,
    NameParams, OpRef, OpStatusParams, OpView, SshInfo, StageProgress, StageView, VmCreateParams,
    VmDeleteParams, VmDeleted, VmEditParams, VmKillParams, VmRef, VmStats, VmView,
};
use banger_proto::workspace::{
    ChangeKind, WorkspaceApplied, WorkspaceChange, WorkspaceDiff, WorkspacePushParams,
    WorkspaceSynced, WorkspaceView,
};
use banger_proto::{
    Accel, Backend, CheckStatus, DiskStrategy, EndReason, ErrorBody, ErrorCode, NetworkMode,
    ObjectAction, ObjectKind, OpKind, OpState, PlannedAccel, SnapshotKind, VmState, WaitFor,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One method's example: its params and result as they go on the wire.
struct Example {
    method: &'static str,
    params: String,
    result: String,
}

/// Encodes both sides, checking that each decodes back to what it was.
fn example<M: Method>(params: M::Params, result: M::Result) -> Example {
    Example {
        method: M::NAME,
        params: round_trip(&params),
        result: round_trip(&result),
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> String {
    let wire = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&wire).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), wire);
    wire
}

fn vm_ref() -> VmRef {
    VmRef { name: "dev".into() }
}

fn running_vm() -> VmView {
    VmView {
        id: "0a1b2c3d4e5f".into(),
        name: "dev".into(),
        state: VmState::Running,
        image: "debian-bookworm".into(),
        kernel: "debian-cloud".into(),
        vcpus: 2,
        memory_mib: 1024,
        disk_size_bytes: 8 << 30,
        network: NetworkMode::Bridged,
        egress: "allow=pypi.example,10.20.0.0/16,api.example:443"
            .parse()
            .unwrap(),
        wait_for: WaitFor::Ssh,
        backend: Some(Backend::Qemu),
        backend_reason: Some("--vmm qemu".into()),
        accel: Some(Accel::Kvm),
        disk_strategy: Some(DiskStrategy::DmSnapshot),
        publish: vec!["8080:80".parse().unwrap(), "5353:53/udp".parse().unwrap()],
        last_error: None,
        pid: Some(4242),
        ssh_port: None,
        ip: Some("10.77.0.2".into()),
        tap: Some("bgtap0".into()),
        vm_dir: "/home/u/.local/share/banger/vms/0a1b2c3d4e5f".into(),
        console_log: "/home/u/.local/share/banger/vms/0a1b2c3d4e5f/console.log".into(),
        created_at_ms: 1_700_000_000_000,
        agent: true,
        agent_shell: false,
        services: vec![banger_proto::vm::VmService {
            name: "opencode".into(),
            port: 4096,
            address: Some("dev.vm:4096".into()),
        }],
    }
}

fn stopped_vm() -> VmView {
    VmView {
        state: VmState::Stopped,
        agent: false,
        network: NetworkMode::User,
        accel: None,
        disk_strategy: Some(DiskStrategy::Qcow2),
        publish: Vec::new(),
        pid: None,
        ip: None,
        tap: None,
        ..running_vm()
    }
}

fn failed_vm() -> VmView {
    VmView {
        state: VmState::Error,
        last_error: Some("start failed: qemu exited".into()),
        ..stopped_vm()
    }
}

fn create_op() -> OpView {
    OpView {
        op_id: "op-a1b2c3".into(),
        kind: OpKind::VmCreate,
        target: "dev".into(),
        state: OpState::Running,
        stages: vec![
            StageView {
                name: "pull kernel debian-cloud".into(),
                duration_ms: Some(12),
                depth: 0,
                progress: None,
            },
            StageView {
                name: "download".into(),
                duration_ms: Some(10),
                depth: 1,
                progress: None,
            },
            StageView {
                name: "make disks".into(),
                duration_ms: None,
                depth: 0,
                progress: Some(StageProgress {
                    done_bytes: 1 << 20,
                    total_bytes: Some(8 << 20),
                }),
            },
        ],
        error: None,
        result: None,
        started_at_ms: 1_700_000_000_000,
        ended_at_ms: None,
    }
}

fn failed_op() -> OpView {
    OpView {
        state: OpState::Failed,
        error: Some(
            ErrorBody::new(
                ErrorCode::Conflict,
                "host port 8080 is already published by vm web",
            )
            .with_op_id("op-a1b2c3"),
        ),
        ended_at_ms: Some(1_700_000_001_000),
        ..create_op()
    }
}

/// A just-begun operation of `kind` on `dev`.
fn op_of(kind: OpKind) -> OpView {
    OpView {
        op_id: "op-snap0001".into(),
        kind,
        target: "dev".into(),
        state: OpState::Running,
        stages: vec![StageView {
            name: "pause vm".into(),
            duration_ms: None,
            depth: 0,
            progress: None,
        }],
        error: None,
        result: None,
        started_at_ms: 1_700_000_000_000,
        ended_at_ms: None,
    }
}

fn snapshot() -> SnapshotView {
    SnapshotView {
        id: "5a1b2c3d4e5f".into(),
        name: "before-upgrade".into(),
        kind: SnapshotKind::User,
        vm: "dev".into(),
        image: "default".into(),
        kernel: "debian-cloud".into(),
        vcpus: 1,
        memory_mib: 1024,
        disk_size_bytes: 8 << 30,
        network: NetworkMode::User,
        vmm: "qemu 7.2.22 microvm".into(),
        accel: Accel::Tcg,
        parent: None,
        used_by: vec!["vm try-1".into()],
        size_bytes: 180 << 20,
        dir: "/home/u/.local/share/banger/snapshots/5a1b2c3d4e5f".into(),
        created_at_ms: 1_700_000_000_000,
    }
}

fn image() -> ImageView {
    ImageView {
        id: "img0a1b2c3d".into(),
        name: "debian-bookworm".into(),
        source: "managed".into(),
        rootfs: "/home/u/.local/share/banger/images/debian-bookworm/rootfs.ext4".into(),
        work_seed: None,
        size_bytes: 2 << 30,
        managed: true,
        fingerprint: Some("f00d".into()),
        stale: true,
        stale_reason: Some("package set changed, new agent".into()),
        replaced_by: None,
        created_at_ms: 1_700_000_000_000,
        origin: ImageOrigin::Built,
        config: None,
        services: vec![banger_proto::vm::ImageService {
            name: "opencode".into(),
            port: 4096,
            command: "exec opencode serve --hostname 0.0.0.0 --port 4096".into(),
            workdir: "/root/work".into(),
        }],
    }
}

fn pulled_image() -> ImageView {
    ImageView {
        id: "i-0a1b2c3d4e".into(),
        name: "python-3-12-slim".into(),
        source: "docker.io/library/python:3.12-slim".into(),
        rootfs: "/home/u/.local/share/banger/images/python-3-12-slim/rootfs.ext4".into(),
        work_seed: Some(
            "/home/u/.local/share/banger/images/python-3-12-slim/work-seed.ext4".into(),
        ),
        size_bytes: 1 << 30,
        managed: false,
        fingerprint: None,
        stale: false,
        stale_reason: None,
        replaced_by: None,
        created_at_ms: 1_700_000_000_000,
        origin: ImageOrigin::Pulled {
            reference: "docker.io/library/python:3.12-slim".into(),
            digest: "sha256:4f1c0d2e".into(),
        },
        config: Some(ImageConfig {
            entrypoint: None,
            cmd: Some(vec!["python3".into()]),
            env: vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                "LANG=C.UTF-8".into(),
            ],
            working_dir: Some("/app".into()),
            user: Some("1000:1000".into()),
            exposed_ports: vec![ImagePort {
                port: 8000,
                protocol: "tcp".into(),
            }],
        }),
        services: Vec::new(),
    }
}

fn kernel() -> KernelView {
    KernelView {
        name: "debian-cloud".into(),
        description: "Debian's cloud kernel".into(),
        present: true,
        default: true,
        origin: KernelOrigin::Catalog {
            package: "linux-image-cloud-amd64".into(),
        },
        version: Some("6.1.0-28-cloud-amd64".into()),
        kernel: Some("/home/u/.local/share/banger/kernels/debian-cloud/vmlinuz".into()),
        initrd: Some("/home/u/.local/share/banger/kernels/debian-cloud/initrd.img".into()),
        modules: Some(
            "/home/u/.local/share/banger/kernels/debian-cloud/modules/6.1.0-28-cloud-amd64".into(),
        ),
    }
}

fn imported_kernel() -> KernelView {
    KernelView {
        name: "fc-guest".into(),
        description: String::new(),
        present: true,
        default: false,
        origin: KernelOrigin::Imported {
            path: "/home/u/build/vmlinux".into(),
        },
        version: None,
        kernel: Some("/home/u/.local/share/banger/kernels/fc-guest/vmlinuz".into()),
        initrd: None,
        modules: None,
    }
}

fn workspace_view() -> WorkspaceView {
    WorkspaceView {
        vm: "dev".into(),
        host_dir: "/home/u/project".into(),
        guest_path: "/root/work".into(),
        files: 1042,
        bytes: 20_480_000,
        base: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into(),
    }
}

fn workspace_changes() -> Vec<WorkspaceChange> {
    vec![
        WorkspaceChange {
            path: "notes.txt".into(),
            change: ChangeKind::Added,
        },
        WorkspaceChange {
            path: "src/main.rs".into(),
            change: ChangeKind::Modified,
        },
        WorkspaceChange {
            path: "old.txt".into(),
            change: ChangeKind::Deleted,
        },
    ]
}

fn examples() -> Vec<Example> {
    vec![
        example::<m::Ping>(
            NoParams,
            PingResult {
                version: "0.1.0".into(),
                build_id: "b1d".into(),
                pid: 42,
            },
        ),
        example::<m::DaemonStatus>(
            NoParams,
            DaemonStatus {
                version: "0.1.0".into(),
                build_id: "b1d".into(),
                protocol_version: 1,
                pid: 42,
                uptime_s: 7,
                socket: "/run/user/1000/banger/bangerd.sock".into(),
                log_file: "/home/u/.local/state/banger/bangerd.log".into(),
                store: StoreStatus {
                    path: "/home/u/.local/share/banger/banger.db".into(),
                    schema_version: 3,
                    vms: 1,
                    images: 1,
                    kernels: 1,
                },
            },
        ),
        example::<m::DaemonShutdown>(ShutdownParams { if_idle: true }, ShutdownResult { pid: 42 }),
        example::<m::VmCreateBegin>(
            VmCreateParams {
                name: "dev".into(),
                image: Some("debian-bookworm".into()),
                kernel: None,
                vcpus: Some(2),
                memory_mib: Some(1024),
                disk_size_bytes: None,
                publish: vec!["8080:80".parse().unwrap(), "5353:53/udp".parse().unwrap()],
                network: Some(NetworkMode::User),
                egress: Some(banger_proto::Egress::None),
                start: Some(true),
                from_snapshot: None,
                cold: true,
                wait_for: Some(WaitFor::Agent),
                vmm: Some(banger_proto::Backend::Qemu),
                workspace: Some(banger_proto::workspace::WorkspaceSpec {
                    host_dir: "/home/u/project".into(),
                    guest_path: None,
                }),
            },
            create_op(),
        ),
        example::<m::VmStart>(vm_ref(), running_vm()),
        example::<m::VmStartBegin>(vm_ref(), op_of(OpKind::VmStart)),
        example::<m::VmStop>(vm_ref(), stopped_vm()),
        example::<m::VmKill>(
            VmKillParams {
                name: "dev".into(),
                signal: Some("TERM".into()),
            },
            failed_vm(),
        ),
        example::<m::VmRestart>(vm_ref(), running_vm()),
        example::<m::VmRestartBegin>(vm_ref(), op_of(OpKind::VmRestart)),
        example::<m::VmPause>(vm_ref(), {
            let mut vm = running_vm();
            vm.state = VmState::Paused;
            vm
        }),
        example::<m::VmResume>(vm_ref(), running_vm()),
        example::<m::VmSnapshotBegin>(
            VmSnapshotParams {
                name: "dev".into(),
                snapshot: Some("before-upgrade".into()),
            },
            op_of(OpKind::VmSnapshot),
        ),
        example::<m::VmRestoreBegin>(
            VmRestoreParams {
                name: "dev".into(),
                snapshot: "before-upgrade".into(),
            },
            op_of(OpKind::VmRestore),
        ),
        example::<m::VmForkBegin>(
            VmForkParams {
                name: "dev".into(),
                new_name: "try".into(),
                count: Some(3),
            },
            op_of(OpKind::VmFork),
        ),
        example::<m::VmDelete>(
            VmDeleteParams {
                name: "dev".into(),
                force: true,
            },
            VmDeleted {
                deleted: "dev".into(),
                id: "0a1b2c3d4e5f".into(),
            },
        ),
        example::<m::VmShow>(vm_ref(), running_vm()),
        example::<m::VmList>(NoParams, vec![running_vm(), stopped_vm()]),
        example::<m::VmEdit>(
            VmEditParams {
                name: "dev".into(),
                vcpus: Some(4),
                memory_mib: None,
                disk_size_bytes: Some(16 << 30),
                publish: Some(vec!["8080:80".parse().unwrap()]),
                egress: Some(banger_proto::Egress::Open),
            },
            stopped_vm(),
        ),
        example::<m::VmSshInfo>(
            vm_ref(),
            SshInfo {
                host: "10.77.0.2".into(),
                port: 22,
                user: "root".into(),
                identity_file: "/home/u/.local/share/banger/ssh/id_ed25519".into(),
                known_hosts_file: "/home/u/.local/share/banger/ssh/known_hosts".into(),
                host_key_alias: "banger-0a1b2c3d4e5f".into(),
            },
        ),
        example::<m::VmStats>(
            vm_ref(),
            VmStats {
                name: "dev".into(),
                uptime_s: 12.5,
                load: [0.5, 0.25, 0.125],
                cpu_percent: Some(3.5),
                memory_total_bytes: 1 << 30,
                memory_used_bytes: 1 << 28,
                disks: vec![DiskUsage {
                    mount: "/".into(),
                    device: "/dev/vda".into(),
                    total_bytes: 8 << 30,
                    used_bytes: 1 << 30,
                }],
                sampled_at_ms: 1_700_000_000_000,
            },
        ),
        example::<m::VmPorts>(
            vm_ref(),
            vec![
                ListeningPort {
                    proto: "tcp".into(),
                    address: "0.0.0.0".into(),
                    port: 22,
                    pid: Some(310),
                    process: Some("sshd".into()),
                },
                ListeningPort {
                    proto: "udp".into(),
                    address: "127.0.0.1".into(),
                    port: 53,
                    pid: None,
                    process: None,
                },
            ],
        ),
        example::<m::VmExecBegin>(
            ExecBeginParams {
                name: "dev".into(),
                argv: vec!["uname".into(), "-a".into()],
                tty: false,
                rows: None,
                cols: None,
                env: vec![("LANG".into(), "C.UTF-8".into())],
                cwd: Some("/root".into()),
            },
            ExecBegun {
                exec_id: "ex-1".into(),
                pid: 812,
            },
        ),
        example::<m::VmExecIo>(
            ExecIoParams {
                exec_id: "ex-1".into(),
                stdin: Some("aGkK".into()),
                stdin_eof: true,
                signal: None,
                rows: None,
                cols: None,
                wait_ms: Some(500),
            },
            ExecIoResult {
                stdin_accepted: Some(3),
                stdout: "TGludXgK".into(),
                stderr: String::new(),
                done: true,
                exit_code: Some(0),
                signal: None,
                stdout_dropped: 4096,
                stderr_dropped: 0,
            },
        ),
        example::<m::VmCp>(
            CpParams {
                name: "dev".into(),
                to_guest: false,
                host_path: "/home/u/out".into(),
                guest_path: "/opt/tools".into(),
                recursive: true,
            },
            CpResult {
                bytes: 1234,
                mode: 0o755,
                destination: "/home/u/out/tools".into(),
                entries: Some(12),
                skipped: Some(0),
                stripped: Some(1),
                stripped_paths: vec!["/home/u/out/tools/su".into()],
            },
        ),
        example::<m::VmWorkspacePush>(
            WorkspacePushParams {
                name: "dev".into(),
                host_dir: "/home/u/project".into(),
                guest_path: None,
            },
            workspace_view(),
        ),
        example::<m::VmWorkspaceDiff>(
            vm_ref(),
            WorkspaceDiff {
                vm: "dev".into(),
                host_dir: "/home/u/project".into(),
                changes: workspace_changes(),
                patch: Some("diff --git a/src/main.rs b/src/main.rs\n...".into()),
                patch_base64: None,
            },
        ),
        example::<m::VmWorkspaceApply>(
            vm_ref(),
            WorkspaceApplied {
                vm: "dev".into(),
                host_dir: "/home/u/project".into(),
                changes: workspace_changes(),
            },
        ),
        example::<m::VmWorkspaceSync>(
            vm_ref(),
            WorkspaceSynced {
                vm: "dev".into(),
                guest_path: "/root/work".into(),
                changes: vec![WorkspaceChange {
                    path: "README.md".into(),
                    change: ChangeKind::Modified,
                }],
            },
        ),
        example::<m::ImageBuildBegin>(
            ImageBuildParams {
                name: Some("debian-bookworm".into()),
                packages: vec!["curl".into()],
                size_bytes: None,
                preset: Some(banger_proto::vm::ImagePreset::Opencode),
                services: vec![banger_proto::vm::ImageService {
                    name: "web".into(),
                    port: 8000,
                    command: "python3 -m http.server 8000".into(),
                    workdir: "/root".into(),
                }],
            },
            OpView {
                kind: OpKind::ImageBuild,
                target: "debian-bookworm".into(),
                stages: Vec::new(),
                ..create_op()
            },
        ),
        example::<m::ImageList>(NoParams, vec![image(), pulled_image()]),
        example::<m::ImageShow>(
            NameParams {
                name: "debian-bookworm".into(),
            },
            image(),
        ),
        example::<m::ImageDelete>(
            NameParams {
                name: "debian-bookworm".into(),
            },
            Deleted {
                deleted: "debian-bookworm".into(),
            },
        ),
        example::<m::ImagePullBegin>(
            ImagePullParams {
                reference: "python:3.12-slim".into(),
                name: None,
                platform: Some("linux/amd64".into()),
                insecure: false,
                username: Some("ci".into()),
                password: Some("s3cret".into()),
                if_missing: false,
            },
            OpView {
                kind: OpKind::ImagePull,
                target: "python-3-12-slim".into(),
                state: OpState::Succeeded,
                stages: vec![
                    StageView {
                        name: "resolve".into(),
                        duration_ms: Some(40),
                        depth: 0,
                        progress: None,
                    },
                    StageView {
                        name: "download".into(),
                        duration_ms: Some(2300),
                        depth: 0,
                        progress: None,
                    },
                    StageView {
                        name: "layer 1/2".into(),
                        duration_ms: Some(2000),
                        depth: 1,
                        progress: Some(StageProgress {
                            done_bytes: 30 << 20,
                            total_bytes: Some(40 << 20),
                        }),
                    },
                ],
                result: Some(serde_json::to_value(pulled_image()).unwrap()),
                ended_at_ms: Some(1_700_000_003_000),
                ..create_op()
            },
        ),
        example::<m::ImageCachePrune>(
            ImageCachePruneParams { dry_run: true },
            ImageCachePruneResult {
                dir: "/home/u/.cache/banger/oci".into(),
                blobs: 7,
                bytes: 52 << 20,
                dry_run: true,
            },
        ),
        example::<m::ImagePromote>(
            ImagePromoteParams {
                vm: "dev".into(),
                name: "dev-base".into(),
                with_work: true,
            },
            ImageView {
                name: "dev-base".into(),
                source: "vm:dev".into(),
                managed: false,
                fingerprint: None,
                stale: false,
                stale_reason: None,
                origin: ImageOrigin::Promoted { vm: "dev".into() },
                ..image()
            },
        ),
        example::<m::ImageWarmBegin>(
            NameParams {
                name: "default".into(),
            },
            OpView {
                target: "default".into(),
                ..op_of(OpKind::ImageWarm)
            },
        ),
        example::<m::SnapshotList>(NoParams, vec![snapshot()]),
        example::<m::SnapshotShow>(
            NameParams {
                name: "before-upgrade".into(),
            },
            snapshot(),
        ),
        example::<m::SnapshotDelete>(
            NameParams {
                name: "before-upgrade".into(),
            },
            Deleted {
                deleted: "before-upgrade".into(),
            },
        ),
        example::<m::KernelPullBegin>(
            KernelPullParams { name: None },
            OpView {
                kind: OpKind::KernelPull,
                target: "debian-cloud".into(),
                state: OpState::Succeeded,
                stages: vec![StageView {
                    name: "download".into(),
                    duration_ms: Some(900),
                    depth: 0,
                    progress: None,
                }],
                result: Some(serde_json::to_value(kernel()).unwrap()),
                ended_at_ms: Some(1_700_000_000_900),
                ..create_op()
            },
        ),
        example::<m::KernelImport>(
            KernelImportParams {
                name: "fc-guest".into(),
                kernel: "/home/u/build/vmlinux".into(),
                initrd: Some("/home/u/build/initrd.img".into()),
                modules: Some("/home/u/build/modules/6.1.102".into()),
            },
            KernelView {
                initrd: Some("/home/u/.local/share/banger/kernels/fc-guest/initrd.img".into()),
                modules: Some(
                    "/home/u/.local/share/banger/kernels/fc-guest/modules/6.1.102".into(),
                ),
                ..imported_kernel()
            },
        ),
        example::<m::KernelList>(
            NoParams,
            vec![
                kernel(),
                KernelView {
                    name: "other".into(),
                    description: "another catalog kernel".into(),
                    present: false,
                    default: false,
                    origin: KernelOrigin::Catalog {
                        package: "linux-image-other".into(),
                    },
                    version: None,
                    kernel: None,
                    initrd: None,
                    modules: None,
                },
                imported_kernel(),
            ],
        ),
        example::<m::KernelShow>(
            NameParams {
                name: "debian-cloud".into(),
            },
            kernel(),
        ),
        example::<m::KernelDelete>(
            NameParams {
                name: "debian-cloud".into(),
            },
            Deleted {
                deleted: "debian-cloud".into(),
            },
        ),
        example::<m::OpStatus>(
            OpStatusParams {
                op_id: "op-a1b2c3".into(),
                wait_ms: Some(250),
            },
            failed_op(),
        ),
        example::<m::OpCancel>(
            OpRef {
                op_id: "op-a1b2c3".into(),
            },
            OpView {
                state: OpState::Cancelled,
                error: Some(
                    ErrorBody::new(ErrorCode::Cancelled, "operation cancelled")
                        .with_op_id("op-a1b2c3"),
                ),
                ..create_op()
            },
        ),
        example::<m::OpList>(NoParams, vec![create_op(), failed_op()]),
        example::<m::EventsSubscribe>(
            EventsSubscribeParams {
                since: Some(41),
                epoch: Some("e-5f3a9c".into()),
            },
            EventsSubscribed {
                epoch: "e-5f3a9c".into(),
                last_seq: 44,
                replayed: 3,
                complete: true,
            },
        ),
        example::<m::Doctor>(
            DoctorParams { probe: false },
            DoctorReport {
                checks: vec![
                    DoctorCheck {
                        name: "kvm".into(),
                        status: CheckStatus::Ok,
                        detail: "/dev/kvm is usable".into(),
                        fix: None,
                    },
                    DoctorCheck {
                        name: "helper".into(),
                        status: CheckStatus::Warn,
                        detail: "banger-helper does not answer".into(),
                        fix: Some("sudo banger system install".into()),
                    },
                    DoctorCheck {
                        name: "qemu".into(),
                        status: CheckStatus::Fail,
                        detail: "qemu-system-x86_64 not found".into(),
                        fix: Some("apt-get install qemu-system-x86".into()),
                    },
                ],
                backend: Backend::Qemu,
                accel: PlannedAccel::Tcg,
                accel_reason: "/dev/kvm is missing".into(),
            },
        ),
        example::<m::NetworkStatus>(
            NoParams,
            NetworkStatus {
                helper_socket: "/run/banger-helper/helper.sock".into(),
                helper: true,
                bridge: Some("banger0".into()),
                subnet: Some("10.77.0.0/24".into()),
                gateway: Some("10.77.0.1".into()),
                tap_pool_size: 2,
                idle_taps: vec!["bgtap1".into()],
                taps_in_use: vec!["bgtap0".into()],
                leases: vec![IpLease {
                    vm: "dev".into(),
                    address: "10.77.0.2".into(),
                }],
            },
        ),
    ]
}

fn render(examples: &[Example]) -> String {
    let mut text = String::new();
    for e in examples {
        text.push_str(&format!(
            "== {}\nparams: {}\nresult: {}\n",
            e.method, e.params, e.result
        ));
    }
    text
}

#[test]
fn every_method_has_an_example() {
    let names: Vec<&str> = examples().iter().map(|e| e.method).collect();
    assert_eq!(names, m::ALL, "one example per method, in list order");
}

#[test]
fn every_method_is_pinned() {
    insta::assert_snapshot!("rpc_methods", render(&examples()));
}

/// The checked-in snapshot covers the whole list, so a method cannot be
/// added without its payloads being pinned and reviewed.
#[test]
fn the_snapshot_file_covers_every_method() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/snapshots/methods__rpc_methods.snap"
    );
    let snap = std::fs::read_to_string(path).unwrap();
    let pinned: Vec<&str> = snap.lines().filter_map(|l| l.strip_prefix("== ")).collect();
    assert_eq!(pinned, m::ALL);
}

/// Every kind of line an `events.subscribe` stream carries after its
/// answer, pinned like the methods' payloads.
#[test]
fn event_frames_are_pinned() {
    let frames = [
        EventFrame::Event(Event {
            seq: 42,
            at_ms: 1_764_000_000_000,
            kind: EventKind::OpStarted {
                op_id: "op-a1b2c3".into(),
                kind: OpKind::VmCreate,
                target: "dev".into(),
            },
        }),
        EventFrame::Event(Event {
            seq: 43,
            at_ms: 1_764_000_000_010,
            kind: EventKind::OpStage {
                op_id: "op-a1b2c3".into(),
                stage: "boot".into(),
                depth: 0,
            },
        }),
        EventFrame::Event(Event {
            seq: 44,
            at_ms: 1_764_000_000_020,
            kind: EventKind::Object(ObjectChange {
                object: ObjectKind::Vm,
                action: ObjectAction::Updated,
                id: "0f3c2a".into(),
                name: "dev".into(),
                vm_state: Some(VmState::Running),
            }),
        }),
        EventFrame::Event(Event {
            seq: 45,
            at_ms: 1_764_000_000_030,
            kind: EventKind::OpEnded {
                op_id: "op-a1b2c3".into(),
                state: OpState::Failed,
                error: Some(
                    ErrorBody::new(ErrorCode::OperationFailed, "boot: guest did not answer")
                        .with_op_id("op-a1b2c3"),
                ),
            },
        }),
        EventFrame::End(StreamEnd {
            reason: EndReason::Stalled,
            message: "the subscriber read nothing for 5 s".into(),
            last_seq: 45,
        }),
    ];
    let text: String = frames.iter().map(|f| round_trip(f) + "\n").collect();
    insta::assert_snapshot!("event_frames", text);
}

/// Methods without params accept `null`, no params and `{}`, nothing else.
#[test]
fn no_params_accepts_only_null_and_empty() {
    for ok in ["null", "{}"] {
        serde_json::from_str::<NoParams>(ok).unwrap();
    }
    for bad in [r#"{"x":1}"#, "[]", "1", r#""""#, "true"] {
        assert!(serde_json::from_str::<NoParams>(bad).is_err(), "{bad}");
    }
    let e = serde_json::from_value::<NoParams>(serde_json::json!({"x": 1})).unwrap_err();
    assert_eq!(e.to_string(), "takes no params");
    assert_eq!(serde_json::to_string(&NoParams).unwrap(), "null");
}

/// Bad enum values and publish specs are refused with a message naming
/// the problem, the same on the wire as on a command line.
#[test]
fn bad_wire_values_name_the_field_problem() {
    let e = serde_json::from_value::<VmCreateParams>(
        serde_json::json!({"name": "dev", "publish": ["80"]}),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("invalid publish \"80\""), "{e}");
    let e = serde_json::from_value::<VmCreateParams>(
        serde_json::json!({"name": "dev", "network": "wifi"}),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("unknown network \"wifi\""), "{e}");
}
