//! `banger vm ...`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

use banger_proto::methods::{self, Method, NoParams};
use banger_proto::vm::NameParams;
use banger_proto::vm::{
    ImagePullParams, OpView, SshInfo, VmCreateParams, VmDeleteParams, VmDeleted, VmEditParams,
    VmKillParams, VmRef, VmView,
};
use banger_proto::{ErrorCode, NetworkMode, VmState, WaitFor};

use super::follow::follow;
use super::format::{human_bytes, key_values, mib, parse_size, table};
use super::print_json;
use crate::CliError;
use crate::args::{VmCommand, VmSpecArgs};
use crate::client::Client;
use crate::daemon_ctl::{DaemonTarget, ensure_daemon};
use crate::output::note;

pub(crate) fn run(target: &DaemonTarget, cmd: &VmCommand) -> Result<(), CliError> {
    let mut client = ensure_daemon(target)?.client;
    match cmd {
        VmCommand::Create {
            name,
            spec,
            no_start,
            json,
        } => {
            let vm = create(&mut client, name, spec, !no_start, *json)?;
            if *json {
                print_json(&vm)
            } else {
                print_vm(&vm);
                Ok(())
            }
        }
        VmCommand::Start(a) => {
            let vm = followed::<methods::VmStartBegin>(&mut client, "starting", &a.name, a.json)?;
            show(&vm, a.json)
        }
        VmCommand::Stop(a) => one::<methods::VmStop>(&mut client, &a.name, a.json),
        VmCommand::Restart(a) => {
            let vm =
                followed::<methods::VmRestartBegin>(&mut client, "restarting", &a.name, a.json)?;
            show(&vm, a.json)
        }
        VmCommand::Pause(a) => one::<methods::VmPause>(&mut client, &a.name, a.json),
        VmCommand::Resume(a) => one::<methods::VmResume>(&mut client, &a.name, a.json),
        VmCommand::Snapshot {
            name,
            snapshot,
            json,
        } => super::snapshot::take(&mut client, name, snapshot.as_deref(), *json),
        VmCommand::Restore {
            name,
            snapshot,
            json,
        } => {
            let vm = super::snapshot::restore(&mut client, name, snapshot, *json)?;
            show(&vm, *json)
        }
        VmCommand::Fork {
            name,
            new_name,
            count,
            json,
        } => super::snapshot::fork(&mut client, name, new_name, *count, *json),
        VmCommand::Show(a) => one::<methods::VmShow>(&mut client, &a.name, a.json),
        VmCommand::Kill { name, signal, json } => {
            let vm = client.call::<methods::VmKill>(&VmKillParams {
                name: name.clone(),
                signal: Some(signal.clone()),
            })?;
            show(&vm, *json)
        }
        VmCommand::Delete(a) => delete(&mut client, &a.names, a.force, a.json),
        VmCommand::List(a) => {
            let vms = client.call::<methods::VmList>(&NoParams)?;
            if a.json {
                return print_json(&vms);
            }
            print_vm_table(&vms);
            Ok(())
        }
        VmCommand::Edit {
            name,
            vcpus,
            memory,
            disk_size,
            publish,
            no_publish,
            egress,
            json,
        } => {
            let p = VmEditParams {
                name: name.clone(),
                vcpus: *vcpus,
                memory_mib: memory.as_deref().map(|m| mib("--memory", m)).transpose()?,
                disk_size_bytes: disk_size
                    .as_deref()
                    .map(|d| parse_size("--disk-size", d))
                    .transpose()?,
                publish: if *no_publish {
                    Some(Vec::new())
                } else if publish.is_empty() {
                    None
                } else {
                    Some(publish.clone())
                },
                egress: egress.clone(),
            };
            let vm = client.call::<methods::VmEdit>(&p)?;
            show(&vm, *json)
        }
        VmCommand::Logs(a) => {
            let vm = client.call::<methods::VmShow>(&VmRef {
                name: a.name.clone(),
            })?;
            drop(client);
            let render: super::tail::Render<'_> = if a.json {
                &super::tail::json_line
            } else if a.raw {
                &super::tail::raw_line
            } else {
                &super::tail::terminal_safe
            };
            let log = std::path::Path::new(&vm.console_log);
            // The older generation once the daemon rotated the log
            // (crates/daemon/src/vms/console.rs).
            let mut previous = log.as_os_str().to_owned();
            previous.push(".1");
            super::tail::tail(
                log,
                Some(std::path::Path::new(&previous)),
                a.lines,
                a.follow,
                render,
            )
        }
        VmCommand::Ssh { name, command } => {
            let vm = client.call::<methods::VmShow>(&VmRef { name: name.clone() })?;
            if vm.agent_shell {
                return agent_shell(&mut client, &vm, command);
            }
            let info = client.call::<methods::VmSshInfo>(&VmRef { name: name.clone() })?;
            drop(client);
            let err = ssh_command(&info, command, Remote::CommandLine).exec();
            Err(CliError::Spawn {
                binary: "ssh".into(),
                source: err,
            })
        }
        VmCommand::Run {
            name,
            rm,
            spec,
            command,
        } => vm_run(&mut client, name.as_deref(), *rm, spec, command),
        VmCommand::Stats { name, watch, json } => {
            super::guest::stats(&mut client, name, *watch, *json)
        }
        VmCommand::Ports(a) => super::guest::ports(&mut client, &a.name, a.json, a.raw),
        VmCommand::Exec {
            name,
            tty,
            env,
            workdir,
            command,
        } => super::guest::exec_in(
            &mut client,
            name,
            *tty,
            command,
            workdir.clone(),
            env.clone(),
        ),
        VmCommand::Cp {
            src,
            dst,
            recursive,
            json,
        } => super::guest::cp(&mut client, src, dst, *recursive, *json),
        VmCommand::SshProxy { name } => {
            // ssh passes the host as written: `dev.vm`.
            let name = name.strip_suffix(".vm").unwrap_or(name).to_owned();
            let info = client.call::<methods::VmSshInfo>(&VmRef { name })?;
            drop(client);
            proxy(&info)
        }
    }
}

/// One answer of `vm delete --json` per name, in order.
#[derive(Debug, serde::Serialize)]
struct DeleteOutcome {
    name: String,
    #[serde(flatten)]
    deleted: Option<VmDeleted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<banger_proto::ErrorBody>,
}

/// Deletes each VM named, going on past failures: each is reported
/// (`error: NAME: ...`, or an `error` in its JSON entry) and the exit
/// code is the first failure's.
fn delete(client: &mut Client, names: &[String], force: bool, json: bool) -> Result<(), CliError> {
    let mut outcomes = Vec::with_capacity(names.len());
    let mut first_failure: Option<CliError> = None;
    let mut failed = 0;
    for name in names {
        let answer = client.call::<methods::VmDelete>(&VmDeleteParams {
            name: name.clone(),
            force,
        });
        let mut outcome = DeleteOutcome {
            name: name.clone(),
            deleted: None,
            error: None,
        };
        match answer {
            Ok(v) => {
                if !json {
                    println!("deleted {name}");
                }
                outcome.deleted = Some(v);
            }
            // Only the daemon's refusals are per VM; a lost daemon ends it.
            Err(CliError::Daemon(body)) => {
                failed += 1;
                if names.len() == 1 && !json {
                    return Err(CliError::Daemon(body));
                }
                if !json {
                    eprintln!("error: {name}: {body}");
                }
                outcome.error = Some(body.clone());
                first_failure.get_or_insert(CliError::Daemon(body));
            }
            Err(e) => return Err(e),
        }
        outcomes.push(outcome);
    }
    if json {
        print_json(&outcomes)?;
    }
    match first_failure {
        None => Ok(()),
        Some(first) => Err(CliError::SomeFailed {
            what: "delete",
            failed,
            total: names.len(),
            exit: first.exit(),
        }),
    }
}

/// Prints VMs as the table of `vm list`.
pub(super) fn print_vm_table(vms: &[VmView]) {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.state.to_string(),
                v.image.clone(),
                v.vcpus.to_string(),
                format!("{} MiB", v.memory_mib),
                human_bytes(v.disk_size_bytes),
                v.ssh_port
                    .map(|p| format!("127.0.0.1:{p}"))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["NAME", "STATE", "IMAGE", "VCPUS", "MEMORY", "DISK", "SSH"],
        &rows,
    );
}

/// Calls a method that takes a VM and answers it, and shows the VM.
fn one<M>(client: &mut Client, name: &str, json: bool) -> Result<(), CliError>
where
    M: Method<Params = VmRef, Result = VmView>,
{
    let vm = client.call::<M>(&VmRef {
        name: name.to_owned(),
    })?;
    show(&vm, json)
}

/// Begins lifecycle method `M` on VM `name` and follows its stages to the
/// end (printed unless `quiet`), like a create.
fn followed<M>(
    client: &mut Client,
    doing: &str,
    name: &str,
    quiet: bool,
) -> Result<VmView, CliError>
where
    M: Method<Params = VmRef, Result = OpView>,
{
    let begun = client.call::<M>(&VmRef {
        name: name.to_owned(),
    })?;
    if !quiet {
        crate::output::note!("{doing} vm {name} ({})", begun.op_id);
    }
    super::follow::follow_result(client, begun, quiet)
}

fn show(vm: &VmView, json: bool) -> Result<(), CliError> {
    if json {
        print_json(vm)
    } else {
        print_vm(vm);
        Ok(())
    }
}

fn print_vm(v: &VmView) {
    let mut rows = vec![
        ("name", v.name.clone()),
        ("id", v.id.clone()),
        ("state", v.state.to_string()),
        ("image", v.image.clone()),
        ("kernel", v.kernel.clone()),
        ("vcpus", v.vcpus.to_string()),
        ("memory", format!("{} MiB", v.memory_mib)),
        ("disk", human_bytes(v.disk_size_bytes)),
        ("network", v.network.to_string()),
        ("egress", v.egress.to_string()),
        ("wait", v.wait_for.to_string()),
    ];
    fn opt<T: std::fmt::Display>(o: Option<T>) -> String {
        o.map_or_else(|| "-".into(), |v| v.to_string())
    }
    rows.push((
        "backend",
        match (&v.backend, &v.backend_reason) {
            (Some(b), Some(why)) => format!("{b} ({why})"),
            (b, _) => opt(b.as_ref()),
        },
    ));
    rows.push(("accel", opt(v.accel)));
    rows.push(("root disk", opt(v.disk_strategy)));
    if !v.publish.is_empty() {
        let publish: Vec<String> = v.publish.iter().map(ToString::to_string).collect();
        rows.push(("publish", publish.join(", ")));
    }
    if let Some(pid) = v.pid {
        rows.push(("pid", pid.to_string()));
    }
    if let Some(ip) = &v.ip {
        rows.push(("address", format!("{ip} ({}.vm)", v.name)));
    }
    if let Some(tap) = &v.tap {
        rows.push(("tap", tap.clone()));
    }
    if let Some(port) = v.ssh_port {
        rows.push((
            "ssh",
            format!("127.0.0.1:{port} (banger vm ssh {})", v.name),
        ));
    }
    for svc in &v.services {
        rows.push((
            "service",
            match &svc.address {
                Some(a) => format!("{} (guest port {}): http://{a}", svc.name, svc.port),
                None => format!("{} (guest port {}; not published)", svc.name, svc.port),
            },
        ));
    }
    rows.push(("console", v.console_log.clone()));
    if let Some(e) = &v.last_error {
        rows.push(("last error", e.clone()));
    }
    key_values(&rows);
}

fn create_params(name: &str, spec: &VmSpecArgs, start: bool) -> Result<VmCreateParams, CliError> {
    Ok(VmCreateParams {
        name: name.to_owned(),
        image: spec.image.clone(),
        kernel: spec.kernel.clone(),
        vcpus: spec.vcpus,
        memory_mib: spec
            .memory
            .as_deref()
            .map(|m| mib("--memory", m))
            .transpose()?,
        disk_size_bytes: spec
            .disk_size
            .as_deref()
            .map(|d| parse_size("--disk-size", d))
            .transpose()?,
        publish: spec.publish.clone(),
        network: spec
            .network
            .as_deref()
            .map(str::parse::<NetworkMode>)
            .transpose()
            .map_err(|e| CliError::BadParams(e.to_string()))?,
        egress: spec.egress.clone(),
        start: Some(start),
        from_snapshot: spec.from_snapshot.clone(),
        cold: spec.cold,
        wait_for: spec.wait,
        vmm: spec.vmm,
        workspace: spec
            .workspace
            .as_deref()
            .map(super::workspace::parse_spec)
            .transpose()?,
    })
}

/// Whether `--image` names a registry image (`busybox:1.36`,
/// `host:port/repo`, `repo@sha256:...`) rather than a local image: image
/// names have none of `:`, `/` and `@`.
fn is_reference(image: &str) -> bool {
    image.contains([':', '/', '@'])
}

/// `--image REF`: pulls the image unless it was pulled from that
/// reference already (as `docker run` does), and returns the spec naming
/// the local image.
fn with_pulled_image(
    client: &mut Client,
    spec: &VmSpecArgs,
    quiet: bool,
) -> Result<VmSpecArgs, CliError> {
    let Some(reference) = spec.image.as_deref().filter(|i| is_reference(i)) else {
        return Ok(spec.clone());
    };
    let begun = client.call::<methods::ImagePullBegin>(&ImagePullParams {
        reference: reference.to_owned(),
        if_missing: true,
        ..Default::default()
    })?;
    let target = begun.target.clone();
    if !quiet {
        note!("image {reference} is image {target} ({})", begun.op_id);
    }
    follow(client, begun, quiet)?;
    Ok(VmSpecArgs {
        image: Some(target),
        ..spec.clone()
    })
}

/// Begins `vm.create` and follows it to the end.
fn create(
    client: &mut Client,
    name: &str,
    spec: &VmSpecArgs,
    start: bool,
    quiet: bool,
) -> Result<VmView, CliError> {
    let spec = &with_pulled_image(client, spec, quiet)?;
    let params = create_params(name, spec, start)?;
    let begun = client.call::<methods::VmCreateBegin>(&params)?;
    if !quiet {
        match &params.from_snapshot {
            Some(s) => note!("creating vm {name} from snapshot {s} ({})", begun.op_id),
            None => note!("creating vm {name} ({})", begun.op_id),
        }
    }
    let done = follow(client, begun, quiet)?;
    let result = done.result.unwrap_or_default();
    serde_json::from_value(result)
        .map_err(|e| CliError::BadResponse(format!("vm.create result: {e}")))
}

/// How the words after `--` reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remote {
    /// `vm ssh`: as ssh passes them, joined with spaces into one command
    /// line for the guest's shell (`-- 'exit 7'` exits 7).
    CommandLine,
    /// `vm run`: a program and its arguments, each quoted so it arrives
    /// as one word, as through the agent (`-- sh -c 'exit 7'` exits 7).
    Argv,
}

fn ssh_command(info: &SshInfo, command: &[String], remote: Remote) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(info.client_args());
    cmd.args(remote_words(command, remote));
    cmd
}

/// What follows ssh's own options: nothing for a shell, else `--` and
/// the words (ssh joins them with spaces for the remote shell).
fn remote_words(command: &[String], remote: Remote) -> Vec<String> {
    if command.is_empty() {
        return Vec::new();
    }
    std::iter::once("--".to_owned())
        .chain(command.iter().map(|a| match remote {
            Remote::CommandLine => a.clone(),
            Remote::Argv => shell_quote(a),
        }))
        .collect()
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        return arg.to_owned();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// `vm run`: reuse or create, run the command, optionally delete, and exit
/// with the command's status.
fn vm_run(
    client: &mut Client,
    name: Option<&str>,
    rm: bool,
    spec: &VmSpecArgs,
    command: &[String],
) -> Result<(), CliError> {
    if spec.wait == Some(WaitFor::None) {
        return Err(CliError::BadParams(
            "vm run needs the guest's agent or SSH to run its command: use --wait agent or ssh (or vm create --wait none)"
                .into(),
        ));
    }
    let name = match name {
        Some(n) => n.to_owned(),
        None => format!("run-{}", random_suffix()),
    };
    let existing = match client.call::<methods::VmShow>(&VmRef { name: name.clone() }) {
        Ok(vm) => Some(vm),
        Err(CliError::Daemon(e)) if e.code == ErrorCode::NotFound => None,
        Err(e) => return Err(e),
    };
    let workspace = spec
        .workspace
        .as_deref()
        .map(super::workspace::parse_spec)
        .transpose()?;
    let reused = existing.is_some();
    match existing {
        Some(vm) if vm.state == VmState::Running => {}
        Some(vm) if vm.state == VmState::Paused => {
            client.call::<methods::VmResume>(&VmRef { name: name.clone() })?;
        }
        Some(_) => {
            followed::<methods::VmStartBegin>(client, "starting", &name, false)?;
        }
        None => {
            if command.is_empty() {
                check_entrypoint(client, spec)?;
            }
            create(client, &name, spec, true, false)?;
        }
    }
    if let (true, Some(ws)) = (reused, &workspace) {
        reuse_workspace(client, &name, ws)?;
    }
    // The command runs in the workspace when there is one.
    let cwd = workspace.as_ref().map(|w| {
        w.guest_path
            .clone()
            .unwrap_or_else(|| banger_proto::workspace::DEFAULT_GUEST_PATH.to_owned())
    });
    let vm = client.call::<methods::VmShow>(&VmRef { name: name.clone() })?;
    if vm.agent_shell {
        // The image's own env, working directory and user (and with no
        // command, its entrypoint and cmd), which the agent applies.
        use std::io::IsTerminal;
        let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        let result = super::guest::exec_in(client, &name, tty, command, cwd, Vec::new());
        after_run(client, &name, rm);
        return result;
    }
    if command.is_empty() {
        return Err(no_entrypoint(&vm.image));
    }
    if vm.agent {
        // Through the guest agent: no SSH handshake (about half a second
        // of guest CPU under TCG), same argv, root's home and a terminal
        // when this is one.
        use std::io::IsTerminal;
        let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        let env = vec![
            ("HOME".to_owned(), "/root".to_owned()),
            ("USER".to_owned(), "root".to_owned()),
            ("LOGNAME".to_owned(), "root".to_owned()),
        ];
        let cwd = cwd.unwrap_or_else(|| "/root".into());
        let result = super::guest::exec_in(client, &name, tty, command, Some(cwd), env);
        after_run(client, &name, rm);
        return result;
    }
    let info = client.call::<methods::VmSshInfo>(&VmRef { name: name.clone() })?;
    // Ignore Ctrl-C here: it goes to ssh (and the remote command); we still
    // want to clean up with --rm afterwards.
    let status = {
        let ignore = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sig = signal_hook::flag::register(signal_hook::consts::SIGINT, ignore)
            .map_err(CliError::Io)?;
        let in_dir: Vec<String>;
        let command = match &cwd {
            Some(dir) => {
                in_dir = ["sh", "-c", "cd \"$0\" && exec \"$@\"", dir]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .chain(command.iter().cloned())
                    .collect();
                &in_dir[..]
            }
            None => command,
        };
        let status = ssh_command(&info, command, Remote::Argv).status();
        signal_hook::low_level::unregister(sig);
        status.map_err(|source| CliError::Spawn {
            binary: "ssh".into(),
            source,
        })?
    };
    after_run(client, &name, rm);
    let code = status.code().unwrap_or(255);
    if code == 0 {
        Ok(())
    } else {
        Err(CliError::ChildExit(code))
    }
}

/// `vm run --workspace` on a VM that exists: the project put in when it
/// has no workspace yet, else the host's changes since pushed in.
fn reuse_workspace(
    client: &mut Client,
    name: &str,
    ws: &banger_proto::workspace::WorkspaceSpec,
) -> Result<(), CliError> {
    let pushed =
        client.call::<methods::VmWorkspacePush>(&banger_proto::workspace::WorkspacePushParams {
            name: name.to_owned(),
            host_dir: ws.host_dir.clone(),
            guest_path: ws.guest_path.clone(),
        });
    match pushed {
        Ok(view) => {
            super::workspace::print_view(&view);
            Ok(())
        }
        Err(CliError::Daemon(e)) if e.code == ErrorCode::Conflict => {
            let synced = client.call::<methods::VmWorkspaceSync>(&VmRef {
                name: name.to_owned(),
            })?;
            if !synced.changes.is_empty() {
                note!(
                    "pushed {} host change(s) into vm {name}:{}",
                    synced.changes.len(),
                    synced.guest_path
                );
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `vm run` without a command, before a VM is made for it: the image
/// must say what to run (a registry reference is checked once pulled).
fn check_entrypoint(client: &mut Client, spec: &VmSpecArgs) -> Result<(), CliError> {
    let name = match spec.image.as_deref() {
        Some(i) if is_reference(i) => return Ok(()),
        Some(i) => i.to_owned(),
        None => return Err(no_entrypoint("default")),
    };
    let image = client.call::<methods::ImageShow>(&NameParams { name: name.clone() })?;
    let runs_something = image.config.is_some_and(|c| {
        c.entrypoint.is_some_and(|e| !e.is_empty()) || c.cmd.is_some_and(|c| !c.is_empty())
    });
    if runs_something {
        Ok(())
    } else {
        Err(no_entrypoint(&name))
    }
}

fn no_entrypoint(image: &str) -> CliError {
    CliError::BadParams(format!(
        "image {image} has no entrypoint or cmd: give the command to run after `--`"
    ))
}

/// `vm ssh` to a guest without an SSH server: a shell (or `sh -c` of the
/// command line, as sshd would run it) through the agent, with a
/// terminal when this is one and no command was given (as ssh decides).
fn agent_shell(client: &mut Client, vm: &VmView, command: &[String]) -> Result<(), CliError> {
    use std::io::IsTerminal;
    note!(
        "vm {} runs no SSH server (image {}): this shell runs through its agent",
        vm.name,
        vm.image
    );
    let (argv, tty) = if command.is_empty() {
        let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        (vec!["/bin/sh".to_owned()], tty)
    } else {
        (
            vec!["/bin/sh".to_owned(), "-c".to_owned(), command.join(" ")],
            false,
        )
    };
    super::guest::exec_in(client, &vm.name, tty, &argv, None, Vec::new())
}

/// Deletes the VM with `--rm`, or says that a VM `vm run` made keeps
/// running.
fn after_run(client: &mut Client, name: &str, rm: bool) {
    if rm {
        // The run's own VM, still running: force.
        let deleted = client.call::<methods::VmDelete>(&VmDeleteParams {
            name: name.to_owned(),
            force: true,
        });
        if let Err(e) = deleted {
            eprintln!("warning: could not delete vm {name}: {}", e.display_chain());
        }
    } else if existing_was_new(name) {
        note!("vm {name} keeps running; remove it with: banger vm delete {name}");
    }
}

fn existing_was_new(name: &str) -> bool {
    name.starts_with("run-")
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 3];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Relays stdin/stdout to the VM's SSH port (for `ProxyCommand`).
///
/// Plain read/write loops on unbuffered duplicates of fds 0 and 1: Rust's
/// `Stdout` is line-buffered, and `io::copy`'s splice fast path lost the
/// client's side of the handshake here.
fn proxy(info: &SshInfo) -> Result<(), CliError> {
    use std::os::fd::AsFd;
    let stream = TcpStream::connect((info.host.as_str(), info.port)).map_err(CliError::Io)?;
    let _ = stream.set_nodelay(true);
    let dup = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(std::fs::File::from)
            .map_err(CliError::Io)
    };
    let stdin = dup(std::io::stdin().as_fd())?;
    let stdout = dup(std::io::stdout().as_fd())?;
    let up = stream.try_clone().map_err(CliError::Io)?;
    std::thread::spawn(move || {
        let _ = pump(stdin, &up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let _ = pump(&stream, stdout);
    Ok(())
}

/// Copies until end of file, writing each chunk as soon as it is read.
fn pump(mut from: impl Read, mut to: impl Write) -> std::io::Result<()> {
    let mut buf = [0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ssh_passes_its_command_line_as_ssh_does() {
        let words = |c: &[&str], r| {
            let c: Vec<String> = c.iter().map(|s| (*s).to_owned()).collect();
            remote_words(&c, r)
        };
        assert!(words(&[], Remote::CommandLine).is_empty());
        assert_eq!(words(&["exit 7"], Remote::CommandLine), ["--", "exit 7"]);
        assert_eq!(
            words(&["echo", "a b", "&&", "true"], Remote::CommandLine),
            ["--", "echo", "a b", "&&", "true"]
        );
        assert_eq!(
            words(&["sh", "-c", "exit 7"], Remote::Argv),
            ["--", "sh", "-c", "'exit 7'"]
        );
    }

    #[test]
    fn remote_arguments_are_quoted_once() {
        assert_eq!(shell_quote("echo"), "echo");
        assert_eq!(shell_quote("exit 7"), "'exit 7'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn create_params_carry_the_snapshot_and_cold() {
        let spec = VmSpecArgs {
            from_snapshot: Some("before".into()),
            ..VmSpecArgs::default()
        };
        let p = create_params("b", &spec, true).unwrap();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"name": "b", "start": true, "from_snapshot": "before"})
        );
        let spec = VmSpecArgs {
            cold: true,
            ..VmSpecArgs::default()
        };
        let p = create_params("b", &spec, false).unwrap();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"name": "b", "start": false, "cold": true})
        );
    }
}
