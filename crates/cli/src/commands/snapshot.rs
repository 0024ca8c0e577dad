//! `banger snapshot ...`, and the commands that make or use snapshots:
//! `vm snapshot`, `vm restore`, `vm fork` and `image warm`. Each of those
//! begins an operation and follows it, printing its stages as
//! `vm create` does.

use banger_proto::methods::{self, NoParams};
use banger_proto::snapshot::{
    SnapshotView, VmForkParams, VmForked, VmRestoreParams, VmSnapshotParams,
};
use banger_proto::vm::{NameParams, VmView};

use super::artifacts::{delete_named, show_named};
use super::follow::follow_result;
use super::format::{ago, human_bytes, key_values, now_ms, table, utc};
use super::print_json;
use crate::CliError;
use crate::args::SnapshotCommand;
use crate::client::Client;
use crate::daemon_ctl::{DaemonTarget, ensure_daemon};
use crate::output::note;

pub(crate) fn run(target: &DaemonTarget, cmd: &SnapshotCommand) -> Result<(), CliError> {
    let mut client = ensure_daemon(target)?.client;
    match cmd {
        SnapshotCommand::List(a) => {
            let snapshots = client.call::<methods::SnapshotList>(&NoParams)?;
            if a.json {
                return print_json(&snapshots);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = snapshots
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.kind.to_string(),
                        s.vm.clone(),
                        s.image.clone(),
                        human_bytes(s.size_bytes),
                        ago(s.created_at_ms, now),
                        s.used_by.join(", "),
                    ]
                })
                .collect();
            table(
                &["NAME", "KIND", "VM", "IMAGE", "SIZE", "CREATED", "USED BY"],
                &rows,
            );
            Ok(())
        }
        SnapshotCommand::Show(a) => {
            show_named::<methods::SnapshotShow>(&mut client, &a.name, a.json, print_snapshot)
        }
        SnapshotCommand::Delete(a) => {
            delete_named::<methods::SnapshotDelete>(&mut client, "snapshot", &a.name, a.json)
        }
    }
}

/// `vm snapshot`: begins `vm.snapshot`, follows it and shows the snapshot.
pub(crate) fn take(
    client: &mut Client,
    vm: &str,
    snapshot: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let begun = client.call::<methods::VmSnapshotBegin>(&VmSnapshotParams {
        name: vm.to_owned(),
        snapshot: snapshot.map(str::to_owned),
    })?;
    if !json {
        note!("snapshotting vm {vm} ({})", begun.op_id);
    }
    let s: SnapshotView = follow_result(client, begun, json)?;
    if json {
        return print_json(&s);
    }
    key_values(&[
        ("snapshot", s.name),
        ("vm", s.vm),
        ("size", human_bytes(s.size_bytes)),
    ]);
    Ok(())
}

/// `vm restore`: begins `vm.restore`, follows it and shows the VM.
pub(crate) fn restore(
    client: &mut Client,
    vm: &str,
    snapshot: &str,
    json: bool,
) -> Result<VmView, CliError> {
    let begun = client.call::<methods::VmRestoreBegin>(&VmRestoreParams {
        name: vm.to_owned(),
        snapshot: snapshot.to_owned(),
    })?;
    if !json {
        note!("restoring vm {vm} to snapshot {snapshot} ({})", begun.op_id);
    }
    follow_result(client, begun, json)
}

/// `vm fork`: begins `vm.fork`, follows it and lists the forks.
pub(crate) fn fork(
    client: &mut Client,
    vm: &str,
    new_name: &str,
    count: Option<u32>,
    json: bool,
) -> Result<(), CliError> {
    let begun = client.call::<methods::VmForkBegin>(&VmForkParams {
        name: vm.to_owned(),
        new_name: new_name.to_owned(),
        count,
    })?;
    if !json {
        note!("forking vm {vm} ({})", begun.op_id);
    }
    let forked: VmForked = follow_result(client, begun, json)?;
    if json {
        return print_json(&forked);
    }
    super::vm::print_vm_table(&forked.vms);
    println!(
        "forked from snapshot {} (deleted with the last fork)",
        forked.snapshot
    );
    Ok(())
}

/// `image warm`: begins `image.warm`, follows it and shows the template.
pub(crate) fn warm(client: &mut Client, image: &str, json: bool) -> Result<(), CliError> {
    let begun = client.call::<methods::ImageWarmBegin>(&NameParams {
        name: image.to_owned(),
    })?;
    if !json {
        note!("warming image {image} ({})", begun.op_id);
    }
    let s: SnapshotView = follow_result(client, begun, json)?;
    if json {
        print_json(&s)
    } else {
        print_snapshot(&s);
        Ok(())
    }
}

fn print_snapshot(s: &SnapshotView) {
    let mut rows = vec![
        ("name", s.name.clone()),
        ("id", s.id.clone()),
        ("kind", s.kind.to_string()),
        ("vm", s.vm.clone()),
        ("image", s.image.clone()),
        ("kernel", s.kernel.clone()),
        ("vcpus", s.vcpus.to_string()),
        ("memory", format!("{} MiB", s.memory_mib)),
        ("disk", human_bytes(s.disk_size_bytes)),
        ("network", s.network.to_string()),
        ("vmm", s.vmm.clone()),
        ("accel", s.accel.to_string()),
    ];
    if let Some(parent) = &s.parent {
        rows.push(("parent", parent.clone()));
    }
    if !s.used_by.is_empty() {
        rows.push(("used by", s.used_by.join(", ")));
    }
    rows.push(("size", human_bytes(s.size_bytes)));
    rows.push((
        "created",
        format!(
            "{} ({})",
            utc(s.created_at_ms),
            ago(s.created_at_ms, now_ms())
        ),
    ));
    rows.push(("dir", s.dir.clone()));
    key_values(&rows);
}
