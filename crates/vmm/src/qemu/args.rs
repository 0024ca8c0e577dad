//! The QEMU argv for a [`VmSpec`]: pure, unit-tested, and shared in part
//! (machine, console and boot arguments) with the KVM probe.

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::VmFiles;
use super::check::check_spec;
use crate::error::VmmError;
use crate::spec::{Accel, AgentChannel, Drive, NetBackend, PortForward, VmSpec};

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

/// The machine, CPU and console part shared by VMs and the KVM probe.
pub(crate) fn machine_args(
    accel: Accel,
    vcpus: u32,
    memory_mib: u32,
    console_log: &Path,
) -> Vec<OsString> {
    let cpu = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("-M");
    push("microvm,acpi=on,rtc=on");
    push("-accel");
    push(accel.as_str());
    push("-cpu");
    push(cpu);
    push("-smp");
    push(&vcpus.to_string());
    push("-m");
    push(&format!("{memory_mib}M"));
    for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
        push(flag);
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
    for nic in &spec.net {
        let netdev = match &nic.backend {
            NetBackend::User { forwards } => {
                let mut s = format!("user,id={}", nic.id);
                for f in forwards {
                    s.push_str(",hostfwd=");
                    s.push_str(&hostfwd_rule(f));
                }
                s
            }
            NetBackend::Tap { tap_name } => {
                format!(
                    "tap,id={},ifname={tap_name},script=no,downscript=no",
                    nic.id
                )
            }
        };
        let mut device = format!("virtio-net-device,netdev={}", nic.id);
        if let Some(mac) = &nic.mac {
            device.push_str(",mac=");
            device.push_str(mac);
        }
        a.extend([
            "-netdev".into(),
            netdev.into(),
            "-device".into(),
            device.into(),
        ]);
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
            "microvm,acpi=on,rtc=on",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "1024M",
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
