//! The QEMU argv for a [`VmSpec`]: pure, unit-tested, and shared in part
//! (machine, console and boot arguments) with the KVM probe.

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::VmFiles;
use super::check::check_spec;
use crate::error::VmmError;
use crate::spec::{Accel, AgentChannel, Drive, MemoryBacking, NetBackend, PortForward, VmSpec};

/// The chardev id of the serial console.
const CONSOLE_CHARDEV: &str = "console";

/// The virtio-serial port name the guest agent looks for (kept in step
/// with `banger_proto::agent::AGENT_PORT_NAME`; this crate does not depend
/// on the wire types).
fn banger_agent_port_name() -> &'static str {
    "banger.agent"
}

/// Doubles commas, QEMU's escape inside `key=value,...` option strings.
fn escape_opt(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn opt_with_path(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(escape_opt(path.as_os_str()));
    s.push(suffix);
    s
}

/// `guest=banger-VMID,process=banger-VMID`: the `-name` value, which is the
/// ownership marker `is_running` looks for.
pub fn name_arg(vm_id: &str) -> String {
    format!("guest=banger-{vm_id},process=banger-{vm_id}")
}

pub(super) fn qmp_arg(socket: &Path) -> OsString {
    opt_with_path("unix:", socket, ",server=on,wait=off")
}

/// `tcp:127.0.0.1:2222-:22`, as in `hostfwd=` and in slirp's error message.
pub(super) fn hostfwd_rule(f: &PortForward) -> String {
    let addr = match f.host_addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    format!(
        "{}:{addr}:{}-:{}",
        f.proto.as_str(),
        f.host_port,
        f.guest_port
    )
}

/// The id of the RAM's memory backend object. A saved state names RAM
/// blocks by it; without a backend the block is `microvm.ram`, which a VM
/// with a file-backed RAM cannot load ("Unknown ramblock").
pub(crate) const MEMORY_BACKEND_ID: &str = "mem";

/// `memory-backend-ram,id=mem,size=NM` or
/// `memory-backend-file,id=mem,size=NM,mem-path=PATH,share=on|off`.
fn memory_backend_arg(memory: &MemoryBacking, memory_mib: u32) -> OsString {
    let common = format!("id={MEMORY_BACKEND_ID},size={memory_mib}M");
    match memory {
        MemoryBacking::Anonymous => format!("memory-backend-ram,{common}").into(),
        MemoryBacking::File { path, shared } => opt_with_path(
            &format!("memory-backend-file,{common},mem-path="),
            path,
            if *shared { ",share=on" } else { ",share=off" },
        ),
    }
}

/// The machine, CPU, memory and console part shared by VMs and the KVM
/// probe. `memory: None` (the probe) gives QEMU's default RAM, with no
/// backend object.
pub(crate) fn machine_args(
    accel: Accel,
    vcpus: u32,
    memory_mib: u32,
    memory: Option<&MemoryBacking>,
    console_log: &Path,
) -> Vec<OsString> {
    let cpu = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let machine = match memory {
        Some(_) => format!("microvm,acpi=on,rtc=on,memory-backend={MEMORY_BACKEND_ID}"),
        None => "microvm,acpi=on,rtc=on".to_owned(),
    };
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("-M");
    push(&machine);
    push("-accel");
    push(accel.as_str());
    push("-cpu");
    push(cpu);
    push("-smp");
    push(&vcpus.to_string());
    push("-m");
    push(&format!("{memory_mib}M"));
    if let Some(memory) = memory {
        a.push("-object".into());
        a.push(memory_backend_arg(memory, memory_mib));
    }
    for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
        a.push(flag.into());
    }
    a.push("-chardev".into());
    a.push(opt_with_path(
        &format!("file,id={CONSOLE_CHARDEV},path="),
        console_log,
        ",append=on",
    ));
    a.push("-serial".into());
    a.push(format!("chardev:{CONSOLE_CHARDEV}").into());
    a
}

pub(crate) fn boot_args(kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["-kernel".into(), kernel.into()];
    if let Some(initrd) = initrd {
        a.push("-initrd".into());
        a.push(initrd.into());
    }
    a.push("-append".into());
    a.push(cmdline.into());
    a
}

fn drive_args(drive: &Drive) -> [OsString; 4] {
    let mut opts = opt_with_path(&format!("if=none,id={},file=", drive.id), &drive.path, "");
    opts.push(format!(",format={}", drive.format.as_str()));
    if drive.read_only {
        opts.push(",readonly=on");
    }
    [
        "-drive".into(),
        opts,
        "-device".into(),
        format!("virtio-blk-device,drive={}", drive.id).into(),
    ]
}

/// The full QEMU argv (without the binary) for `spec`, after checking the
/// spec's shape (ids, MAC, ports, socket path length; not that files exist).
pub fn qemu_args(spec: &VmSpec) -> Result<Vec<OsString>, VmmError> {
    check_spec(spec)?;
    let files = VmFiles::in_dir(&spec.vm_dir);
    let mut a: Vec<OsString> = vec!["-name".into(), name_arg(&spec.vm_id).into()];
    a.extend(machine_args(
        spec.accel,
        spec.machine.vcpus,
        spec.machine.memory_mib,
        Some(&spec.memory),
        &spec.console_log,
    ));
    a.extend(boot_args(
        &spec.boot.kernel,
        spec.boot.initrd.as_deref(),
        &spec.boot.cmdline,
    ));
    let roots = spec.drives.iter().filter(|d| d.is_root);
    let others = spec.drives.iter().filter(|d| !d.is_root);
    for drive in roots.chain(others) {
        a.extend(drive_args(drive));
    }
    for (index, nic) in spec.net.iter().enumerate() {
        let netdev: OsString = match &nic.backend {
            NetBackend::User { forwards, restrict } => {
                let mut s = format!("user,id={}", nic.id);
                if *restrict {
                    s.push_str(",restrict=on");
                }
                for f in forwards {
                    s.push_str(",hostfwd=");
                    s.push_str(&hostfwd_rule(f));
                }
                s.into()
            }
            NetBackend::Tap { tap_name } => format!(
                "tap,id={},ifname={tap_name},script=no,downscript=no",
                nic.id
            )
            .into(),
            // A hub of its own per NIC: on a shared hub two detached NICs
            // would reach each other.
            NetBackend::Detached => format!("hubport,id={},hubid={index}", nic.id).into(),
        };
        let mut device = format!("virtio-net-device,netdev={}", nic.id);
        if let Some(mac) = &nic.mac {
            device.push_str(",mac=");
            device.push_str(mac);
        }
        a.extend(["-netdev".into(), netdev, "-device".into(), device.into()]);
    }
    if let Some(AgentChannel::VirtioSerial) = &spec.agent {
        // QEMU listens; the daemon connects (and reconnects after a
        // restart). The port's name is how the agent finds it.
        let mut chardev = OsString::from("socket,id=agent,server=on,wait=off,path=");
        chardev.push(&files.agent_socket);
        a.extend([
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            chardev,
            "-device".into(),
            format!(
                "virtserialport,chardev=agent,name={}",
                banger_agent_port_name()
            )
            .into(),
        ]);
    }
    a.push("-qmp".into());
    a.push(qmp_arg(&files.control_socket));
    a.push("-pidfile".into());
    a.push(files.pidfile.into_os_string());
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::test_spec::sample;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn sample_spec_gives_exact_argv() {
        let args = strings(&qemu_args(&sample()).unwrap());
        let expected = [
            "-name",
            "guest=banger-0f3a9c,process=banger-0f3a9c",
            "-M",
            "microvm,acpi=on,rtc=on,memory-backend=mem",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "1024M",
            "-object",
            "memory-backend-ram,id=mem,size=1024M",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-chardev",
            "file,id=console,path=/run/banger/vms/0f3a9c/console.log,append=on",
            "-serial",
            "chardev:console",
            "-kernel",
            "/var/lib/banger/kernels/k1/vmlinuz",
            "-initrd",
            "/var/lib/banger/kernels/k1/initrd.img",
            "-append",
            "console=ttyS0 root=/dev/vda rw panic=-1 quiet",
            "-drive",
            "if=none,id=root,file=/var/lib/banger/vms/0f3a9c/root.qcow2,format=qcow2",
            "-device",
            "virtio-blk-device,drive=root",
            "-drive",
            "if=none,id=work,file=/var/lib/banger/vms/0f3a9c/work.ext4,format=raw",
            "-device",
            "virtio-blk-device,drive=work",
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:127.0.0.1:5353-:53",
            "-device",
            "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56",
            "-qmp",
            "unix:/run/banger/vms/0f3a9c/qmp.sock,server=on,wait=off",
            "-pidfile",
            "/run/banger/vms/0f3a9c/vmm.pid",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn kvm_tap_readonly_and_no_initrd() {
        let mut spec = sample();
        spec.accel = Accel::Kvm;
        spec.machine.vcpus = 2;
        spec.boot.initrd = None;
        spec.drives.truncate(1);
        spec.drives[0].read_only = true;
        spec.net[0].mac = None;
        spec.net[0].backend = NetBackend::Tap {
            tap_name: "bgr-tap0".into(),
        };
        let args = strings(&qemu_args(&spec).unwrap());
        let joined = args.join(" ");
        assert!(joined.contains("-accel kvm -cpu host -smp 2 "), "{joined}");
        assert!(!joined.contains("-initrd"));
        assert!(joined.contains(
            "-drive if=none,id=work,file=/var/lib/banger/vms/0f3a9c/work.ext4,format=raw,readonly=on -device virtio-blk-device,drive=work"
        ));
        assert!(joined.contains(
            "-netdev tap,id=net0,ifname=bgr-tap0,script=no,downscript=no -device virtio-net-device,netdev=net0 -qmp"
        ));
    }

    #[test]
    fn file_memory_and_detached_nics() {
        let mut spec = sample();
        spec.memory = MemoryBacking::File {
            path: "/tmp/snap,1/ram".into(),
            shared: true,
        };
        spec.net[0].backend = NetBackend::Detached;
        spec.net.push(crate::spec::NetInterface {
            id: "net1".into(),
            mac: None,
            backend: NetBackend::Detached,
        });
        let joined = strings(&qemu_args(&spec).unwrap()).join(" ");
        assert!(
            joined.contains(
                "-M microvm,acpi=on,rtc=on,memory-backend=mem -accel tcg -cpu max -smp 1 -m 1024M \
                 -object memory-backend-file,id=mem,size=1024M,mem-path=/tmp/snap,,1/ram,share=on -nodefaults"
            ),
            "{joined}"
        );
        assert!(
            joined.contains(
                "-netdev hubport,id=net0,hubid=0 -device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56 \
                 -netdev hubport,id=net1,hubid=1 -device virtio-net-device,netdev=net1 -qmp"
            ),
            "{joined}"
        );
        spec.memory = MemoryBacking::File {
            path: "/tmp/ram".into(),
            shared: false,
        };
        let joined = strings(&qemu_args(&spec).unwrap()).join(" ");
        assert!(
            joined.contains("memory-backend-file,id=mem,size=1024M,mem-path=/tmp/ram,share=off"),
            "{joined}"
        );
    }

    #[test]
    fn restricted_user_and_stream_nics() {
        let mut spec = sample();
        if let NetBackend::User { restrict, .. } = &mut spec.net[0].backend {
            *restrict = true;
        }
        let joined = strings(&qemu_args(&spec).unwrap()).join(" ");
        assert!(
            joined.contains("-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,"),
            "{joined}"
        );
    }

    #[test]
    fn the_probe_has_no_memory_backend() {
        let args = strings(&machine_args(Accel::Kvm, 1, 512, None, Path::new("/c.log")));
        assert_eq!(args[..2], ["-M", "microvm,acpi=on,rtc=on"]);
        assert!(!args.iter().any(|a| a == "-object"), "{args:?}");
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let mut spec = sample();
        spec.vm_dir = "/tmp/a,b".into();
        spec.console_log = "/tmp/a,b/console.log".into();
        spec.drives[1].path = "/tmp/a,b/root.qcow2".into();
        let args = strings(&qemu_args(&spec).unwrap());
        assert!(args.contains(&"file,id=console,path=/tmp/a,,b/console.log,append=on".into()));
        assert!(args.contains(&"if=none,id=root,file=/tmp/a,,b/root.qcow2,format=qcow2".into()));
        assert!(args.contains(&"unix:/tmp/a,,b/qmp.sock,server=on,wait=off".into()));
        // Not QemuOpts: passed verbatim.
        assert!(args.contains(&"/tmp/a,b/vmm.pid".into()));
    }
}
