//! Embedded, numbered schema migrations. Append only: a released migration
//! is never edited, a change is a new entry. `PRAGMA user_version` holds the
//! number applied (rusqlite_migration's convention).

use rusqlite_migration::{M, Migrations};

const STEPS: &[M<'static>] = &[
    // 1: durable intent of kernels, images and VMs.
    M::up(
        "CREATE TABLE kernels (
            id            TEXT PRIMARY KEY,
            name          TEXT NOT NULL UNIQUE,
            source        TEXT NOT NULL,
            kernel_path   TEXT NOT NULL,
            initrd_path   TEXT,
            modules_dir   TEXT,
            version       TEXT,
            sha256        TEXT,
            created_at_ms INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE images (
            id             TEXT PRIMARY KEY,
            name           TEXT NOT NULL UNIQUE,
            source         TEXT NOT NULL,
            rootfs_path    TEXT NOT NULL,
            work_seed_path TEXT,
            fingerprint    TEXT,
            size_bytes     INTEGER NOT NULL CHECK (size_bytes >= 0),
            managed        INTEGER NOT NULL DEFAULT 1,
            created_at_ms  INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE vms (
            id              TEXT PRIMARY KEY,
            name            TEXT NOT NULL UNIQUE,
            image_id        TEXT NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
            kernel_id       TEXT NOT NULL REFERENCES kernels(id) ON DELETE RESTRICT,
            vcpus           INTEGER NOT NULL CHECK (vcpus > 0),
            memory_mib      INTEGER NOT NULL CHECK (memory_mib > 0),
            disk_size_bytes INTEGER NOT NULL CHECK (disk_size_bytes > 0),
            network_mode    TEXT NOT NULL,
            backend         TEXT,
            disk_strategy   TEXT,
            published_ports TEXT NOT NULL DEFAULT '',
            state           TEXT NOT NULL,
            last_error      TEXT,
            created_at_ms   INTEGER NOT NULL,
            updated_at_ms   INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX vms_image ON vms(image_id);
        CREATE INDEX vms_kernel ON vms(kernel_id);",
    ),
    // 2: bridged networking. A VM's address is leased for its whole life
    // (so its DNS name keeps pointing at it across restarts) and freed with
    // it; one address is never leased twice.
    M::up(
        "CREATE TABLE ip_leases (
            address       TEXT PRIMARY KEY,
            vm_id         TEXT NOT NULL UNIQUE REFERENCES vms(id) ON DELETE CASCADE,
            subnet        TEXT NOT NULL,
            created_at_ms INTEGER NOT NULL
        ) STRICT;",
    ),
    // 3: images that carry the guest agent (older ones do not, and their
    // VMs boot without waiting for it).
    M::up("ALTER TABLE images ADD COLUMN has_agent INTEGER NOT NULL DEFAULT 0;"),
    // 4: snapshots (docs/snapshots.md). A snapshot's disk layers may sit on
    // its parent's, and a VM restored from one sits on it: both refuse
    // the delete of what they need.
    M::up(
        "CREATE TABLE snapshots (
            id              TEXT PRIMARY KEY,
            name            TEXT NOT NULL UNIQUE,
            kind            TEXT NOT NULL,
            vm_id           TEXT NOT NULL,
            vm_name         TEXT NOT NULL,
            parent_id       TEXT REFERENCES snapshots(id) ON DELETE RESTRICT,
            image_id        TEXT NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
            kernel_id       TEXT NOT NULL REFERENCES kernels(id) ON DELETE RESTRICT,
            vcpus           INTEGER NOT NULL CHECK (vcpus > 0),
            memory_mib      INTEGER NOT NULL CHECK (memory_mib > 0),
            disk_size_bytes INTEGER NOT NULL CHECK (disk_size_bytes > 0),
            network_mode    TEXT NOT NULL,
            has_agent       INTEGER NOT NULL,
            dir             TEXT NOT NULL,
            vmm_backend     TEXT NOT NULL,
            vmm_version     TEXT NOT NULL,
            machine         TEXT NOT NULL,
            accel           TEXT NOT NULL,
            template_key    TEXT,
            size_bytes      INTEGER NOT NULL CHECK (size_bytes >= 0),
            created_at_ms   INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX snapshots_parent ON snapshots(parent_id);
        CREATE INDEX snapshots_template ON snapshots(template_key);
        ALTER TABLE vms ADD COLUMN base_snapshot_id TEXT
            REFERENCES snapshots(id) ON DELETE RESTRICT;
        CREATE INDEX vms_base_snapshot ON vms(base_snapshot_id);",
    ),
    // 5: what a managed image was built from (so it can be rebuilt when
    // stale, and say why), and the rebuild that replaced it (the old row
    // stays while VMs use its files).
    M::up(
        "ALTER TABLE images ADD COLUMN recipe TEXT;
        ALTER TABLE images ADD COLUMN replaced_by TEXT;",
    ),
    // 6: what each VM may reach (`internet`, `none`, `open`,
    // `allow=LIST`: proto's Egress in its text form); VMs made before it
    // get the default.
    M::up("ALTER TABLE vms ADD COLUMN egress TEXT NOT NULL DEFAULT 'internet';"),
    // 7: where an image came from (proto's ImageOrigin as JSON; NULL:
    // built, as every image before it was) and a pulled image's config
    // (proto's ImageConfig as JSON: entrypoint, cmd, env, workdir, user,
    // exposed ports).
    M::up(
        "ALTER TABLE images ADD COLUMN origin TEXT;
        ALTER TABLE images ADD COLUMN config TEXT;",
    ),
    // 8: what a VM's starts wait for once its VMM runs (proto's WaitFor:
    // `none`, `agent`, `ssh`); NULL, for VMs made before it: what the
    // image supports, as they always waited. Kernels' `source` column now
    // also holds `imported:PATH` (kernel import) beside `catalog:PACKAGE`:
    // no schema change.
    M::up("ALTER TABLE vms ADD COLUMN wait_for TEXT;"),
    // 9: why the VM's VMM was chosen (`--vmm firecracker`, `firecracker
    // is not installed`, ...), for `vm show`; NULL for VMs made before it.
    M::up("ALTER TABLE vms ADD COLUMN backend_reason TEXT;"),
];

pub(crate) const MIGRATIONS: Migrations<'static> = Migrations::from_slice(STEPS);

/// The schema version this binary migrates to.
pub(crate) fn latest_version() -> u32 {
    // STEPS is a short const slice; its length always fits in u32.
    STEPS.len() as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::MIGRATIONS.validate().unwrap();
    }
}
