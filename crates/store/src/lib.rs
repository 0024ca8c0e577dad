//! banger's durable state in SQLite: what the user asked for (VMs, images,
//! kernels), never what is only momentarily true about a running VM. Pids,
//! TAP names, sockets and forwarded ports live in the daemon's memory and a
//! per-VM `handles.json` (docs/capabilities.md, "State"), so a crash never leaves a stale pid in
//! the database to be trusted.
//!
//! The database runs in WAL mode with a busy timeout and foreign keys on.
//! Migrations are embedded and numbered (`migrations.rs`); a database whose
//! schema is newer than this binary is refused instead of being touched.

mod migrations;
mod records;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

pub use records::{ImageRecord, KernelRecord, SnapshotRecord, VmRecord, VmState};

use banger_proto::events::ObjectChange;
use banger_proto::{Backend, DiskStrategy, ObjectAction, ObjectKind, PublishSpec, WaitFor};

fn join_ports(ports: &[PublishSpec]) -> String {
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// How long a writer waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this banger supports ({supported}); upgrade banger or move the database aside"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("migrate database {path}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name:?} is in use by {users}")]
    InUse {
        kind: &'static str,
        name: String,
        users: String,
    },
    #[error("{kind} {name:?} refers to a missing {missing}")]
    MissingReference {
        kind: &'static str,
        name: String,
        missing: &'static str,
    },
    #[error("bad {field} stored for {kind} {name:?}: {value:?}")]
    Corrupt {
        kind: &'static str,
        name: String,
        field: &'static str,
        value: String,
    },
    #[error("database query failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database is closed (the daemon is shutting down)")]
    Closed,
    /// Another process held a lock on the database for longer than the
    /// busy timeout (`SQLITE_BUSY`).
    #[error(
        "database {path} is locked by another process (waited {waited_s} s); close whatever else has it open (a sqlite3 shell, a backup tool) and try again"
    )]
    Locked { path: PathBuf, waited_s: u64 },
    /// The file is not a database, or SQLite found it corrupt.
    /// (SQLite's own error repeats its message as its source: only the
    /// message is kept, so a chain names it once.)
    #[error(
        "database {path} is damaged ({detail}); move it aside and restart the daemon (a new, empty database is made: VMs, images and kernels must be added again) or restore it from a backup"
    )]
    Damaged { path: PathBuf, detail: String },
}

/// What SQLite said, for [`StoreError::in_db`].
enum Failure {
    Busy,
    Damaged,
    Other,
}

fn failure(e: &rusqlite::Error) -> Failure {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => Failure::Busy,
        Some(C::DatabaseCorrupt | C::NotADatabase) => Failure::Damaged,
        _ => Failure::Other,
    }
}

impl StoreError {
    /// Names the database file in a failure that is about the file as a
    /// whole (locked by another process, damaged) rather than a query.
    pub fn in_db(self, path: &Path) -> Self {
        let e = match self {
            StoreError::Sqlite(e) | StoreError::Open { source: e, .. } => e,
            StoreError::Migrate {
                source: rusqlite_migration::Error::RusqliteError { query, err },
                path,
            } => {
                return match failure(&err) {
                    Failure::Other => StoreError::Migrate {
                        path,
                        source: rusqlite_migration::Error::RusqliteError { query, err },
                    },
                    _ => StoreError::Sqlite(err).in_db(&path),
                };
            }
            other => return other,
        };
        match failure(&e) {
            Failure::Busy => StoreError::Locked {
                path: path.to_owned(),
                waited_s: BUSY_TIMEOUT.as_secs(),
            },
            Failure::Damaged => StoreError::Damaged {
                path: path.to_owned(),
                detail: match &e {
                    rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
                    other => other.to_string(),
                },
            },
            Failure::Other => StoreError::Sqlite(e),
        }
    }

    /// True for [`StoreError::Locked`] and [`StoreError::Damaged`].
    pub fn is_about_the_file(&self) -> bool {
        matches!(self, StoreError::Locked { .. } | StoreError::Damaged { .. })
    }
}

/// One connection to the state database.
///
/// `Connection` is `Send` but not `Sync`: the daemon keeps a `Store` behind
/// a mutex and calls it from blocking tasks.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    observer: ObserverSlot,
}

/// Told of every VM, image, kernel and snapshot row written, after the
/// write succeeded (the daemon's event stream, crates/daemon/src/events.rs).
/// It runs on the writer's thread with the store borrowed: it must not
/// block or call back into the store.
pub type Observer = Box<dyn Fn(ObjectChange) + Send>;

#[derive(Default)]
struct ObserverSlot(Option<Observer>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(observer)"
        } else {
            "None"
        })
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    /// A database another process keeps locked past the busy timeout is
    /// [`StoreError::Locked`], a file that is not one or is corrupt
    /// [`StoreError::Damaged`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_unchecked(path).map_err(|e| match e {
            e @ (StoreError::Open { .. } | StoreError::Migrate { .. }) => match e.in_db(path) {
                e @ (StoreError::Locked { .. } | StoreError::Damaged { .. }) => e,
                StoreError::Sqlite(source) => StoreError::Open {
                    path: path.to_owned(),
                    source,
                },
                e => e,
            },
            e => e,
        })
    }

    fn open_unchecked(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;

        let found: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        let supported = migrations::latest_version();
        if found > supported {
            return Err(StoreError::SchemaTooNew {
                path: path.to_owned(),
                found,
                supported,
            });
        }
        migrations::MIGRATIONS
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            observer: ObserverSlot::default(),
        })
    }

    /// Sets the one observer of this store's writes (replacing any).
    pub fn observe(&mut self, observer: Observer) {
        self.observer = ObserverSlot(Some(observer));
    }

    fn changed(
        &self,
        object: ObjectKind,
        action: ObjectAction,
        id: &str,
        name: &str,
        vm_state: Option<VmState>,
    ) {
        if let Some(observer) = &self.observer.0 {
            observer(ObjectChange {
                object,
                action,
                id: id.to_owned(),
                name: name.to_owned(),
                vm_state,
            });
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SQLite's own check of the whole file (`PRAGMA integrity_check`):
    /// empty when it is sound, else the problems it lists (at most 20).
    pub fn integrity_problems(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check(20)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let lines = rows.collect::<Result<Vec<_>, _>>()?;
        Ok(lines.into_iter().filter(|l| l != "ok").collect())
    }

    /// The schema version the database is at (after migration: the latest).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Row counts of the three durable tables: (vms, images, kernels).
    pub fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        Ok(self.conn.query_row(
            "SELECT (SELECT count(*) FROM vms), (SELECT count(*) FROM images),
                    (SELECT count(*) FROM kernels)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    // ---- kernels -------------------------------------------------------

    pub fn insert_kernel(&self, k: &KernelRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO kernels (id, name, source, kernel_path, initrd_path, modules_dir,
                                      version, sha256, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    k.id,
                    k.name,
                    records::kernel_source(&k.origin),
                    path_str(&k.kernel_path),
                    k.initrd_path.as_deref().map(path_str),
                    k.modules_dir.as_deref().map(path_str),
                    k.version,
                    k.sha256,
                    k.created_at_ms,
                ],
            )
            .map_err(|e| classify(e, "kernel", &k.name))?;
        self.changed(
            ObjectKind::Kernel,
            ObjectAction::Created,
            &k.id,
            &k.name,
            None,
        );
        Ok(())
    }

    /// Looks a kernel up by name or id.
    pub fn kernel(&self, name_or_id: &str) -> Result<KernelRecord, StoreError> {
        self.find(KERNEL_SELECT, "kernel", name_or_id, KernelRecord::from_row)?
    }

    pub fn kernels(&self) -> Result<Vec<KernelRecord>, StoreError> {
        self.list(
            &format!("{KERNEL_SELECT} ORDER BY name"),
            KernelRecord::from_row,
        )?
        .into_iter()
        .collect()
    }

    pub fn delete_kernel(&self, name_or_id: &str) -> Result<KernelRecord, StoreError> {
        let k = self.kernel(name_or_id)?;
        self.delete_row("kernels", "kernel", &k.id, &k.name)?;
        self.changed(
            ObjectKind::Kernel,
            ObjectAction::Deleted,
            &k.id,
            &k.name,
            None,
        );
        Ok(k)
    }

    // ---- images --------------------------------------------------------

    pub fn insert_image(&self, i: &ImageRecord) -> Result<(), StoreError> {
        Self::insert_image_on(&self.conn, i)?;
        self.changed(
            ObjectKind::Image,
            ObjectAction::Created,
            &i.id,
            &i.name,
            None,
        );
        Ok(())
    }

    fn insert_image_on(conn: &Connection, i: &ImageRecord) -> Result<(), StoreError> {
        conn.execute(
            "INSERT INTO images (id, name, source, rootfs_path, work_seed_path, fingerprint,
                                     size_bytes, managed, created_at_ms, has_agent, recipe,
                                     replaced_by, origin, config)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                i.id,
                i.name,
                i.source,
                path_str(&i.rootfs_path),
                i.work_seed_path.as_deref().map(path_str),
                i.fingerprint,
                i.size_bytes,
                i.managed,
                i.created_at_ms,
                i.has_agent,
                i.recipe,
                i.replaced_by,
                origin_json(&i.origin),
                i.config.as_ref().map(config_json),
            ],
        )
        .map_err(|e| classify(e, "image", &i.name))?;
        Ok(())
    }

    /// Replaces the image `old_id` by `new` (a rebuild under the same
    /// name), in one transaction: the old row is renamed `NAME@OLD_ID`
    /// (not a valid image name, so it cannot collide) and points at the
    /// new one; what uses the old row (by id) keeps using it.
    pub fn replace_image(&self, old_id: &str, new: &ImageRecord) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let changed = tx.execute(
            "UPDATE images SET name = name || '@' || id, replaced_by = ?2
             WHERE id = ?1 AND replaced_by IS NULL",
            params![old_id, new.id],
        )?;
        if changed != 1 {
            return Err(not_found("image", old_id));
        }
        Self::insert_image_on(&tx, new)?;
        tx.commit()?;
        // The old row lives on, renamed, for the VMs that use it.
        self.changed(
            ObjectKind::Image,
            ObjectAction::Updated,
            old_id,
            &new.name,
            None,
        );
        self.changed(
            ObjectKind::Image,
            ObjectAction::Created,
            &new.id,
            &new.name,
            None,
        );
        Ok(())
    }

    pub fn image(&self, name_or_id: &str) -> Result<ImageRecord, StoreError> {
        self.find(IMAGE_SELECT, "image", name_or_id, ImageRecord::from_row)?
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.list(
            &format!("{IMAGE_SELECT} ORDER BY name"),
            ImageRecord::from_row,
        )?
        .into_iter()
        .collect()
    }

    pub fn delete_image(&self, name_or_id: &str) -> Result<ImageRecord, StoreError> {
        let i = self.image(name_or_id)?;
        self.delete_row("images", "image", &i.id, &i.name)?;
        self.changed(
            ObjectKind::Image,
            ObjectAction::Deleted,
            &i.id,
            &i.name,
            None,
        );
        Ok(i)
    }

    // ---- vms -----------------------------------------------------------

    pub fn insert_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO vms (id, name, image_id, kernel_id, vcpus, memory_mib,
                                  disk_size_bytes, network_mode, backend, disk_strategy,
                                  published_ports, state, last_error, created_at_ms, updated_at_ms,
                                  base_snapshot_id, egress, wait_for, backend_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                         ?17, ?18, ?19)",
                params![
                    vm.id,
                    vm.name,
                    vm.image_id,
                    vm.kernel_id,
                    vm.vcpus,
                    vm.memory_mib,
                    vm.disk_size_bytes,
                    vm.network_mode.as_str(),
                    vm.backend.map(Backend::as_str),
                    vm.disk_strategy.map(DiskStrategy::as_str),
                    join_ports(&vm.published_ports),
                    vm.state.as_str(),
                    vm.last_error,
                    vm.created_at_ms,
                    vm.updated_at_ms,
                    vm.base_snapshot_id,
                    vm.egress.to_string(),
                    vm.wait_for.map(WaitFor::as_str),
                    vm.backend_reason,
                ],
            )
            .map_err(|e| classify(e, "vm", &vm.name))?;
        self.changed(
            ObjectKind::Vm,
            ObjectAction::Created,
            &vm.id,
            &vm.name,
            Some(vm.state),
        );
        Ok(())
    }

    /// Rewrites every mutable column of an existing VM (matched by id).
    pub fn update_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let changed = self
            .conn
            .execute(
                "UPDATE vms SET name = ?2, image_id = ?3, kernel_id = ?4, vcpus = ?5,
                        memory_mib = ?6, disk_size_bytes = ?7, network_mode = ?8, backend = ?9,
                        disk_strategy = ?10, published_ports = ?11, state = ?12, last_error = ?13,
                        updated_at_ms = ?14, base_snapshot_id = ?15, egress = ?16, wait_for = ?17,
                        backend_reason = ?18
                 WHERE id = ?1",
                params![
                    vm.id,
                    vm.name,
                    vm.image_id,
                    vm.kernel_id,
                    vm.vcpus,
                    vm.memory_mib,
                    vm.disk_size_bytes,
                    vm.network_mode.as_str(),
                    vm.backend.map(Backend::as_str),
                    vm.disk_strategy.map(DiskStrategy::as_str),
                    join_ports(&vm.published_ports),
                    vm.state.as_str(),
                    vm.last_error,
                    vm.updated_at_ms,
                    vm.base_snapshot_id,
                    vm.egress.to_string(),
                    vm.wait_for.map(WaitFor::as_str),
                    vm.backend_reason,
                ],
            )
            .map_err(|e| classify(e, "vm", &vm.name))?;
        if changed == 0 {
            return Err(not_found("vm", &vm.name));
        }
        self.changed(
            ObjectKind::Vm,
            ObjectAction::Updated,
            &vm.id,
            &vm.name,
            Some(vm.state),
        );
        Ok(())
    }

    pub fn vm(&self, name_or_id: &str) -> Result<VmRecord, StoreError> {
        self.find(VM_SELECT, "vm", name_or_id, VmRecord::from_row)?
    }

    pub fn vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        self.list(&format!("{VM_SELECT} ORDER BY name"), VmRecord::from_row)?
            .into_iter()
            .collect()
    }

    pub fn delete_vm(&self, name_or_id: &str) -> Result<VmRecord, StoreError> {
        let vm = self.vm(name_or_id)?;
        self.delete_row("vms", "vm", &vm.id, &vm.name)?;
        self.changed(
            ObjectKind::Vm,
            ObjectAction::Deleted,
            &vm.id,
            &vm.name,
            None,
        );
        Ok(vm)
    }

    // ---- snapshots -----------------------------------------------------

    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO snapshots (id, name, kind, vm_id, vm_name, parent_id, image_id,
                        kernel_id, vcpus, memory_mib, disk_size_bytes, network_mode, has_agent,
                        dir, vmm_backend, vmm_version, machine, accel, template_key, size_bytes,
                        created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                         ?17, ?18, ?19, ?20, ?21)",
                params![
                    s.id,
                    s.name,
                    s.kind.as_str(),
                    s.vm_id,
                    s.vm_name,
                    s.parent_id,
                    s.image_id,
                    s.kernel_id,
                    s.vcpus,
                    s.memory_mib,
                    s.disk_size_bytes,
                    s.network_mode.as_str(),
                    s.has_agent,
                    path_str(&s.dir),
                    s.vmm_backend.as_str(),
                    s.vmm_version,
                    s.machine,
                    s.accel.as_str(),
                    s.template_key,
                    s.size_bytes,
                    s.created_at_ms,
                ],
            )
            .map_err(|e| classify(e, "snapshot", &s.name))?;
        self.changed(
            ObjectKind::Snapshot,
            ObjectAction::Created,
            &s.id,
            &s.name,
            None,
        );
        Ok(())
    }

    pub fn snapshot(&self, name_or_id: &str) -> Result<SnapshotRecord, StoreError> {
        self.find(
            SNAPSHOT_SELECT,
            "snapshot",
            name_or_id,
            SnapshotRecord::from_row,
        )?
    }

    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        self.list(
            &format!("{SNAPSHOT_SELECT} ORDER BY created_at_ms, name"),
            SnapshotRecord::from_row,
        )?
        .into_iter()
        .collect()
    }

    /// The newest template made from `key`, if any.
    pub fn template(&self, key: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        self.conn
            .query_row(
                &format!(
                    "{SNAPSHOT_SELECT} WHERE template_key = ?1 AND kind = 'template'
                     ORDER BY created_at_ms DESC LIMIT 1"
                ),
                [key],
                SnapshotRecord::from_row,
            )
            .optional()?
            .transpose()
    }

    /// Names of the VMs and snapshots that need snapshot `id`, sorted
    /// (`vm NAME`, `snapshot NAME`).
    pub fn snapshot_users(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT 'vm ' || name FROM vms WHERE base_snapshot_id = ?1
             UNION ALL SELECT 'snapshot ' || name FROM snapshots WHERE parent_id = ?1
             ORDER BY 1",
        )?;
        let rows = stmt.query_map([id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a snapshot's row; refused while a VM or snapshot needs it.
    pub fn delete_snapshot(&self, name_or_id: &str) -> Result<SnapshotRecord, StoreError> {
        let s = self.snapshot(name_or_id)?;
        self.delete_row("snapshots", "snapshot", &s.id, &s.name)?;
        self.changed(
            ObjectKind::Snapshot,
            ObjectAction::Deleted,
            &s.id,
            &s.name,
            None,
        );
        Ok(s)
    }

    // ---- ip leases -----------------------------------------------------

    /// Leases the first of `candidates` (in order) that nobody holds to
    /// `vm_id`, in one transaction; a VM that already holds a lease in
    /// `subnet` keeps it. `None` when every candidate is taken.
    pub fn lease_address(
        &self,
        vm_id: &str,
        subnet: &str,
        candidates: impl IntoIterator<Item = String>,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let held: Option<(String, String)> = tx
            .query_row(
                "SELECT address, subnet FROM ip_leases WHERE vm_id = ?1",
                [vm_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((address, held_subnet)) = held {
            if held_subnet == subnet {
                return Ok(Some(address));
            }
            // The bridge's subnet changed since: the old address is useless.
            tx.execute("DELETE FROM ip_leases WHERE vm_id = ?1", [vm_id])?;
        }
        let taken: std::collections::HashSet<String> = {
            let mut stmt = tx.prepare("SELECT address FROM ip_leases")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let Some(address) = candidates.into_iter().find(|c| !taken.contains(c)) else {
            return Ok(None);
        };
        tx.execute(
            "INSERT INTO ip_leases (address, vm_id, subnet, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![address, vm_id, subnet, now_ms],
        )
        .map_err(|e| classify(e, "ip lease", &address))?;
        tx.commit()?;
        Ok(Some(address))
    }

    /// The address leased to `vm_id`, if any.
    pub fn lease_of(&self, vm_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT address FROM ip_leases WHERE vm_id = ?1",
                [vm_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every lease as `(vm_id, address)`, ordered by address text.
    pub fn leases(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.list(
            "SELECT vm_id, address FROM ip_leases ORDER BY address",
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Frees `vm_id`'s address (idempotent). Deleting the VM frees it too.
    pub fn release_address(&self, vm_id: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM ip_leases WHERE vm_id = ?1", [vm_id])?;
        Ok(())
    }

    // ---- helpers -------------------------------------------------------

    /// One row of `select` whose name or id is `name_or_id`.
    fn find<T>(
        &self,
        select: &str,
        kind: &'static str,
        name_or_id: &str,
        map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.conn
            .query_row(
                &format!("{select} WHERE name = ?1 OR id = ?1"),
                [name_or_id],
                map,
            )
            .optional()?
            .ok_or_else(|| not_found(kind, name_or_id))
    }

    fn list<T>(
        &self,
        sql: &str,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], map)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn delete_row(
        &self,
        table: &str,
        kind: &'static str,
        id: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(&format!("DELETE FROM {table} WHERE id = ?1"), [id])
            .map_err(|e| match classify(e, kind, name) {
                StoreError::MissingReference { .. } => StoreError::InUse {
                    kind,
                    name: name.to_owned(),
                    users: self.users_of(kind, id),
                },
                other => other,
            })?;
        Ok(())
    }

    /// What refers to an image, kernel or snapshot, for error text:
    /// `vm a, vm b, snapshot s`.
    fn users_of(&self, kind: &str, id: &str) -> String {
        let sql = match kind {
            "image" => {
                "SELECT 'vm ' || name FROM vms WHERE image_id = ?1
                 UNION ALL SELECT 'snapshot ' || name FROM snapshots WHERE image_id = ?1
                 ORDER BY 1"
            }
            "kernel" => {
                "SELECT 'vm ' || name FROM vms WHERE kernel_id = ?1
                 UNION ALL SELECT 'snapshot ' || name FROM snapshots WHERE kernel_id = ?1
                 ORDER BY 1"
            }
            _ => {
                "SELECT 'vm ' || name FROM vms WHERE base_snapshot_id = ?1
                 UNION ALL SELECT 'snapshot ' || name FROM snapshots WHERE parent_id = ?1
                 ORDER BY 1"
            }
        };
        let names: Vec<String> = self
            .conn
            .prepare(sql)
            .and_then(|mut s| s.query_map([id], |r| r.get(0))?.collect())
            .unwrap_or_default();
        if names.is_empty() {
            "other records".to_owned()
        } else {
            names.join(", ")
        }
    }
}

const KERNEL_SELECT: &str = "SELECT id, name, source, kernel_path, initrd_path, modules_dir,
    version, sha256, created_at_ms FROM kernels";
const IMAGE_SELECT: &str = "SELECT id, name, source, rootfs_path, work_seed_path, fingerprint,
    size_bytes, managed, created_at_ms, has_agent, recipe, replaced_by, origin, config FROM images";
const VM_SELECT: &str = "SELECT id, name, image_id, kernel_id, vcpus, memory_mib,
    disk_size_bytes, network_mode, backend, disk_strategy, published_ports, state, last_error,
    created_at_ms, updated_at_ms, base_snapshot_id, egress, wait_for, backend_reason FROM vms";
const SNAPSHOT_SELECT: &str = "SELECT id, name, kind, vm_id, vm_name, parent_id, image_id,
    kernel_id, vcpus, memory_mib, disk_size_bytes, network_mode, has_agent, dir, vmm_backend,
    vmm_version, machine, accel, template_key, size_bytes, created_at_ms FROM snapshots";

/// An image's origin as stored: NULL for `built` (what rows made before
/// origins were recorded read as), else its JSON.
fn origin_json(o: &banger_proto::vm::ImageOrigin) -> Option<String> {
    match o {
        banger_proto::vm::ImageOrigin::Built => None,
        // Plain strings in a tagged enum: serialising cannot fail.
        other => serde_json::to_string(other).ok(),
    }
}

fn config_json(c: &banger_proto::vm::ImageConfig) -> String {
    // Strings, numbers and lists of them: serialising cannot fail.
    serde_json::to_string(c).unwrap_or_default()
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn not_found(kind: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

/// Turns constraint violations into typed errors; anything else stays a
/// plain SQLite error.
fn classify(e: rusqlite::Error, kind: &'static str, name: &str) -> StoreError {
    use rusqlite::ErrorCode::ConstraintViolation;
    use rusqlite::ffi;
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        // ON DELETE RESTRICT reports SQLITE_CONSTRAINT_TRIGGER, not _FOREIGNKEY.
        let foreign_key = f.extended_code == ffi::SQLITE_CONSTRAINT_FOREIGNKEY
            || msg.as_deref().is_some_and(|m| m.contains("FOREIGN KEY"));
        if f.code == ConstraintViolation && foreign_key {
            return StoreError::MissingReference {
                kind,
                name: name.to_owned(),
                missing: "image, kernel or snapshot",
            };
        }
        let unique = matches!(
            f.extended_code,
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        );
        if f.code == ConstraintViolation && unique {
            return StoreError::AlreadyExists {
                kind,
                name: name.to_owned(),
            };
        }
    }
    StoreError::Sqlite(e)
}

#[cfg(test)]
mod tests;
