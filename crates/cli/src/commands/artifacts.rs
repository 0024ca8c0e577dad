//! `banger image ...`, `banger kernel ...`, `banger ops`, `banger doctor`
//! and `banger ssh-config`.

use banger_proto::methods::{self, Method, NoParams};
use banger_proto::vm::{
    Deleted, DoctorParams, ImageBuildParams, ImageCachePruneParams, ImageOrigin,
    ImagePromoteParams, ImagePullParams, ImageView, KernelImportParams, KernelOrigin,
    KernelPullParams, KernelView, NameParams,
};
use banger_proto::{CheckStatus, OpState};

use super::follow::follow;
use banger_paths::Layout;

use super::format::{escape_control, human_bytes, key_values, table};
use super::print_json;
use crate::CliError;
use crate::args::{DoctorArgs, ImageCacheCommand, ImageCommand, ImagePullArgs, KernelCommand};
use crate::client::Client;
use crate::daemon_ctl::{DaemonTarget, ensure_daemon};
use crate::output::note;

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
            preset,
            services,
            json,
        } => {
            let begun = client.call::<methods::ImageBuildBegin>(&ImageBuildParams {
                name: name.clone(),
                packages: packages.clone(),
                size_bytes: size
                    .as_deref()
                    .map(|s| super::format::parse_size("--size", s))
                    .transpose()?,
                preset: preset
                    .map(|crate::args::Preset::Opencode| banger_proto::vm::ImagePreset::Opencode),
                services: services.clone(),
            })?;
            if !json {
                note!("building image {} ({})", begun.target, begun.op_id);
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
                        origin_short(&i.origin),
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
            table(&["NAME", "ORIGIN", "SOURCE", "SIZE", ""], &rows);
            Ok(())
        }
        ImageCommand::Show(a) => {
            show_named::<methods::ImageShow>(&mut client, &a.name, a.json, print_image)
        }
        ImageCommand::Delete(a) => {
            delete_named::<methods::ImageDelete>(&mut client, "image", &a.name, a.json)
        }
        ImageCommand::Warm(a) => super::snapshot::warm(&mut client, &a.name, a.json),
        ImageCommand::Pull(a) => pull(&mut client, a),
        ImageCommand::Cache(ImageCacheCommand::Prune { dry_run, json }) => {
            let r = client
                .call::<methods::ImageCachePrune>(&ImageCachePruneParams { dry_run: *dry_run })?;
            if *json {
                return print_json(&r);
            }
            let verb = if r.dry_run { "would free" } else { "freed" };
            println!(
                "{verb} {} in {} blob{} ({})",
                human_bytes(r.bytes),
                r.blobs,
                if r.blobs == 1 { "" } else { "s" },
                r.dir
            );
            Ok(())
        }
        ImageCommand::Promote {
            vm,
            name,
            with_work,
            json,
        } => {
            let image = client.call::<methods::ImagePromote>(&ImagePromoteParams {
                vm: vm.clone(),
                name: name.clone(),
                with_work: *with_work,
            })?;
            if *json {
                print_json(&image)
            } else {
                print_image(&image);
                Ok(())
            }
        }
    }
}

/// `image pull`: the password, if any, from stdin; then the operation,
/// followed like other long ones.
fn pull(client: &mut Client, a: &ImagePullArgs) -> Result<(), CliError> {
    let password = if a.password_stdin {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(CliError::Io)?;
        Some(text.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        None
    };
    let begun = client.call::<methods::ImagePullBegin>(&ImagePullParams {
        reference: a.reference.clone(),
        name: a.name.clone(),
        platform: a.platform.clone(),
        insecure: a.insecure,
        username: a.username.clone(),
        password,
        if_missing: false,
    })?;
    if !a.json {
        note!(
            "pulling {} as image {} ({})",
            a.reference,
            begun.target,
            begun.op_id
        );
    }
    let image: ImageView = super::follow::follow_result(client, begun, a.json)?;
    if a.json {
        print_json(&image)
    } else {
        print_image(&image);
        Ok(())
    }
}

/// `built`, `pulled`, `promoted from VM`: the origin column of `image list`.
fn origin_short(o: &ImageOrigin) -> String {
    match o {
        ImageOrigin::Built => "built".into(),
        ImageOrigin::Pulled { digest, .. } => {
            let short: String = digest
                .strip_prefix("sha256:")
                .unwrap_or(digest)
                .chars()
                .take(12)
                .collect();
            format!("pulled @{short}")
        }
        ImageOrigin::Promoted { vm } => format!("promoted from {vm}"),
    }
}

fn print_image(i: &ImageView) {
    let mut rows = vec![("name", i.name.clone())];
    match &i.origin {
        ImageOrigin::Built => rows.push(("origin", "built".into())),
        ImageOrigin::Pulled { reference, digest } => {
            rows.push(("origin", "pulled".into()));
            rows.push(("reference", reference.clone()));
            rows.push(("digest", digest.clone()));
        }
        ImageOrigin::Promoted { vm } => rows.push(("origin", format!("promoted from vm {vm}"))),
    }
    for svc in &i.services {
        rows.push((
            "service",
            format!(
                "{} on port {} in {}: {}",
                svc.name, svc.port, svc.workdir, svc.command
            ),
        ));
    }
    rows.extend([
        ("source", i.source.clone()),
        ("size", human_bytes(i.size_bytes)),
        ("rootfs", i.rootfs.clone()),
    ]);
    if let Some(c) = &i.config {
        // key_values escapes control characters.
        let words = |v: &[String]| v.join(" ");
        if let Some(e) = &c.entrypoint {
            rows.push(("entrypoint", words(e)));
        }
        if let Some(cmd) = &c.cmd {
            rows.push(("cmd", words(cmd)));
        }
        for e in &c.env {
            rows.push(("env", e.clone()));
        }
        if let Some(w) = &c.working_dir {
            rows.push(("workdir", w.clone()));
        }
        if let Some(u) = &c.user {
            rows.push(("user", u.clone()));
        }
        if !c.exposed_ports.is_empty() {
            let ports: Vec<String> = c
                .exposed_ports
                .iter()
                .map(|p| format!("{}/{}", p.port, p.protocol))
                .collect();
            rows.push(("ports", ports.join(", ")));
        }
    }
    if let Some(seed) = &i.work_seed {
        rows.push(("work seed", seed.clone()));
    }
    match (&i.stale_reason, i.stale) {
        (Some(why), _) => rows.push(("stale", why.clone())),
        (None, true) => rows.push(("stale", "built from an older recipe".into())),
        (None, false) => {}
    }
    key_values(&rows);
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
                        kernel_state(k).into(),
                        k.version.clone().unwrap_or_default(),
                        k.origin.to_string(),
                        k.description.clone(),
                    ]
                })
                .collect();
            table(
                &["NAME", "STATE", "VERSION", "SOURCE", "DESCRIPTION"],
                &rows,
            );
            Ok(())
        }
        KernelCommand::Import {
            name,
            kernel,
            initrd,
            modules,
            json,
        } => {
            let k = client.call::<methods::KernelImport>(&KernelImportParams {
                name: name.clone(),
                kernel: absolute("--kernel", kernel)?,
                initrd: initrd
                    .as_deref()
                    .map(|p| absolute("--initrd", p))
                    .transpose()?,
                modules: modules
                    .as_deref()
                    .map(|p| absolute("--modules", p))
                    .transpose()?,
            })?;
            if *json {
                print_json(&k)
            } else {
                print_kernel(&k);
                Ok(())
            }
        }
        KernelCommand::Pull { name, json } => {
            let begun = client
                .call::<methods::KernelPullBegin>(&KernelPullParams { name: name.clone() })?;
            if !json {
                note!("pulling kernel {} ({})", begun.target, begun.op_id);
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

/// `pulled`, `imported`, or `-` for a catalog kernel not pulled (or one
/// whose file went missing).
fn kernel_state(k: &KernelView) -> &'static str {
    match (&k.origin, k.present) {
        (_, false) => "-",
        (KernelOrigin::Catalog { .. }, true) => "pulled",
        (KernelOrigin::Imported { .. }, true) => "imported",
    }
}

/// `path` made absolute against the current directory (the daemon runs
/// elsewhere), not resolved further: the daemon checks what it names.
fn absolute(option: &str, path: &std::path::Path) -> Result<String, CliError> {
    let abs = std::path::absolute(path)
        .map_err(|e| CliError::BadParams(format!("{option} {}: {e}", path.display())))?;
    abs.into_os_string()
        .into_string()
        .map_err(|p| CliError::BadParams(format!("{option} {p:?}: not UTF-8")))
}

fn print_kernel(k: &KernelView) {
    let mut rows = vec![
        ("name", k.name.clone()),
        ("state", kernel_state(k).to_owned()),
        ("source", k.origin.to_string()),
    ];
    if let Some(v) = &k.version {
        rows.push(("version", v.clone()));
    }
    if let Some(p) = &k.kernel {
        rows.push(("kernel", p.clone()));
    }
    if let Some(p) = &k.initrd {
        rows.push(("initrd", p.clone()));
    }
    if let Some(p) = &k.modules {
        rows.push(("modules", p.clone()));
    }
    key_values(&rows);
}

pub(crate) fn ops(target: &DaemonTarget, json: bool) -> Result<(), CliError> {
    let mut client = ensure_daemon(target)?.client;
    let ops = client.call::<methods::OpList>(&NoParams)?;
    if json {
        return print_json(&ops);
    }
    let now = super::format::now_ms();
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            let current = o.stages.last().map(|s| s.name.clone()).unwrap_or_default();
            vec![
                o.op_id.clone(),
                o.kind.to_string(),
                o.target.clone(),
                o.state.to_string(),
                super::format::ago(o.started_at_ms, now),
                op_duration(o.started_at_ms, o.ended_at_ms, now),
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
    table(
        &[
            "OP",
            "KIND",
            "TARGET",
            "STATE",
            "STARTED",
            "TOOK",
            "STAGE / ERROR",
        ],
        &rows,
    );
    Ok(())
}

/// How long an operation took (`12.3 s`), or has been running so far
/// (`12.3 s…`).
fn op_duration(started_ms: i64, ended_ms: Option<i64>, now_ms: i64) -> String {
    let end = ended_ms.unwrap_or(now_ms);
    let secs = end.saturating_sub(started_ms).max(0) as f64 / 1000.0;
    let running = if ended_ms.is_none() { "…" } else { "" };
    if secs < 60.0 {
        format!("{secs:.1} s{running}")
    } else {
        format!(
            "{}m{:02}s{running}",
            (secs / 60.0) as u64,
            (secs % 60.0) as u64
        )
    }
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
    // Text or JSON, a FAIL exits 1.
    let failed = report.checks.iter().any(|c| c.status == CheckStatus::Fail);
    if args.json {
        print_json(&report)?;
        return if failed {
            Err(CliError::ChildExit(1))
        } else {
            Ok(())
        };
    }
    for c in &report.checks {
        let mark = match c.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "FAIL",
        };
        println!(
            "[{mark}] {:<14} {}",
            c.name,
            escape_control(&c.detail, false)
        );
        if let Some(fix) = &c.fix {
            println!("       {:<14} fix: {}", "", escape_control(fix, false));
        }
    }
    println!(
        "backend: {} with {} ({})",
        report.backend, report.accel, report.accel_reason
    );
    if failed {
        return Err(CliError::ChildExit(1));
    }
    Ok(())
}

/// `ssh-config`: a `Host *.vm` block for `~/.ssh/config` whose
/// ProxyCommand is `banger vm ssh-proxy`. With `--json`: `{"host":
/// "*.vm", "options": {OPTION: VALUE...}, "block": TEXT}`.
pub(crate) fn ssh_config(layout: &Layout, json: bool) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(CliError::Io)?;
    let data = &layout.data_dir;
    let options = [
        ("User", "root".to_owned()),
        (
            "IdentityFile",
            data.join("ssh/id_ed25519").display().to_string(),
        ),
        ("IdentitiesOnly", "yes".to_owned()),
        (
            "UserKnownHostsFile",
            data.join("ssh/known_hosts").display().to_string(),
        ),
        ("StrictHostKeyChecking", "accept-new".to_owned()),
        ("HashKnownHosts", "no".to_owned()),
        ("ProxyCommand", format!("{} vm ssh-proxy %n", exe.display())),
    ];
    let mut block =
        String::from("# banger VMs: ssh NAME.vm (paste into ~/.ssh/config)\nHost *.vm\n");
    for (k, v) in &options {
        block.push_str(&format!("    {k} {v}\n"));
    }
    if json {
        let options: serde_json::Map<String, serde_json::Value> = options
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
            .collect();
        return print_json(&serde_json::json!({
            "host": "*.vm",
            "options": options,
            "block": block,
        }));
    }
    print!("{block}");
    Ok(())
}

#[cfg(test)]
mod op_time_tests {
    use super::op_duration;

    #[test]
    fn durations_of_operations() {
        assert_eq!(op_duration(1_000, Some(13_300), 99_000), "12.3 s");
        assert_eq!(op_duration(1_000, None, 3_500), "2.5 s…");
        assert_eq!(op_duration(0, Some(125_000), 0), "2m05s");
        assert_eq!(
            op_duration(5_000, Some(1_000), 0),
            "0.0 s",
            "a clock step back"
        );
    }
}
