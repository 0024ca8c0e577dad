//! Device-mapper snapshot root disks (`banger_daemon::disks::dm`) through a
//! real `banger-helper` (as root, in a throwaway namespace): where the
//! kernel has device-mapper, a snapshot is made, written through and
//! removed, leaving the image untouched and the writes in the VM's store;
//! here (no device-mapper) the attach fails with an error naming the
//! missing modules and leaves no loop device behind. Either way a failed
//! attach rolls back its loop devices, and a detach of what is gone is
//! fine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

#[path = "common/helper.rs"]
mod helper_env;

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_daemon::disks::dm::{self, DmAttachment, DmError, DmStep, LoopDevice};
use banger_daemon::disks::{RootStrategy, make_root_disk};
use banger_daemon::helper_client::HelperClient;
use helper_env::HelperEnv;

const MIB: u64 = 1 << 20;
const VM_ID: &str = "0a1b2c3d4e5f";

/// The loop devices attached to a file under `root`, from sysfs.
fn loops_under(root: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let text = text.trim_end();
        let file = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(text));
        if file.starts_with(root) {
            found.push((format!("/dev/{name}"), file));
        }
    }
    found
}

/// Removes, on drop, any device-mapper device and loop device the test
/// left (after a failed assertion).
struct Leftovers {
    root: PathBuf,
    dm_name: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if Path::new(&format!("/dev/mapper/{}", self.dm_name)).exists() {
            let _ = Command::new("dmsetup")
                .args(["remove", &self.dm_name])
                .status();
        }
        for (device, _) in loops_under(&self.root) {
            let _ = Command::new("losetup").args(["--detach", &device]).status();
        }
    }
}

fn pattern(len: u64, byte: u8) -> Vec<u8> {
    (0..len).map(|i| byte ^ (i % 251) as u8).collect()
}

fn read_at(path: &Path, at: u64, len: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn dm_snapshot_root_disk_through_the_helper() {
    if helper_env::skip("dm_snapshot_root_disk_through_the_helper") {
        return;
    }
    if !Path::new("/dev/loop-control").exists() || !helper_env::tool_exists("losetup") {
        eprintln!("skipping dm_snapshot_root_disk_through_the_helper: no loop devices");
        return;
    }
    let env = HelperEnv::start(44, vec![0]);
    let _leftovers = Leftovers {
        root: env.root.clone(),
        dm_name: dm::device_name(VM_ID).unwrap(),
    };
    let image_dir = env.data.join("images/default");
    let vm_dir = env.data.join(format!("vms/{VM_ID}"));
    std::fs::create_dir_all(&image_dir).unwrap();
    std::fs::create_dir_all(&vm_dir).unwrap();
    let image = image_dir.join("rootfs.ext4");
    let original = pattern(MIB, 0x5a);
    {
        let mut f = std::fs::File::create(&image).unwrap();
        f.set_len(64 * MIB).unwrap();
        f.write_all(&original).unwrap();
    }
    let cow = make_root_disk(RootStrategy::DmSnapshot, &image, &vm_dir).unwrap();
    let helper = HelperClient::new(&env.socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let has_dm = Path::new("/dev/mapper/control").exists();
    assert_eq!(
        rt.block_on(dm::available(&helper, &env.op("dm-probe"))),
        has_dm,
        "the helper's ping tells whether device-mapper is there"
    );

    // A failed attach undoes its loop devices: a store outside the data
    // dirs is refused after the image's loop device was made.
    let outside = env.root.join("outside.cow");
    std::fs::File::create(&outside)
        .unwrap()
        .set_len(cow.metadata().unwrap().len())
        .unwrap();
    let err = rt
        .block_on(dm::attach(
            &helper,
            &env.op("dm-attach"),
            VM_ID,
            &image,
            &outside,
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            DmError::Helper {
                step: DmStep::AttachCow,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(loops_under(&env.root), vec![], "rolled back");

    let attach = || {
        rt.block_on(dm::attach(
            &helper,
            &env.op("dm-attach"),
            VM_ID,
            &image,
            &cow,
        ))
    };
    if !has_dm {
        eprintln!(
            "dm_snapshot_root_disk_through_the_helper: the snapshot itself cannot be made here: this kernel has no device-mapper (no /dev/mapper/control); checking the error and the rollback instead"
        );
        let err = attach().unwrap_err();
        assert!(matches!(err, DmError::Unavailable { .. }), "{err:?}");
        let text = banger_proto::error_chain(&err);
        eprintln!("dm_snapshot_root_disk_through_the_helper: attach said: {text}");
        for word in [
            "dm_mod",
            "dm_snapshot",
            "modprobe dm_snapshot",
            "op-dm-attach",
        ] {
            assert!(text.contains(word), "{word} missing from: {text}");
        }
        assert_eq!(
            text.matches("helper refused").count(),
            1,
            "each cause once: {text}"
        );
        assert_eq!(loops_under(&env.root), vec![], "no loop device left");
        // A detach of what is gone (here: never made) is fine.
        let gone = DmAttachment {
            name: dm::device_name(VM_ID).unwrap(),
            device: PathBuf::from(format!("/dev/mapper/banger-{VM_ID}")),
            origin: LoopDevice {
                device: "/dev/loop9999".into(),
                file: image.clone(),
            },
            cow: LoopDevice {
                device: "/dev/loop9998".into(),
                file: cow.clone(),
            },
        };
        rt.block_on(dm::detach(&helper, &env.op("dm-detach"), &gone))
            .unwrap();
        return;
    }

    let attached = attach().unwrap();
    assert_eq!(
        attached.device,
        PathBuf::from(format!("/dev/mapper/banger-{VM_ID}"))
    );
    assert_eq!(loops_under(&env.root).len(), 2);
    let node = std::fs::metadata(&attached.device).unwrap();
    assert_eq!(
        node.uid(),
        rustix::process::getuid().as_raw(),
        "the caller's"
    );
    // Write through the snapshot: the image stays as it was, the store
    // takes the write, and it outlives a detach and a new attach.
    let written = pattern(MIB, 0xc3);
    {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&attached.device)
            .unwrap();
        assert_eq!(
            read_at(&attached.device, 0, MIB),
            original,
            "reads the image"
        );
        dev.write_all_at(&written, 0).unwrap();
        dev.sync_all().unwrap();
    }
    assert_eq!(read_at(&attached.device, 0, MIB), written);
    assert_eq!(read_at(&image, 0, MIB), original, "image unchanged");
    assert!(
        cow.metadata().unwrap().blocks() > 0,
        "the store took the write"
    );
    rt.block_on(dm::detach(&helper, &env.op("dm-detach"), &attached))
        .unwrap();
    assert!(!attached.device.exists());
    assert_eq!(loops_under(&env.root), vec![], "loop devices detached");
    let again = attach().unwrap();
    assert_eq!(read_at(&again.device, 0, MIB), written, "persistent");
    rt.block_on(dm::detach(&helper, &env.op("dm-detach"), &again))
        .unwrap();
    // Twice is fine.
    rt.block_on(dm::detach(&helper, &env.op("dm-detach"), &again))
        .unwrap();
    assert_eq!(loops_under(&env.root), vec![]);
    assert_eq!(read_at(&image, 0, MIB), original, "image unchanged");
}
