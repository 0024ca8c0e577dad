//! `banger image ...`, `banger kernel ...`, `banger ops`, `banger doctor`
//! and `banger ssh-config`.

use banger_proto::methods::{self, Method, NoParams};
use banger_proto::vm::{
    Deleted, DoctorParams, ImageBuildParams, ImageView, KernelPullParams, KernelView, NameParams,
};
use banger_proto::{CheckStatus, OpState};

use super::follow::follow;
use super::format::{human_bytes, table};
use super::print_json;
use crate::CliError;
use crate::args::{DoctorArgs, ImageCommand, KernelCommand};
use crate::client::Client;
use crate::daemon_ctl::{DaemonTarget, ensure_daemon};

/// Calls a `{name}` method and prints its result as JSON or with `text`.
pub(super) fn show_named<M: Method<Params = NameParams>>(
    client: &mut Client,
    name: &str,
    json: bool,
    text: impl FnOnce(&M::Result),
) -> Result<(), CliError> {
    let value = client.call::<M>(&NameParams {
        name: name.to_owned(),
    })?;
    if json {
        print_json(&value)
    } else {
        text(&value);
        Ok(())
    }
}

/// Calls a `*.delete` method and reports it.
pub(super) fn delete_named<M: Method<Params = NameParams, Result = Deleted>>(
    client: &mut Client,
    kind: &str,
    name: &str,
    json: bool,
) -> Result<(), CliError> {
    show_named::<M>(client, name, json, |_| {
        println!("deleted {kind} {name}");
    })
}

pub(crate) fn image(target: &DaemonTarget, cmd: &ImageCommand) -> Result<(), CliError> {
    let mut client = ensure_daemon(target)?.client;
    match cmd {
        ImageCommand::Build {
            name,
            packages,
            size,
            json,
        } => {
            let begun = client.call::<methods::ImageBuildBegin>(&ImageBuildParams {
                name: name.clone(),
                packages: packages.clone(),
                size_bytes: size
                    .as_deref()
                    .map(|s| super::format::parse_size("--size", s))
                    .transpose()?,
            })?;
            if !json {
                eprintln!("building image {} ({})", begun.target, begun.op_id);
            }
            let done = follow(&mut client, begun, *json)?;
            let image: ImageView = serde_json::from_value(done.result.unwrap_or_default())
                .map_err(|e| CliError::BadResponse(e.to_string()))?;
            if *json {
                print_json(&image)
            } else {
                print_image(&image);
                Ok(())
            }
        }
        ImageCommand::List(a) => {
            let images = client.call::<methods::ImageList>(&NoParams)?;
            if a.json {
                return print_json(&images);
            }
            let rows: Vec<Vec<String>> = images
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.source.clone(),
                        human_bytes(i.size_bytes),
                        match (&i.stale_reason, i.stale) {
                            (Some(why), _) => format!("stale: {why}"),
                            (None, true) => "stale".into(),
                            (None, false) => String::new(),
                        },
                    ]
                })
                .collect();
            table(&["NAME", "SOURCE", "SIZE", ""], &rows);
            Ok(())
        }
        ImageCommand::Show(a) => {
            show_named::<methods::ImageShow>(&mut client, &a.name, a.json, print_image)
        }
        ImageCommand::Delete(a) => {
            delete_named::<methods::ImageDelete>(&mut client, "image", &a.name, a.json)
        }
        ImageCommand::Warm(a) => super::snapshot::warm(&mut client, &a.name, a.json),
    }
}

fn print_image(i: &ImageView) {
    println!("name       {}", i.name);
    println!("source     {}", i.source);
    println!("size       {}", human_bytes(i.size_bytes));
    println!("rootfs     {}", i.rootfs);
    if let Some(seed) = &i.work_seed {
        println!("work seed  {seed}");
    }
    match (&i.stale_reason, i.stale) {
        (Some(why), _) => println!("stale      {why}"),
        (None, true) => println!("stale      built from an older recipe"),
        (None, false) => {}
    }
}

pub(crate) fn kernel(target: &DaemonTarget, cmd: &KernelCommand) -> Result<(), CliError> {
    let mut client = ensure_daemon(target)?.client;
    match cmd {
        KernelCommand::List(a) => {
            let kernels = client.call::<methods::KernelList>(&NoParams)?;
            if a.json {
                return print_json(&kernels);
            }
            let rows: Vec<Vec<String>> = kernels
                .iter()
                .map(|k| {
                    vec![
                        format!("{}{}", k.name, if k.default { " (default)" } else { "" }),
                        if k.present {
                            "pulled".into()
                        } else {
                            "-".into()
                        },
                        k.version.clone().unwrap_or_default(),
                        k.description.clone(),
                    ]
                })
                .collect();
            table(&["NAME", "STATE", "VERSION", "DESCRIPTION"], &rows);
            Ok(())
        }
        KernelCommand::Pull { name, json } => {
            let begun = client
                .call::<methods::KernelPullBegin>(&KernelPullParams { name: name.clone() })?;
            if !json {
                eprintln!("pulling kernel {} ({})", begun.target, begun.op_id);
            }
            let done = follow(&mut client, begun, *json)?;
            let k: KernelView = serde_json::from_value(done.result.unwrap_or_default())
                .map_err(|e| CliError::BadResponse(e.to_string()))?;
            if *json {
                print_json(&k)
            } else {
                print_kernel(&k);
                Ok(())
            }
        }
        KernelCommand::Show(a) => {
            show_named::<methods::KernelShow>(&mut client, &a.name, a.json, print_kernel)
        }
        KernelCommand::Delete(a) => {
            delete_named::<methods::KernelDelete>(&mut client, "kernel", &a.name, a.json)
        }
    }
}

fn print_kernel(k: &KernelView) {
    println!("name       {}", k.name);
    println!("pulled     {}", if k.present { "yes" } else { "no" });
    if let Some(v) = &k.version {
        println!("version    {v}");
    }
    if let Some(p) = &k.kernel {
        println!("kernel     {p}");
    }
    if let Some(p) = &k.initrd {
        println!("initrd     {p}");
    }
}

pub(crate) fn ops(target: &DaemonTarget, json: bool) -> Result<(), CliError> {
    let mut client = ensure_daemon(target)?.client;
    let ops = client.call::<methods::OpList>(&NoParams)?;
    if json {
        return print_json(&ops);
    }
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            let current = o.stages.last().map(|s| s.name.clone()).unwrap_or_default();
            vec![
                o.op_id.clone(),
                o.kind.to_string(),
                o.target.clone(),
                o.state.to_string(),
                if o.state == OpState::Running {
                    current
                } else {
                    o.error
                        .as_ref()
                        .map(|e| e.message.clone())
                        .unwrap_or_default()
                },
            ]
        })
        .collect();
    table(&["OP", "KIND", "TARGET", "STATE", "STAGE / ERROR"], &rows);
    Ok(())
}

pub(crate) fn network(target: &DaemonTarget, json: bool) -> Result<(), CliError> {
    let mut client = ensure_daemon(target)?.client;
    let status = client.call::<methods::NetworkStatus>(&NoParams)?;
    if json {
        return print_json(&status);
    }
    let none = || "-".to_owned();
    println!(
        "helper     {} ({})",
        if status.helper {
            "answers"
        } else {
            "does not answer"
        },
        status.helper_socket
    );
    println!("bridge     {}", status.bridge.clone().unwrap_or_else(none));
    println!("subnet     {}", status.subnet.clone().unwrap_or_else(none));
    println!("gateway    {}", status.gateway.clone().unwrap_or_else(none));
    println!(
        "tap pool   {} idle of {} ({}); {} in use ({})",
        status.idle_taps.len(),
        status.tap_pool_size,
        status.idle_taps.join(", "),
        status.taps_in_use.len(),
        status.taps_in_use.join(", ")
    );
    let rows: Vec<Vec<String>> = status
        .leases
        .iter()
        .map(|l| vec![l.vm.clone(), l.address.clone(), format!("{}.vm", l.vm)])
        .collect();
    if !rows.is_empty() {
        println!();
        table(&["VM", "ADDRESS", "DNS"], &rows);
    }
    Ok(())
}

pub(crate) fn doctor(target: &DaemonTarget, args: &DoctorArgs) -> Result<(), CliError> {
    let mut client = ensure_daemon(target)?.client;
    let report = client.call::<methods::Doctor>(&DoctorParams { probe: args.probe })?;
    if args.json {
        return print_json(&report);
    }
    for c in &report.checks {
        let mark = match c.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "FAIL",
        };
        println!("[{mark}] {:<14} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("       {:<14} fix: {fix}", "");
        }
    }
    println!(
        "backend: {} with {} ({})",
        report.backend, report.accel, report.accel_reason
    );
    if report.checks.iter().any(|c| c.status == CheckStatus::Fail) {
        return Err(CliError::ChildExit(1));
    }
    Ok(())
}

pub(crate) fn ssh_config(target: &DaemonTarget) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(CliError::Io)?;
    let data = &target.layout.data_dir;
    println!("# banger VMs: ssh NAME.vm (paste into ~/.ssh/config)");
    println!("Host *.vm");
    println!("    User root");
    println!("    IdentityFile {}", data.join("ssh/id_ed25519").display());
    println!("    IdentitiesOnly yes");
    println!(
        "    UserKnownHostsFile {}",
        data.join("ssh/known_hosts").display()
    );
    println!("    StrictHostKeyChecking accept-new");
    println!("    HashKnownHosts no");
    println!("    ProxyCommand {} vm ssh-proxy %n", exe.display());
    Ok(())
}
