use super::*;
use tempfile::TempDir;

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("banger.db")).unwrap();
    (dir, store)
}

fn kernel(name: &str) -> KernelRecord {
    KernelRecord {
        id: format!("k-{name}"),
        name: name.into(),
        origin: banger_proto::vm::KernelOrigin::Catalog {
            package: "linux-image-cloud-amd64".into(),
        },
        kernel_path: format!("/data/kernels/{name}/vmlinuz").into(),
        initrd_path: Some(format!("/data/kernels/{name}/initrd").into()),
        modules_dir: None,
        version: Some("6.1.0-40-cloud-amd64".into()),
        sha256: None,
        created_at_ms: 1,
    }
}

fn image(name: &str) -> ImageRecord {
    ImageRecord {
        id: format!("i-{name}"),
        name: name.into(),
        source: "debian:bookworm".into(),
        rootfs_path: format!("/data/images/{name}/rootfs.ext4").into(),
        work_seed_path: Some(format!("/data/images/{name}/work.ext4").into()),
        fingerprint: Some("sha256:abc".into()),
        size_bytes: 1 << 30,
        managed: true,
        created_at_ms: 2,
        has_agent: true,
        recipe: None,
        replaced_by: None,
        origin: Default::default(),
        config: None,
    }
}

fn vm(name: &str, image: &str, kernel: &str) -> VmRecord {
    VmRecord {
        id: format!("v-{name}"),
        name: name.into(),
        image_id: format!("i-{image}"),
        kernel_id: format!("k-{kernel}"),
        vcpus: 1,
        memory_mib: 1024,
        disk_size_bytes: 8 << 30,
        network_mode: banger_proto::NetworkMode::User,
        egress: "allow=example.com,10.0.0.0/8,api.example.com:443"
            .parse()
            .unwrap(),
        backend: Some(banger_proto::Backend::Qemu),
        disk_strategy: Some(banger_proto::DiskStrategy::Qcow2),
        published_ports: vec!["8080:80".parse().unwrap(), "2222:22/udp".parse().unwrap()],
        state: VmState::Stopped,
        last_error: None,
        created_at_ms: 3,
        updated_at_ms: 3,
        base_snapshot_id: None,
        wait_for: Some(banger_proto::WaitFor::Agent),
        backend_reason: Some("--vmm qemu".into()),
    }
}

#[test]
fn fresh_database_is_migrated_to_latest_in_wal_mode() {
    let (_dir, store) = open();
    assert_eq!(
        store.schema_version().unwrap(),
        migrations::latest_version()
    );
    let mode: String = store
        .conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: bool = store
        .conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert!(fk);
    assert_eq!(store.counts().unwrap(), (0, 0, 0));
}

#[test]
fn reopening_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    Store::open(&path)
        .unwrap()
        .insert_kernel(&kernel("k1"))
        .unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.kernel("k1").unwrap(), kernel("k1"));
}

#[test]
fn newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let err = Store::open(&path).unwrap_err();
    match &err {
        StoreError::SchemaTooNew {
            found, supported, ..
        } => {
            assert_eq!(*found, 99);
            assert_eq!(*supported, migrations::latest_version());
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("newer than this banger supports"));
    let conn = Connection::open(&path).unwrap();
    let v: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'vms'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "a refused database must not be migrated");
}

#[test]
fn kernels_images_and_vms_round_trip() {
    let (_dir, store) = open();
    store.insert_kernel(&kernel("k1")).unwrap();
    store.insert_image(&image("base")).unwrap();
    let v = vm("dev", "base", "k1");
    store.insert_vm(&v).unwrap();

    assert_eq!(store.vm("dev").unwrap(), v);
    assert_eq!(store.vm("v-dev").unwrap(), v, "lookup by id");
    assert_eq!(store.image("base").unwrap(), image("base"));
    assert_eq!(store.kernels().unwrap(), vec![kernel("k1")]);
    assert_eq!(store.counts().unwrap(), (1, 1, 1));

    let mut changed = v.clone();
    changed.state = VmState::Error;
    changed.last_error = Some("boom".into());
    changed.vcpus = 2;
    changed.published_ports.clear();
    changed.updated_at_ms = 9;
    store.update_vm(&changed).unwrap();
    assert_eq!(store.vms().unwrap(), vec![changed]);

    assert_eq!(store.delete_vm("dev").unwrap().name, "dev");
    assert!(matches!(
        store.vm("dev"),
        Err(StoreError::NotFound { kind: "vm", .. })
    ));
}

#[test]
fn duplicate_names_are_conflicts() {
    let (_dir, store) = open();
    store.insert_kernel(&kernel("k1")).unwrap();
    let mut dup = kernel("k1");
    dup.id = "k-other".into();
    let err = store.insert_kernel(&dup).unwrap_err();
    assert!(matches!(
        err,
        StoreError::AlreadyExists { kind: "kernel", .. }
    ));
    assert_eq!(err.to_string(), "kernel \"k1\" already exists");
}

#[test]
fn a_vm_must_refer_to_existing_image_and_kernel() {
    let (_dir, store) = open();
    store.insert_kernel(&kernel("k1")).unwrap();
    let err = store.insert_vm(&vm("dev", "nope", "k1")).unwrap_err();
    assert!(
        matches!(err, StoreError::MissingReference { .. }),
        "{err:?}"
    );
    assert_eq!(store.counts().unwrap(), (0, 0, 1));
}

#[test]
fn images_and_kernels_in_use_cannot_be_deleted() {
    let (_dir, store) = open();
    store.insert_kernel(&kernel("k1")).unwrap();
    store.insert_image(&image("base")).unwrap();
    store.insert_vm(&vm("dev", "base", "k1")).unwrap();
    let err = store.delete_image("base").unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("vm dev"), "{err}");
    assert!(store.delete_kernel("k1").is_err());
    store.delete_vm("dev").unwrap();
    store.delete_image("base").unwrap();
    store.delete_kernel("k1").unwrap();
    assert_eq!(store.counts().unwrap(), (0, 0, 0));
}

#[test]
fn invalid_values_are_refused_by_the_schema() {
    let (_dir, store) = open();
    store.insert_kernel(&kernel("k1")).unwrap();
    store.insert_image(&image("base")).unwrap();
    let mut bad = vm("dev", "base", "k1");
    bad.vcpus = 0;
    assert!(store.insert_vm(&bad).is_err());
    assert_eq!(store.counts().unwrap().0, 0);
}

#[test]
fn unknown_state_reads_as_corrupt_not_as_a_guess() {
    let (_dir, store) = open();
    store.insert_kernel(&kernel("k1")).unwrap();
    store.insert_image(&image("base")).unwrap();
    store.insert_vm(&vm("dev", "base", "k1")).unwrap();
    store
        .conn
        .execute("UPDATE vms SET state = 'flying'", [])
        .unwrap();
    let err = store.vm("dev").unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { field: "state", .. }),
        "{err:?}"
    );
}

#[test]
fn image_origins_and_configs_round_trip() {
    use banger_proto::vm::{ImageConfig, ImageOrigin, ImagePort};
    let (_dir, store) = open();
    let pulled = ImageRecord {
        origin: ImageOrigin::Pulled {
            reference: "127.0.0.1:5000/busybox:1".into(),
            digest: "sha256:00ff".into(),
        },
        config: Some(ImageConfig {
            cmd: Some(vec!["sh".into()]),
            env: vec!["FOO=bar".into()],
            working_dir: Some("/srv".into()),
            exposed_ports: vec![ImagePort {
                port: 80,
                protocol: "tcp".into(),
            }],
            ..ImageConfig::default()
        }),
        ..image("pulled")
    };
    let promoted = ImageRecord {
        origin: ImageOrigin::Promoted { vm: "dev".into() },
        ..image("promoted")
    };
    for i in [&image("built"), &pulled, &promoted] {
        store.insert_image(i).unwrap();
        assert_eq!(&store.image(&i.name).unwrap(), i);
    }
    // Rows made before origins were recorded read as built.
    let origin: Option<String> = store
        .conn
        .query_row("SELECT origin FROM images WHERE name = 'built'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(origin, None);
    store
        .conn
        .execute(
            "UPDATE images SET origin = 'nope' WHERE name = 'pulled'",
            [],
        )
        .unwrap();
    let err = store.image("pulled").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                field: "origin",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn kernel_origins_round_trip_and_an_unknown_source_is_corrupt() {
    use banger_proto::vm::KernelOrigin;
    let (_dir, store) = open();
    let imported = KernelRecord {
        origin: KernelOrigin::Imported {
            path: "/home/u/vmlinux".into(),
        },
        initrd_path: None,
        version: None,
        ..kernel("mine")
    };
    for k in [&kernel("k1"), &imported] {
        store.insert_kernel(k).unwrap();
        assert_eq!(&store.kernel(&k.name).unwrap(), k);
    }
    let source: String = store
        .conn
        .query_row("SELECT source FROM kernels WHERE name = 'mine'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(source, "imported:/home/u/vmlinux");
    store
        .conn
        .execute(
            "UPDATE kernels SET source = 'ftp://x' WHERE name = 'k1'",
            [],
        )
        .unwrap();
    let err = store.kernels().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                kind: "kernel",
                field: "source",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_vm_without_a_recorded_wait_reads_as_none_and_a_bad_one_as_corrupt() {
    let (_dir, store) = open();
    store.insert_kernel(&kernel("k1")).unwrap();
    store.insert_image(&image("base")).unwrap();
    let old = VmRecord {
        wait_for: None,
        backend_reason: None,
        ..vm("old", "base", "k1")
    };
    store.insert_vm(&old).unwrap();
    assert_eq!(store.vm("old").unwrap().wait_for, None);
    let mut none = vm("quiet", "base", "k1");
    none.wait_for = Some(banger_proto::WaitFor::None);
    store.insert_vm(&none).unwrap();
    assert_eq!(store.vm("quiet").unwrap(), none);
    store
        .conn
        .execute("UPDATE vms SET wait_for = 'forever' WHERE name = 'old'", [])
        .unwrap();
    let err = store.vm("old").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                field: "wait_for",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_version_7_database_gains_wait_for_and_keeps_its_vms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        migrations::MIGRATIONS.to_version(&mut conn, 7).unwrap();
        conn.execute_batch(
            "INSERT INTO kernels (id, name, source, kernel_path, created_at_ms)
                 VALUES ('k-1', 'debian-cloud', 'catalog:linux-image-cloud-amd64', '/k', 1);
             INSERT INTO images (id, name, source, rootfs_path, size_bytes, created_at_ms)
                 VALUES ('i-1', 'default', 'debian:bookworm', '/r', 1, 1);
             INSERT INTO vms (id, name, image_id, kernel_id, vcpus, memory_mib, disk_size_bytes,
                              network_mode, state, created_at_ms, updated_at_ms)
                 VALUES ('v-1', 'dev', 'i-1', 'k-1', 1, 512, 1073741824, 'user', 'stopped', 1, 1);",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 9);
    let vm = store.vm("dev").unwrap();
    assert_eq!(vm.wait_for, None);
    assert_eq!(
        store.kernel("debian-cloud").unwrap().origin,
        banger_proto::vm::KernelOrigin::Catalog {
            package: "linux-image-cloud-amd64".into()
        }
    );
}

#[test]
fn two_connections_share_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    let a = Store::open(&path).unwrap();
    let b = Store::open(&path).unwrap();
    a.insert_kernel(&kernel("k1")).unwrap();
    assert_eq!(b.kernel("k1").unwrap().name, "k1");
}

fn hosts(n: u32) -> impl Iterator<Item = String> {
    (2..2 + n).map(|i| format!("10.77.0.{i}"))
}

#[test]
fn leases_are_unique_stable_and_freed_with_the_vm() {
    let (_dir, store) = open();
    store.insert_kernel(&kernel("k1")).unwrap();
    store.insert_image(&image("base")).unwrap();
    for name in ["a", "b", "c"] {
        store.insert_vm(&vm(name, "base", "k1")).unwrap();
    }
    let subnet = "10.77.0.0/24";
    let a = store.lease_address("v-a", subnet, hosts(2), 1).unwrap();
    let b = store.lease_address("v-b", subnet, hosts(2), 1).unwrap();
    assert_eq!(a.as_deref(), Some("10.77.0.2"));
    assert_eq!(b.as_deref(), Some("10.77.0.3"));
    // A VM keeps its lease; a full range says so instead of doubling up.
    assert_eq!(store.lease_address("v-a", subnet, hosts(2), 2).unwrap(), a);
    assert_eq!(
        store.lease_address("v-c", subnet, hosts(2), 2).unwrap(),
        None
    );
    assert_eq!(store.lease_of("v-b").unwrap(), b);
    // Freed by release and by deleting the VM; then reused.
    store.release_address("v-a").unwrap();
    store.release_address("v-a").unwrap();
    store.delete_vm("b").unwrap();
    assert!(store.leases().unwrap().is_empty());
    let c = store.lease_address("v-c", subnet, hosts(2), 3).unwrap();
    assert_eq!(c.as_deref(), Some("10.77.0.2"));
    // A changed subnet replaces the old lease.
    let moved = store
        .lease_address(
            "v-c",
            "10.78.0.0/24",
            (2..4).map(|i| format!("10.78.0.{i}")),
            4,
        )
        .unwrap();
    assert_eq!(moved.as_deref(), Some("10.78.0.2"));
    assert_eq!(
        store.leases().unwrap(),
        vec![("v-c".into(), "10.78.0.2".into())]
    );
}

#[test]
fn a_lease_needs_an_existing_vm() {
    let (_dir, store) = open();
    assert!(
        store
            .lease_address("v-ghost", "10.77.0.0/24", hosts(3), 1)
            .is_err()
    );
}

fn snapshot(name: &str, vm: &VmRecord, parent: Option<&str>) -> SnapshotRecord {
    SnapshotRecord {
        id: format!("s-{name}"),
        name: name.into(),
        kind: banger_proto::SnapshotKind::User,
        vm_id: vm.id.clone(),
        vm_name: vm.name.clone(),
        parent_id: parent.map(Into::into),
        image_id: vm.image_id.clone(),
        kernel_id: vm.kernel_id.clone(),
        vcpus: 1,
        memory_mib: 1024,
        disk_size_bytes: 1 << 30,
        network_mode: banger_proto::NetworkMode::User,
        has_agent: true,
        dir: format!("/data/snapshots/s-{name}").into(),
        vmm_backend: Backend::Qemu,
        vmm_version: "7.2.22".into(),
        machine: "microvm".into(),
        accel: banger_proto::Accel::Tcg,
        template_key: None,
        size_bytes: 42,
        created_at_ms: 5,
    }
}

#[test]
fn snapshots_round_trip_and_refuse_delete_while_needed() {
    let (_d, store) = open();
    store.insert_kernel(&kernel("k")).unwrap();
    store.insert_image(&image("img")).unwrap();
    let src = vm("src", "img", "k");
    store.insert_vm(&src).unwrap();
    let base = snapshot("base", &src, None);
    store.insert_snapshot(&base).unwrap();
    assert_eq!(store.snapshot("base").unwrap(), base);
    assert_eq!(store.snapshot("s-base").unwrap(), base);
    let child = snapshot("child", &src, Some("s-base"));
    store.insert_snapshot(&child).unwrap();
    let mut fork = vm("fork", "img", "k");
    fork.base_snapshot_id = Some("s-base".into());
    store.insert_vm(&fork).unwrap();
    assert_eq!(
        store.vm("fork").unwrap().base_snapshot_id.as_deref(),
        Some("s-base")
    );
    assert_eq!(
        store.snapshot_users("s-base").unwrap(),
        ["snapshot child", "vm fork"]
    );
    let err = store.delete_snapshot("base").unwrap_err();
    assert_eq!(
        err.to_string(),
        "snapshot \"base\" is in use by snapshot child, vm fork"
    );
    // The image is needed by the snapshots too.
    let err = store.delete_image("img").unwrap_err();
    assert!(err.to_string().contains("snapshot base"), "{err}");
    store.delete_snapshot("child").unwrap();
    store.delete_vm("fork").unwrap();
    assert!(store.snapshot_users("s-base").unwrap().is_empty());
    assert_eq!(store.delete_snapshot("s-base").unwrap().name, "base");
    assert!(matches!(
        store.snapshot("base"),
        Err(StoreError::NotFound {
            kind: "snapshot",
            ..
        })
    ));
    // A VM cannot name a snapshot that does not exist.
    let mut orphan = vm("orphan", "img", "k");
    orphan.base_snapshot_id = Some("s-gone".into());
    assert!(matches!(
        store.insert_vm(&orphan),
        Err(StoreError::MissingReference { .. })
    ));
}

#[test]
fn newest_template_by_key() {
    let (_d, store) = open();
    store.insert_kernel(&kernel("k")).unwrap();
    store.insert_image(&image("img")).unwrap();
    let src = vm("src", "img", "k");
    assert_eq!(store.template("key-1").unwrap(), None);
    let mut old = snapshot("t-old", &src, None);
    old.kind = banger_proto::SnapshotKind::Template;
    old.template_key = Some("key-1".into());
    let mut new = old.clone();
    new.id = "s-t-new".into();
    new.name = "t-new".into();
    new.created_at_ms = 9;
    store.insert_snapshot(&old).unwrap();
    store.insert_snapshot(&new).unwrap();
    assert_eq!(store.template("key-1").unwrap().unwrap().name, "t-new");
    assert_eq!(store.template("key-2").unwrap(), None);
    assert_eq!(store.snapshots().unwrap().len(), 2);
}

#[test]
fn a_rebuilt_image_replaces_the_old_row_which_stays_for_its_vms() {
    let (_d, store) = open();
    store.insert_kernel(&kernel("k")).unwrap();
    store.insert_image(&image("default")).unwrap();
    store.insert_vm(&vm("old", "default", "k")).unwrap();
    let new = ImageRecord {
        id: "i-new".into(),
        recipe: Some("{}".into()),
        ..image("default")
    };
    store.replace_image("i-default", &new).unwrap();
    assert_eq!(store.image("default").unwrap(), new);
    let old = store.image("i-default").unwrap();
    assert_eq!(old.name, "default@i-default");
    assert_eq!(old.replaced_by.as_deref(), Some("i-new"));
    // The old VM still refers to the old row, which its disk needs.
    assert_eq!(store.vm("old").unwrap().image_id, "i-default");
    let err = store.delete_image("i-default").unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    // A replaced row is not replaced twice; a failed replace changes nothing.
    let again = ImageRecord {
        id: "i-newer".into(),
        ..new.clone()
    };
    let err = store.replace_image("i-default", &again).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(store.images().unwrap().len(), 2);
    store.delete_vm("old").unwrap();
    store.delete_image("i-default").unwrap();
    assert_eq!(store.images().unwrap(), vec![new]);
}

#[test]
fn a_write_lock_held_elsewhere_is_a_clear_error_after_the_busy_timeout() {
    let (dir, store) = open();
    let path = dir.path().join("banger.db");
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let e = store
        .insert_kernel(&kernel("k"))
        .map_err(|e| e.in_db(&path))
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("locked by another process"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        took >= BUSY_TIMEOUT && took < BUSY_TIMEOUT + Duration::from_secs(3),
        "failed after {took:?}"
    );
    // Reads go on meanwhile (WAL), and writes once the lock is gone.
    assert!(store.kernels().unwrap().is_empty());
    other.execute_batch("ROLLBACK").unwrap();
    store.insert_kernel(&kernel("k")).unwrap();
}

#[test]
fn a_file_that_is_not_a_database_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    std::fs::write(&path, vec![0x5a_u8; 64 * 1024]).unwrap();
    let e = Store::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::Damaged { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("is damaged (file is not a database); move it aside"),
        "{text}"
    );
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        vec![0x5a_u8; 64 * 1024],
        "left untouched"
    );
}

#[test]
fn integrity_check_finds_a_damaged_page() {
    let (dir, store) = open();
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    for i in 0..200 {
        store.insert_kernel(&kernel(&format!("k{i}"))).unwrap();
    }
    drop(store);
    let path = dir.path().join("banger.db");
    // Fold the WAL into the file, then overwrite a page in the middle.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "journal_mode", "DELETE").unwrap();
    drop(c);
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 4 * page, "{} bytes", bytes.len());
    for b in &mut bytes[2 * page + 100..3 * page] {
        *b = 0xa5;
    }
    std::fs::write(&path, bytes).unwrap();
    let problems = Store::open(&path)
        .and_then(|s| s.integrity_problems())
        .map_err(|e| e.in_db(&path));
    match problems {
        Ok(p) => assert!(!p.is_empty(), "a damaged page goes unnoticed"),
        Err(e) => assert!(matches!(e, StoreError::Damaged { .. }), "{e:?}"),
    }
}

/// The observer hears of every record written, after the write, and of
/// nothing that failed.
#[test]
fn the_observer_hears_each_successful_write() {
    use std::sync::{Arc, Mutex};
    let (_dir, mut store) = open();
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&heard);
    store.observe(Box::new(move |c: ObjectChange| {
        let state = c.vm_state.map(|s| format!(" {s}")).unwrap_or_default();
        sink.lock()
            .unwrap()
            .push(format!("{} {} {}{state}", c.object, c.name, c.action));
    }));
    store.insert_kernel(&kernel("k1")).unwrap();
    store.insert_image(&image("base")).unwrap();
    let mut dev = vm("dev", "base", "k1");
    store.insert_vm(&dev).unwrap();
    dev.state = VmState::Running;
    store.update_vm(&dev).unwrap();
    // Refused writes are not heard.
    assert!(store.delete_image("base").is_err());
    assert!(store.insert_vm(&vm("dev", "base", "k1")).is_err());
    store.delete_vm("dev").unwrap();
    assert_eq!(
        *heard.lock().unwrap(),
        [
            "kernel k1 created",
            "image base created",
            "vm dev created stopped",
            "vm dev updated running",
            "vm dev deleted",
        ]
    );
}
