//! The sample spec the unit tests of this module start from.

use crate::spec::{
    Accel, BootSource, DiskFormat, Drive, MachineConfig, MemoryBacking, NetBackend, NetInterface,
    PortForward, Proto, VmSpec,
};

pub(crate) fn sample() -> VmSpec {
    VmSpec {
        vm_id: "0f3a9c".into(),
        name: "dev".into(),
        vm_dir: "/run/banger/vms/0f3a9c".into(),
        boot: BootSource {
            kernel: "/var/lib/banger/kernels/k1/vmlinuz".into(),
            initrd: Some("/var/lib/banger/kernels/k1/initrd.img".into()),
            cmdline: "console=ttyS0 root=/dev/vda rw panic=-1 quiet".into(),
        },
        machine: MachineConfig {
            vcpus: 1,
            memory_mib: 1024,
        },
        memory: MemoryBacking::Anonymous,
        drives: vec![
            Drive {
                id: "work".into(),
                path: "/var/lib/banger/vms/0f3a9c/work.ext4".into(),
                format: DiskFormat::Raw,
                read_only: false,
                is_root: false,
            },
            Drive {
                id: "root".into(),
                path: "/var/lib/banger/vms/0f3a9c/root.qcow2".into(),
                format: DiskFormat::Qcow2,
                read_only: false,
                is_root: true,
            },
        ],
        net: vec![NetInterface {
            id: "net0".into(),
            mac: Some("52:54:00:12:34:56".into()),
            backend: NetBackend::User {
                restrict: false,
                forwards: vec![
                    PortForward {
                        proto: Proto::Tcp,
                        host_addr: "127.0.0.1".parse().unwrap(),
                        host_port: 2222,
                        guest_port: 22,
                    },
                    PortForward {
                        proto: Proto::Udp,
                        host_addr: "127.0.0.1".parse().unwrap(),
                        host_port: 5353,
                        guest_port: 53,
                    },
                ],
            },
        }],
        agent: None,
        accel: Accel::Tcg,
        console_log: "/run/banger/vms/0f3a9c/console.log".into(),
        join_namespaces_of: None,
    }
}
