use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use banger_proto::helper::DEFAULT_HELPER_CONFIG;
use banger_proto::{Egress, PublishSpec, WaitFor};

use crate::exit::EXIT_CODES_HELP;

/// banger: disposable Linux microVMs for developers and coding agents.
///
/// The CLI starts bangerd when none answers: the one named by
/// BANGER_DAEMON_BIN (or --bangerd PATH, accepted by every command),
/// else the one beside this banger, else bangerd on PATH.
#[derive(Debug, Parser)]
#[command(name = "banger", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// The bangerd binary to start when no daemon runs
    /// (default: beside this banger, then PATH). Hidden from the help of
    /// every command: the top-level description mentions it.
    #[arg(
        long,
        global = true,
        env = "BANGER_DAEMON_BIN",
        value_name = "PATH",
        hide = true
    )]
    pub bangerd: Option<PathBuf>,

    /// Print only results and errors: no stage lines, progress or notes
    /// (exit codes are the same).
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        display_order = 900
    )]
    pub quiet: bool,

    /// Print more: the op id and time of every request to bangerd, and
    /// the CLI's debug log (BANGER_CLI_LOG, when set, wins).
    #[arg(short, long, global = true, display_order = 901)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the daemon answers (starting it if needed).
    Ping(JsonFlag),
    /// Manage the bangerd daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Create, run and manage VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Build and manage root filesystem images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Pull, import and manage guest kernels.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// List, show and delete saved VM states (snapshots, fork bases, warm
    /// templates).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// List asynchronous operations (creates, snapshots, restores, forks,
    /// builds, warm-ups, pulls).
    Ops(JsonFlag),
    /// Follow the daemon's events as they happen: VMs, images, kernels and
    /// snapshots made, changed or removed, operations' stages.
    Events(EventsArgs),
    /// A terminal UI: VMs, images, kernels, snapshots and operations,
    /// refreshed live; start, stop, delete, ssh, logs, create
    /// (docs/tui.md).
    Tui,
    /// Check what works on this host and what to do about it.
    Doctor(DoctorArgs),
    /// Print a block for ~/.ssh/config so `ssh NAME.vm` reaches VMs.
    SshConfig(JsonFlag),
    /// Show bridged networking: banger-helper, bridge, TAP pool, leases.
    Network(JsonFlag),
    /// Send one raw RPC request and print its result (for debugging).
    Rpc(RpcArgs),
    /// A VM's workspace: the guest's changes as a patch, applied to the
    /// host project, or the host's changes pushed in (docs/agents.md).
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Serve the Model Context Protocol on stdin/stdout, for coding
    /// agents: tools to run commands in fresh VMs, create, exec, read and
    /// write files, snapshot, fork and delete (docs/agents.md).
    Mcp,
    /// Install, remove or inspect banger-helper, the root helper.
    #[command(subcommand)]
    System(SystemCommand),
    /// Replace the installed binaries with a new build and restart the
    /// daemon (docs/update.md).
    ///
    /// The installed binaries are banger, bangerd, banger-helper and
    /// banger-agent beside this banger. Running VMs keep running. Refused
    /// while an operation is in flight; rolled back when the new daemon
    /// does not answer.
    Update(UpdateArgs),
    /// Show banger's configuration (~/.config/banger/config.toml).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script, e.g. `source <(banger completions
    /// bash)`; scripts/quickstart.sh and `system install` install them.
    Completions(CompletionsArgs),
    /// Write a man page for every command and subcommand into a directory
    /// (banger.1, banger-vm.1, banger-vm-create.1, ...).
    Man(ManArgs),
}

/// `NAME:PORT:COMMAND` for `image build --service` (COMMAND may hold
/// colons; the daemon checks the rest).
fn parse_service(s: &str) -> Result<banger_proto::vm::ImageService, String> {
    let mut parts = s.splitn(3, ':');
    let (Some(name), Some(port), Some(command)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected NAME:PORT:COMMAND".into());
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("bad port {port:?} in NAME:PORT:COMMAND"))?;
    Ok(banger_proto::vm::ImageService {
        name: name.to_owned(),
        port,
        command: command.to_owned(),
        workdir: "/root".to_owned(),
    })
}

/// `image build --preset` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    Opencode,
}

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Print the guest's changes to its workspace as a git patch
    /// (binary-safe; `git apply` takes it).
    Diff {
        /// The VM's name.
        name: String,
        /// Print only the changed files and how they changed.
        #[arg(long, conflicts_with = "json")]
        stat: bool,
        /// Print JSON (the files and the patch) instead.
        #[arg(long)]
        json: bool,
    },
    /// Apply the guest's changes to the host project; refused, with
    /// nothing changed, when a file they touch changed on the host since
    /// it was put in.
    Apply(VmNameJson),
    /// Push the host's changes since the workspace was put in (or last
    /// synced or applied) into the guest; refused, with nothing pushed,
    /// when the guest changed one of the same files.
    Sync(VmNameJson),
    /// Put a host project into a running VM that has none yet.
    Push {
        /// The VM's name.
        name: String,
        /// The project: DIR or DIR:GUESTPATH (default /root/work).
        #[arg(value_name = "DIR[:GUESTPATH]")]
        dir: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting's effective value and where it came from
    /// (default, the config file, the environment), and what overrides it.
    Show(JsonFlag),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (created if missing), e.g.
    /// ~/.local/share/man/man1.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Boot the default kernel under KVM to see whether KVM really works.
    #[arg(long)]
    pub probe: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct VmSpecArgs {
    /// Image to boot (default: the managed default image, built on first use).
    #[arg(long)]
    pub image: Option<String>,
    /// Kernel to boot: a catalog kernel (default: debian-cloud, pulled on
    /// first use) or one added with `banger kernel import`.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Virtual CPUs (default 1: under TCG more is slower).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory, e.g. 1024, 512M, 2G (plain numbers are MiB; default 1G).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Work disk size, e.g. 8G (plain numbers are MiB; default 8G).
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// Publish a guest port on the host's loopback: HOST:GUEST[/udp].
    #[arg(short = 'p', long = "publish", value_name = "HOST:GUEST")]
    pub publish: Vec<PublishSpec>,
    /// bridged (own address on banger's bridge, NAME.vm in DNS; needs
    /// banger-helper) or user (rootless, ports forwarded to loopback).
    /// Default: bridged when banger-helper answers, else user.
    #[arg(long, value_parser = ["bridged", "user"])]
    pub network: Option<String>,
    /// What the guest may reach: internet (public addresses only, the
    /// default), none (only banger's DNS), allow=LIST (these domains,
    /// IPv4 networks and HOST:PORTs, comma-separated) or open (everything
    /// the host reaches, host services included). See docs/security.md.
    #[arg(long, value_name = "MODE")]
    pub egress: Option<Egress>,
    /// Continue from this snapshot (memory, processes, disks) instead of
    /// booting; image, kernel and shape are the snapshot's.
    #[arg(long, value_name = "SNAP", conflicts_with = "cold")]
    pub from_snapshot: Option<String>,
    /// Boot cold even when the image has a warm template.
    #[arg(long)]
    pub cold: bool,
    /// What this start and later ones wait for once the VMM runs: none
    /// (return at once: for kernels or guests without banger's agent),
    /// agent (the guest agent) or ssh (the agent if the image has one,
    /// then sshd). Default: agent for images that boot banger's init,
    /// else ssh. Not for `vm run` (none); with --from-snapshot only none
    /// (the restored guest keeps the snapshot's identity; user mode).
    #[arg(long, value_name = "WHAT")]
    pub wait: Option<WaitFor>,
    /// The VMM: firecracker or qemu. Default: firecracker when it is
    /// installed, the vm is bridged and kvm boots the kernel under it,
    /// else qemu (the create's stages say which and why).
    #[arg(long, value_name = "VMM")]
    pub vmm: Option<banger_proto::Backend>,
    /// Put a host project into the guest once it is up, at /root/work or
    /// GUESTPATH: in git, the tracked files and the untracked ones it
    /// does not ignore; elsewhere the directory minus .bangerignore. Get
    /// the guest's changes back with `banger workspace diff|apply NAME`.
    #[arg(long, value_name = "DIR[:GUESTPATH]")]
    pub workspace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM and boot it, printing each stage as it happens.
    Create {
        /// Name (lowercase letters, digits and '-'; becomes the hostname).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        spec: VmSpecArgs,
        /// Create it stopped.
        #[arg(long)]
        no_start: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Boot a stopped VM.
    Start(VmNameJson),
    /// Power a VM off (ACPI, then SIGKILL after a bounded wait).
    Stop(VmNameJson),
    /// Send a signal to a VM's VMM process (default KILL).
    Kill {
        /// The VM's name.
        name: String,
        /// The signal, by name (KILL, TERM, INT, HUP...).
        #[arg(long, short, default_value = "KILL")]
        signal: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop and start a VM.
    Restart(VmNameJson),
    /// Freeze a running VM; its memory and processes wait as they are.
    Pause(VmNameJson),
    /// Continue a paused VM where it stopped.
    Resume(VmNameJson),
    /// Save a VM's memory, processes and disks; it keeps running.
    Snapshot {
        /// The VM's name.
        name: String,
        /// The snapshot's name (default: VM-YYYYMMDD-HHMMSS).
        #[arg(long = "name", value_name = "SNAP")]
        snapshot: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Roll a VM back to one of its snapshots (what it did since is lost).
    Restore {
        /// The VM's name.
        name: String,
        /// The snapshot to go back to.
        #[arg(value_name = "SNAP")]
        snapshot: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make new VMs that continue from a running VM's current state; it
    /// keeps running.
    Fork {
        /// The running VM to fork.
        name: String,
        /// The new VM's name; with --count above 1, NEW-1 ... NEW-N.
        #[arg(long = "name", value_name = "NEW")]
        new_name: String,
        /// How many forks (1 to 16).
        #[arg(long, value_name = "N")]
        count: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete VMs, their disks and host-key pins (a running one only with
    /// --force).
    #[command(alias = "rm")]
    Delete(VmDeleteArgs),
    /// Show one VM.
    Show(VmNameJson),
    /// List VMs.
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Change a stopped VM's vcpus, memory, disk size (disks only grow) or
    /// published ports.
    Edit {
        /// The VM's name.
        name: String,
        /// Virtual CPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory, e.g. 1024, 512M, 2G (plain numbers are MiB).
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
        /// Work disk size, e.g. 20G (plain numbers are MiB; it only grows).
        #[arg(long, value_name = "SIZE")]
        disk_size: Option<String>,
        /// Publish these ports instead of the VM's current ones:
        /// HOST:GUEST[/udp], repeatable.
        #[arg(short = 'p', long = "publish", value_name = "HOST:GUEST")]
        publish: Vec<PublishSpec>,
        /// Publish no ports any more.
        #[arg(long, conflicts_with = "publish")]
        no_publish: bool,
        /// A new egress policy: internet, none, allow=LIST or open.
        #[arg(long, value_name = "MODE")]
        egress: Option<Egress>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a VM's console log.
    ///
    /// The latest output: console.log.1 (the older generation, once the
    /// log passed console_log_max) then console.log. On a terminal the
    /// guest's control characters are shown escaped (`\x1b`) unless
    /// --raw.
    Logs(LogsOfVm),
    /// Open a shell in a VM, or run a command in it.
    ///
    /// As with ssh, the words after `--` are joined with spaces into one
    /// command line for the guest's shell: `vm ssh dev -- 'exit 7'` exits
    /// 7 and `vm ssh dev -- 'cd /tmp && ls'` works; quote what the local
    /// shell must not expand. The exit status is the command's.
    Ssh {
        /// The VM's name.
        name: String,
        /// Command line to run instead of a shell (joined with spaces).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Create (or reuse) a VM, run a command in it and exit with the
    /// command's exit code.
    ///
    /// Unlike `vm ssh`, the words after `--` are the program and its
    /// arguments, passed as they are (no shell, as `docker run` and
    /// `vm exec` do): `vm run -- sh -c 'exit 7'` exits 7. It runs through
    /// the guest agent, or over SSH (arguments quoted) when the image has
    /// no agent.
    Run {
        /// Reuse or create the VM of this name (default: a new run-XXXXXX).
        #[arg(long)]
        name: Option<String>,
        /// Delete the VM afterwards.
        #[arg(long)]
        rm: bool,
        #[command(flatten)]
        spec: VmSpecArgs,
        /// The command to run (for an image pulled from a registry, its
        /// entrypoint and cmd when none is given).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Resource use inside a VM, from its guest agent.
    Stats {
        /// The VM's name.
        name: String,
        /// Print a new sample every 2 s until interrupted.
        #[arg(long, short)]
        watch: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Listening TCP and UDP sockets inside a VM, with their process.
    ///
    /// Process names are the guest's: their control characters are
    /// shown escaped (`\x1b`) unless --raw.
    Ports(VmPortsArgs),
    /// Run a command in a VM through its guest agent (no SSH): stdout and
    /// stderr apart, stdin forwarded, its exit code returned.
    Exec {
        /// The VM's name.
        name: String,
        /// Run on a pseudo-terminal (interactive programs).
        #[arg(long, short)]
        tty: bool,
        /// Set an environment variable for the command (repeatable).
        #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Run the command in this guest directory (absolute; default /root).
        #[arg(short = 'w', long = "workdir", value_name = "DIR")]
        workdir: Option<String>,
        /// The command and its arguments (no shell).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a file into or out of a VM: `cp FILE NAME:/path` or
    /// `cp NAME:/path FILE` (a directory destination keeps the name);
    /// with -r, a directory and everything in it.
    Cp {
        /// What to copy: a host path or NAME:/path.
        src: String,
        /// Where to: NAME:/path or a host path.
        dst: String,
        /// Copy a directory, recursively (modes and symlinks kept).
        #[arg(short = 'r', long)]
        recursive: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Relay stdin/stdout to a VM's SSH port (ProxyCommand for ssh-config).
    #[command(hide = true)]
    SshProxy {
        /// The VM's name (NAME or NAME.vm).
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct VmNameJson {
    /// Its name.
    pub name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VmDeleteArgs {
    /// The VMs to delete.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Delete running VMs too (killed first).
    #[arg(long, short)]
    pub force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `KEY=VALUE` for `vm exec -e`: a name that is not empty and has no NUL
/// (the first `=` ends it).
fn parse_env(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("{s:?} is not KEY=VALUE"));
    };
    if key.is_empty() {
        return Err(format!("{s:?} has an empty variable name"));
    }
    if s.contains('\0') {
        return Err(format!("{s:?} contains a NUL byte"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[derive(Debug, Args)]
pub struct LogsOfVm {
    /// The VM's name.
    pub name: String,
    /// Keep printing new lines.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the last lines to print first (0: all).
    #[arg(short = 'n', long, default_value_t = 100)]
    pub lines: usize,
    /// Print JSON lines, one `{"line": TEXT}` object per console line.
    #[arg(long)]
    pub json: bool,
    /// Print the guest's bytes as they are, control characters and
    /// terminal escape sequences included, even on a terminal.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
}

#[derive(Debug, Args)]
pub struct VmPortsArgs {
    /// The VM's name.
    pub name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print process names as the guest gave them, control characters and
    /// terminal escape sequences included.
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a Debian bookworm image with mmdebstrap.
    Build {
        /// Image name (default: default).
        #[arg(long)]
        name: Option<String>,
        /// Extra packages, comma-separated.
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// Root filesystem size, e.g. 2G (default: contents plus headroom).
        #[arg(long, value_name = "SIZE")]
        size: Option<String>,
        /// A preset, whose packages, setup and services go in too:
        /// opencode (a coding-agent server on guest port 4096, in
        /// /root/work; every start waits for it).
        #[arg(long, value_name = "PRESET")]
        preset: Option<Preset>,
        /// A service of its own, NAME:PORT:COMMAND (repeatable): COMMAND
        /// (one shell line) runs at boot in /root, and every start waits
        /// for PORT to listen.
        #[arg(long = "service", value_name = "NAME:PORT:COMMAND", value_parser = parse_service)]
        services: Vec<banger_proto::vm::ImageService>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List images.
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Show one image.
    Show(VmNameJson),
    /// Delete an image no VM uses.
    #[command(alias = "rm")]
    Delete(VmNameJson),
    /// Make the image's warm template now, so new VMs of it start from it.
    Warm(VmNameJson),
    /// Pull an OCI image from a registry and make it an image (docs/images.md).
    Pull(ImagePullArgs),
    /// The blob cache of image pulls.
    #[command(subcommand)]
    Cache(ImageCacheCommand),
    /// Make a stopped VM's root disk (and with --with-work its work disk) a new image.
    Promote {
        /// The stopped VM.
        vm: String,
        /// The new image's name.
        #[arg(long)]
        name: String,
        /// The VM's work disk becomes the new image's work seed (default:
        /// the seed of the VM's image).
        #[arg(long)]
        with_work: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ImagePullArgs {
    /// The image, as Docker writes it: python:3.12-slim, HOST:PORT/REPO:TAG,
    /// REPO@sha256:HEX.
    pub reference: String,
    /// Image name (default: derived from the reference, e.g. python-3-12-slim).
    #[arg(long)]
    pub name: Option<String>,
    /// The platform to pick from a multi-platform image (default: the host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Plain HTTP to a registry that is not on loopback.
    #[arg(long)]
    pub insecure: bool,
    /// Registry user name, with the password read from stdin (default:
    /// ~/.docker/config.json, else anonymous).
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password from stdin (with --username).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCacheCommand {
    /// Empty the blob cache (pulled images keep working; a later pull
    /// downloads again).
    Prune {
        /// Only say what a prune would free.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots, fork bases and warm templates.
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Show one snapshot.
    Show(VmNameJson),
    /// Delete a snapshot no VM or snapshot needs.
    #[command(alias = "rm")]
    Delete(VmNameJson),
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// List the kernel catalog, what is pulled and what is imported.
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Pull a kernel from the catalog (default: debian-cloud).
    Pull {
        /// The catalog entry (see `kernel list`).
        name: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add a kernel you have, copied into banger's kernel store.
    ///
    /// For a Firecracker or PVM guest build, or a test kernel. The files
    /// are checked (a bzImage or an ELF vmlinux; an initrd file; a
    /// modules directory), then copied, so the originals may go. Boot it
    /// with `vm create --kernel NAME`, with `--wait none` if its guest
    /// runs no banger agent. Catalog pulls never touch it; `kernel delete`
    /// removes it.
    Import {
        /// The new kernel's name (lowercase letters, digits and '-'; not a
        /// catalog entry's).
        name: String,
        /// The kernel: a bzImage, or an uncompressed ELF vmlinux.
        #[arg(long, value_name = "PATH")]
        kernel: PathBuf,
        /// An initramfs to boot it with.
        #[arg(long, value_name = "PATH")]
        initrd: Option<PathBuf>,
        /// Its modules directory (/lib/modules/VERSION), kept beside it.
        #[arg(long, value_name = "DIR")]
        modules: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one kernel.
    Show(VmNameJson),
    /// Delete a pulled or imported kernel no VM uses.
    #[command(alias = "rm")]
    Delete(VmNameJson),
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show what the daemon is and where its files are; never starts one
    /// (exits 7 when none runs).
    Status(JsonFlag),
    /// Stop the daemon (running VMs keep running).
    Stop(JsonFlag),
    /// Print the daemon's log.
    Logs(LogsArgs),
    /// Run bangerd as a systemd user service: write
    /// ~/.config/systemd/user/bangerd.service and enable it; banger then
    /// starts the daemon through systemd.
    Install(DaemonUnitArgs),
    /// Stop and disable the systemd user service and remove its unit.
    Uninstall(DaemonUnitArgs),
}

#[derive(Debug, Args)]
pub struct DaemonUnitArgs {
    /// A unit of the user's own systemd instance (`systemctl --user`), the
    /// only kind banger writes.
    #[arg(long, required = true)]
    pub user: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the last lines to print first (0: all).
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// Print the log's JSON lines as they are (a line that is not JSON as
    /// `{"text": LINE}`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Resume after this event number (from an earlier run of this
    /// command in the same daemon run: pass --epoch too); the events the
    /// daemon still holds come first.
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// The daemon run --since belongs to (printed when a stream starts).
    #[arg(long, value_name = "EPOCH", requires = "since")]
    pub epoch: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per line: the subscription first, then each frame
    /// as the daemon sent it.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RpcArgs {
    /// Method name, e.g. daemon.status.
    pub method: String,
    /// Params as a JSON value (default: none).
    pub params: Option<String>,
    /// Use this op id instead of letting the daemon mint one.
    #[arg(long, value_name = "op-ID")]
    pub op_id: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("new_build").required(true).args(["from", "source"])))]
pub struct UpdateArgs {
    /// Take the new binaries from DIR: a build output (target/release;
    /// banger-agent there, or where scripts/build-agent.sh puts it) or
    /// an unpacked release with all four side by side.
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// Build the banger checkout in DIR first, as scripts/quickstart.sh
    /// does (release build, then scripts/build-agent.sh), and take its
    /// binaries.
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Check the new binaries and say what would be replaced; change
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The root helper's config: when it exists, the helper is installed
    /// and must be updated too (`sudo banger system install`, which
    /// update runs itself when run as root).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_HELPER_CONFIG)]
    pub helper_config: PathBuf,
    /// Print a JSON summary (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Install banger-helper (as root): copy the binaries to PREFIX/bin,
    /// write the helper's config and start it (systemd units when systemd
    /// runs, else a background process). Running it again replaces the
    /// running helper.
    Install(SystemInstallArgs),
    /// Stop banger-helper, remove banger's TAPs, bridge and NAT table, the
    /// units, the config and the installed binaries (as root).
    Uninstall(SystemUninstallArgs),
    /// Is banger-helper installed, running, and willing to serve you?
    #[command(after_help = SYSTEM_STATUS_EXIT_HELP)]
    Status(SystemStatusArgs),
}

/// Exit codes of `banger system status`.
pub const SYSTEM_STATUS_EXIT_HELP: &str = "\
Exit codes:
  0    the helper answers and serves this user
  3    installed, but the helper does not answer
  4    not installed (no config) and nothing answers on the socket
  6    the helper answers but refuses this user (uid not allowed)";

#[derive(Debug, Args)]
pub struct SystemInstallArgs {
    /// The user the helper serves, by name or uid
    /// (default: the sudo caller, else the invoking user).
    #[arg(long, value_name = "NAME|UID")]
    pub user: Option<String>,
    /// Install the binaries into DIR/bin.
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Where to write the helper's config.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_HELPER_CONFIG)]
    pub config: PathBuf,
    /// The helper's socket (default: the existing config's, else
    /// /run/banger-helper/helper.sock).
    #[arg(long, value_name = "PATH", env = "BANGER_HELPER_SOCKET")]
    pub socket: Option<PathBuf>,
    /// The bridge the helper manages (default: the existing config's, else banger0).
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// The VMs' subnet (default: the existing config's, else 10.77.0.0/24).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Print a JSON summary (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SystemUninstallArgs {
    /// Remove the binaries from DIR/bin.
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// The helper's config.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_HELPER_CONFIG)]
    pub config: PathBuf,
    /// The helper's socket when the config is gone (default: the config's).
    #[arg(long, value_name = "PATH", env = "BANGER_HELPER_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Leave banger, bangerd and banger-helper in PREFIX/bin.
    #[arg(long)]
    pub keep_binaries: bool,
    /// Print a JSON summary (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SystemStatusArgs {
    /// Where the binaries were installed (DIR/bin).
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// The helper's config.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_HELPER_CONFIG)]
    pub config: PathBuf,
    /// The helper's socket (default: the config's, else
    /// /run/banger-helper/helper.sock).
    #[arg(long, value_name = "PATH", env = "BANGER_HELPER_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(args: &[&str]) -> Command {
        let argv = std::iter::once("banger").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn image_build_takes_a_preset_and_services() {
        let Command::Image(ImageCommand::Build {
            preset, services, ..
        }) = parse(&[
            "image",
            "build",
            "--preset",
            "opencode",
            "--service",
            "web:8000:python3 -m http.server 8000 --bind ::",
        ])
        else {
            panic!("not image build");
        };
        assert_eq!(preset, Some(Preset::Opencode));
        assert_eq!(services.len(), 1);
        assert_eq!((services[0].name.as_str(), services[0].port), ("web", 8000));
        assert_eq!(services[0].command, "python3 -m http.server 8000 --bind ::");
        for bad in ["web:http:cmd", "web:8000"] {
            let argv = ["banger", "image", "build", "--service", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad}");
        }
    }

    fn refused(args: &[&str]) -> clap::error::ErrorKind {
        let argv = std::iter::once("banger").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => panic!("{args:?} parsed as {:?}", cli.command),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command's path (`vm list`) and the command, depth first.
    fn all_commands(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.to_owned(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name()).trim().to_owned();
            all_commands(sub, &p, out);
        }
    }

    #[test]
    fn every_option_and_argument_has_a_description() {
        let mut cli = Cli::command();
        cli.build();
        let mut commands = Vec::new();
        all_commands(&cli, "", &mut commands);
        let mut missing = Vec::new();
        for (path, cmd) in &commands {
            if cmd.get_about().is_none() && !path.is_empty() && cmd.get_name() != "help" {
                missing.push(format!("`banger {path}` itself"));
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("`banger {path}`: {}", arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "without a description: {missing:#?}");
    }

    #[test]
    fn bangerd_is_hidden_from_every_help_but_still_works() {
        let mut cli = Cli::command();
        cli.build();
        let mut commands = Vec::new();
        all_commands(&cli, "", &mut commands);
        for (path, mut cmd) in commands {
            let help = cmd.render_long_help().to_string();
            let options = help.split("Options:").nth(1).unwrap_or_default();
            assert!(!options.contains("--bangerd"), "`banger {path}`:\n{help}");
        }
        let top = Cli::command().render_long_help().to_string();
        assert!(top.contains("BANGER_DAEMON_BIN"), "{top}");
        let cli =
            Cli::try_parse_from(["banger", "vm", "list", "--bangerd", "/x/bangerd", "-q"]).unwrap();
        assert_eq!(
            cli.bangerd.as_deref(),
            Some(std::path::Path::new("/x/bangerd"))
        );
        assert!(cli.quiet && !cli.verbose);
        let cli = Cli::try_parse_from(["banger", "-v", "ops"]).unwrap();
        assert!(cli.verbose);
        assert!(Cli::try_parse_from(["banger", "-q", "-v", "ops"]).is_err());
    }

    #[test]
    fn pause_and_resume() {
        let Command::Vm(VmCommand::Pause(a)) = parse(&["vm", "pause", "dev"]) else {
            panic!("not vm pause");
        };
        assert_eq!((a.name.as_str(), a.json), ("dev", false));
        let Command::Vm(VmCommand::Resume(a)) = parse(&["vm", "resume", "dev", "--json"]) else {
            panic!("not vm resume");
        };
        assert_eq!((a.name.as_str(), a.json), ("dev", true));
    }

    #[test]
    fn snapshot_restore_and_fork() {
        let Command::Vm(VmCommand::Snapshot {
            name,
            snapshot,
            json,
        }) = parse(&["vm", "snapshot", "dev"])
        else {
            panic!("not vm snapshot");
        };
        assert_eq!((name.as_str(), snapshot, json), ("dev", None, false));
        let Command::Vm(VmCommand::Snapshot { name, snapshot, .. }) =
            parse(&["vm", "snapshot", "dev", "--name", "before", "--json"])
        else {
            panic!("not vm snapshot");
        };
        assert_eq!(
            (name.as_str(), snapshot.as_deref()),
            ("dev", Some("before"))
        );

        let Command::Vm(VmCommand::Restore {
            name,
            snapshot,
            json,
        }) = parse(&["vm", "restore", "dev", "before"])
        else {
            panic!("not vm restore");
        };
        assert_eq!(
            (name.as_str(), snapshot.as_str(), json),
            ("dev", "before", false)
        );
        assert_eq!(
            refused(&["vm", "restore", "dev"]),
            clap::error::ErrorKind::MissingRequiredArgument
        );

        let Command::Vm(VmCommand::Fork {
            name,
            new_name,
            count,
            json,
        }) = parse(&[
            "vm", "fork", "dev", "--name", "try", "--count", "3", "--json",
        ])
        else {
            panic!("not vm fork");
        };
        assert_eq!(
            (name.as_str(), new_name.as_str(), count, json),
            ("dev", "try", Some(3), true)
        );
        assert_eq!(
            refused(&["vm", "fork", "dev"]),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            refused(&["vm", "fork", "dev", "--name", "try", "--count", "two"]),
            clap::error::ErrorKind::ValueValidation
        );
    }

    #[test]
    fn create_and_run_from_a_snapshot_or_cold() {
        let Command::Vm(VmCommand::Create { name, spec, .. }) =
            parse(&["vm", "create", "--name", "b", "--from-snapshot", "before"])
        else {
            panic!("not vm create");
        };
        assert_eq!(name, "b");
        assert_eq!(spec.from_snapshot.as_deref(), Some("before"));
        assert!(!spec.cold);
        let Command::Vm(VmCommand::Create { spec, .. }) =
            parse(&["vm", "create", "--name", "b", "--cold"])
        else {
            panic!("not vm create");
        };
        assert!(spec.cold && spec.from_snapshot.is_none());
        assert_eq!(
            refused(&[
                "vm",
                "create",
                "--name",
                "b",
                "--cold",
                "--from-snapshot",
                "s"
            ]),
            clap::error::ErrorKind::ArgumentConflict
        );

        let Command::Vm(VmCommand::Run { spec, command, .. }) =
            parse(&["vm", "run", "--cold", "--", "true"])
        else {
            panic!("not vm run");
        };
        assert!(spec.cold);
        assert_eq!(command, ["true"]);
        let Command::Vm(VmCommand::Run { spec, .. }) =
            parse(&["vm", "run", "--from-snapshot", "s", "--", "true"])
        else {
            panic!("not vm run");
        };
        assert_eq!(spec.from_snapshot.as_deref(), Some("s"));
    }

    #[test]
    fn delete_several_exec_env_and_workdir_cp_recursive_edit_ports() {
        let Command::Vm(VmCommand::Delete(a)) = parse(&["vm", "rm", "a", "b", "-f", "--json"])
        else {
            panic!("not vm delete");
        };
        assert_eq!(a.names, ["a", "b"]);
        assert!(a.force && a.json);
        assert_eq!(
            refused(&["vm", "delete"]),
            clap::error::ErrorKind::MissingRequiredArgument
        );

        let Command::Vm(VmCommand::Exec {
            env,
            workdir,
            command,
            ..
        }) = parse(&[
            "vm", "exec", "dev", "-e", "A=1", "--env", "B=x=y", "-w", "/tmp", "--", "env",
        ])
        else {
            panic!("not vm exec");
        };
        assert_eq!(env, [("A".into(), "1".into()), ("B".into(), "x=y".into())]);
        assert_eq!(workdir.as_deref(), Some("/tmp"));
        assert_eq!(command, ["env"]);
        for bad in ["NOVALUE", "=x"] {
            assert_eq!(
                refused(&["vm", "exec", "dev", "-e", bad, "--", "env"]),
                clap::error::ErrorKind::ValueValidation,
                "{bad}"
            );
        }

        let Command::Vm(VmCommand::Cp { recursive, .. }) =
            parse(&["vm", "cp", "-r", "dir", "dev:/root/"])
        else {
            panic!("not vm cp");
        };
        assert!(recursive);

        let Command::Vm(VmCommand::Edit {
            publish,
            no_publish,
            ..
        }) = parse(&["vm", "edit", "dev", "-p", "8080:80", "-p", "53:53/udp"])
        else {
            panic!("not vm edit");
        };
        assert_eq!(publish.len(), 2);
        assert!(!no_publish);
        let Command::Vm(VmCommand::Edit { no_publish, .. }) =
            parse(&["vm", "edit", "dev", "--no-publish"])
        else {
            panic!("not vm edit");
        };
        assert!(no_publish);
        assert_eq!(
            refused(&["vm", "edit", "dev", "--no-publish", "-p", "1:1"]),
            clap::error::ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn snapshots_and_warm_images() {
        for list in [["snapshot", "list"], ["snapshot", "ls"]] {
            let Command::Snapshot(SnapshotCommand::List(a)) = parse(&list) else {
                panic!("not snapshot list");
            };
            assert!(!a.json);
        }
        let Command::Snapshot(SnapshotCommand::Show(a)) =
            parse(&["snapshot", "show", "before", "--json"])
        else {
            panic!("not snapshot show");
        };
        assert_eq!((a.name.as_str(), a.json), ("before", true));
        for delete in ["delete", "rm"] {
            let Command::Snapshot(SnapshotCommand::Delete(a)) =
                parse(&["snapshot", delete, "before"])
            else {
                panic!("not snapshot delete");
            };
            assert_eq!(a.name, "before");
        }
        let Command::Image(ImageCommand::Warm(a)) = parse(&["image", "warm", "default"]) else {
            panic!("not image warm");
        };
        assert_eq!((a.name.as_str(), a.json), ("default", false));
    }
}
