//! The MCP tools: one per daemon method a coding agent needs, plus
//! `vm_run` (create, run, delete) and file transfer through `vm.cp`.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use banger_proto::methods::{
    VmCp, VmCreateBegin, VmDelete, VmExecBegin, VmExecIo, VmForkBegin, VmList, VmPorts, VmShow,
    VmSnapshotBegin, VmStart, VmStop, VmWorkspaceApply, VmWorkspaceDiff, VmWorkspacePush,
    VmWorkspaceSync,
};
use banger_proto::snapshot::{SnapshotView, VmForkParams, VmForked, VmSnapshotParams};
use banger_proto::vm::{
    CpParams, ExecBeginParams, ExecIoParams, VmCreateParams, VmDeleteParams, VmRef, VmView,
};
use banger_proto::workspace::{DEFAULT_GUEST_PATH, WorkspacePushParams, WorkspaceSpec};
use banger_proto::{Egress, ErrorBody, ErrorCode, NetworkMode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ToolError, call, finish, follow_op, mint_op_id};
use crate::daemon_ctl::DaemonTarget;
use banger_proto::methods::NoParams;

/// At most this much of each output stream goes into a tool result; the
/// rest is counted (`stdout_truncated_bytes`), so a result stays a size
/// an agent can read.
const MAX_OUTPUT: usize = 1 << 20;
/// The largest file `vm_read_file` returns (a guest decides its size).
const MAX_READ: u64 = 8 << 20;
/// How long an exec waits, unless told.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct BangerTools {
    target: DaemonTarget,
    tool_router: ToolRouter<Self>,
}

/// What to run: a shell command line, or a program and its arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    /// The VM (name or id).
    pub name: String,
    /// A shell command line, run with `/bin/sh -c`.
    #[serde(default)]
    pub command: Option<String>,
    /// A program and its arguments, run as is (instead of `command`).
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// The working directory (absolute).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment variables to set.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Text given to the command's standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Kill the command after this many seconds (default 600).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// Stdin bytes per `vm.exec.io` call: base64 of it stays well inside the
/// daemon's 1 MiB request line.
const STDIN_CALL_BYTES: usize = 512 << 10;

/// `vm_run`: a fresh VM, one command in it, the VM deleted after.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// A shell command line, run with `/bin/sh -c`.
    #[serde(default)]
    pub command: Option<String>,
    /// A program and its arguments, run as is (instead of `command`).
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// The image (default: banger's default image).
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// What the VM may reach (default: the daemon's).
    #[serde(default)]
    pub egress: Option<Egress>,
    #[serde(default)]
    pub network: Option<NetworkMode>,
    /// A host project (absolute directory) to put into the VM first; the
    /// command then runs in it unless `cwd` says otherwise.
    #[serde(default)]
    pub workspace: Option<WorkspaceSpec>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub stdin: Option<String>,
    /// Kill the command after this many seconds (default 600).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileParams {
    /// The VM (name or id).
    pub name: String,
    /// Where in the guest (absolute).
    pub path: String,
    /// The file's contents: text, or base64 when `base64` is true.
    pub content: String,
    #[serde(default)]
    pub base64: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileParams {
    /// The VM (name or id).
    pub name: String,
    /// Which guest file (absolute).
    pub path: String,
}

/// How a command ended, and what it printed.
#[derive(Debug, Clone, Serialize)]
pub struct ExecOutcome {
    /// The exit status; absent when a signal ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Standard output as text (invalid UTF-8 replaced).
    pub stdout: String,
    pub stderr: String,
    /// Bytes of output beyond what a result carries, or dropped by the
    /// daemon for a slow reader.
    #[serde(skip_serializing_if = "is_zero")]
    pub stdout_truncated_bytes: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub stderr_truncated_bytes: u64,
    /// The command ran past its timeout and was killed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// The VM the command ran in (deleted since).
    pub vm: String,
    #[serde(flatten)]
    pub exec: ExecOutcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileContent {
    pub path: String,
    pub bytes: u64,
    /// `utf-8`, or `base64` for a file that is not text.
    pub encoding: &'static str,
    pub content: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmListResult {
    pub vms: Vec<VmView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortsResult {
    pub ports: Vec<banger_proto::agent::ListeningPort>,
}

fn bad_params(message: impl Into<String>, op_id: &str) -> ToolError {
    let mut body = ErrorBody::new(ErrorCode::BadParams, message);
    body.op_id = Some(op_id.to_owned());
    ToolError(body)
}

fn argv_of(
    command: Option<String>,
    argv: Option<Vec<String>>,
    op_id: &str,
) -> Result<Vec<String>, ToolError> {
    match (command, argv) {
        (Some(c), None) => Ok(vec!["/bin/sh".into(), "-c".into(), c]),
        (None, Some(a)) if !a.is_empty() => Ok(a),
        _ => Err(bad_params(
            "give exactly one of `command` (a shell command line) or `argv` (a program and its arguments)",
            op_id,
        )),
    }
}

/// A command to run in a VM ([`BangerTools::exec_in`]).
struct ExecRun {
    name: String,
    argv: Vec<String>,
    cwd: Option<String>,
    env: BTreeMap<String, String>,
    stdin: Option<String>,
    timeout: Duration,
}

/// The VM of a `vm_run` whose call was dropped before it finished: on
/// drop while armed, its create is cancelled (rolled back) and the VM
/// deleted, on a task of its own.
struct Disposable {
    target: DaemonTarget,
    name: String,
    create_op: String,
    armed: bool,
}

impl Drop for Disposable {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (target, name, create_op) = (
            self.target.clone(),
            self.name.clone(),
            std::mem::take(&mut self.create_op),
        );
        runtime.spawn(async move {
            let cancel = banger_proto::vm::OpRef { op_id: create_op };
            let _ = call::<banger_proto::methods::OpCancel>(&target, &cancel, &mint_op_id()).await;
            let delete = VmDeleteParams { name, force: true };
            // A create rolling back holds the VM's lock; its delete then
            // finds it gone or deletes what is left.
            let _ = call::<VmDelete>(&target, &delete, &mint_op_id()).await;
        });
    }
}

/// A private directory for one file transfer, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(op_id: &str) -> Result<Self, ToolError> {
        let dir = std::env::temp_dir().join(format!("banger-mcp-{}", mint_op_id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                ToolError::local(
                    ErrorCode::OperationFailed,
                    format!("make {}: {e}", dir.display()),
                    op_id,
                )
            })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Keeps up to [`MAX_OUTPUT`] of a stream; counts the rest.
fn keep(buf: &mut Vec<u8>, truncated: &mut u64, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    let kept = data.len().min(room);
    buf.extend_from_slice(&data[..kept]);
    *truncated += (data.len() - kept) as u64;
}

impl BangerTools {
    /// A tool that is one daemon method: `p` sent as its params with an op
    /// id of its own, the result (or the daemon's error) as the tool's.
    async fn forward<M>(&self, p: &M::Params) -> Result<CallToolResult, McpError>
    where
        M: banger_proto::methods::Method,
        M::Params: Serialize,
        M::Result: Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        Ok(finish(call::<M>(&self.target, p, &mint_op_id()).await))
    }
}

#[tool_router]
impl BangerTools {
    pub fn new(target: DaemonTarget) -> Self {
        Self {
            target,
            tool_router: Self::tool_router(),
        }
    }

    /// Runs a command in a VM through its agent, to the end.
    async fn exec_in(&self, run: ExecRun, op_id: &str) -> Result<ExecOutcome, ToolError> {
        let ExecRun {
            name,
            argv,
            cwd,
            env,
            stdin,
            timeout,
        } = run;
        let begun = call::<VmExecBegin>(
            &self.target,
            &ExecBeginParams {
                name,
                argv,
                tty: false,
                rows: None,
                cols: None,
                env: env.into_iter().collect(),
                cwd,
            },
            op_id,
        )
        .await?;
        let deadline = Instant::now() + timeout;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut out_cut, mut err_cut) = (0u64, 0u64);
        // Stdin not yet taken (the daemon takes what the guest's window
        // allows, `stdin_accepted`), and whether its end was sent.
        let mut pending: Vec<u8> = stdin.map(String::into_bytes).unwrap_or_default();
        let mut eof_sent = false;
        let mut timed_out = false;
        loop {
            let mut io = ExecIoParams {
                exec_id: begun.exec_id.clone(),
                wait_ms: Some(1000),
                ..Default::default()
            };
            let this_call = pending.len().min(STDIN_CALL_BYTES);
            if this_call > 0 {
                io.stdin = Some(B64.encode(&pending[..this_call]));
            }
            io.stdin_eof = !eof_sent && this_call == pending.len();
            if !timed_out && Instant::now() > deadline {
                io.signal = Some("KILL".into());
                timed_out = true;
            }
            let got = call::<VmExecIo>(&self.target, &io, &mint_op_id()).await?;
            if io.stdin.is_some() {
                let taken = got
                    .stdin_accepted
                    .map_or(this_call, |n| usize::try_from(n).unwrap_or(usize::MAX));
                pending.drain(..taken.min(this_call));
            }
            eof_sent |= io.stdin_eof && pending.is_empty();
            let decode = |s: &str| B64.decode(s).unwrap_or_default();
            keep(&mut out, &mut out_cut, &decode(&got.stdout));
            keep(&mut err, &mut err_cut, &decode(&got.stderr));
            out_cut += got.stdout_dropped;
            err_cut += got.stderr_dropped;
            if got.done {
                return Ok(ExecOutcome {
                    exit_code: got.exit_code,
                    signal: got.signal,
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&err).into_owned(),
                    stdout_truncated_bytes: out_cut,
                    stderr_truncated_bytes: err_cut,
                    timed_out,
                });
            }
        }
    }

    /// Begins the asynchronous operation `M` and waits for its result,
    /// its stages sent as progress.
    async fn begin_and_wait<M, R>(
        &self,
        params: &M::Params,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<R, ToolError>
    where
        M: banger_proto::methods::Method,
        M::Params: Serialize,
        M::Result: serde::de::DeserializeOwned + Send + 'static,
        R: serde::de::DeserializeOwned,
    {
        self.begin_and_wait_as::<M, R>(params, ctx, &mint_op_id())
            .await
    }

    /// [`Self::begin_and_wait`] under the op id `op_id`.
    async fn begin_and_wait_as<M, R>(
        &self,
        params: &M::Params,
        ctx: &RequestContext<RoleServer>,
        op_id: &str,
    ) -> Result<R, ToolError>
    where
        M: banger_proto::methods::Method,
        M::Params: Serialize,
        M::Result: serde::de::DeserializeOwned + Send + 'static,
        R: serde::de::DeserializeOwned,
    {
        let begin = async {
            call::<M>(&self.target, params, op_id).await?;
            Ok(())
        };
        follow_op(&self.target, op_id, ctx, begin).await
    }

    async fn create(
        &self,
        params: &VmCreateParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<VmView, ToolError> {
        self.begin_and_wait::<VmCreateBegin, _>(params, ctx).await
    }

    #[tool(
        description = "Create a VM and boot it (waits until its guest agent answers). Returns the VM. Long: reports each stage as progress."
    )]
    async fn vm_create(
        &self,
        Parameters(params): Parameters<VmCreateParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        Ok(finish(self.create(&params, &ctx).await))
    }

    #[tool(
        description = "Run one command in a fresh, disposable VM: create it, run the command (a shell `command` line or an `argv`), return its exit code, stdout and stderr, and delete the VM."
    )]
    async fn vm_run(
        &self,
        Parameters(p): Parameters<RunParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let op_id = mint_op_id();
        let outcome = async {
            let argv = argv_of(p.command, p.argv, &op_id)?;
            let name = format!("mcp-run-{}", &mint_op_id()[4..]);
            let create_op = mint_op_id();
            // Should this call's future be dropped mid-way (a request
            // the client cancels, the server shutting down), the guard
            // cancels the create and deletes the VM.
            let mut guard = Disposable {
                target: self.target.clone(),
                name: name.clone(),
                create_op: create_op.clone(),
                armed: true,
            };
            let params = VmCreateParams {
                name: name.clone(),
                image: p.image,
                vcpus: p.vcpus,
                memory_mib: p.memory_mib,
                egress: p.egress,
                network: p.network,
                workspace: p.workspace.clone(),
                ..Default::default()
            };
            let cwd = p.cwd.or_else(|| {
                p.workspace.as_ref().map(|w| {
                    w.guest_path
                        .clone()
                        .unwrap_or_else(|| DEFAULT_GUEST_PATH.to_owned())
                })
            });
            let created = self
                .begin_and_wait_as::<VmCreateBegin, VmView>(&params, &ctx, &create_op)
                .await;
            let ran = match created {
                Ok(_) => {
                    let timeout = p
                        .timeout_s
                        .map_or(DEFAULT_EXEC_TIMEOUT, Duration::from_secs);
                    let run = ExecRun {
                        name: name.clone(),
                        argv,
                        cwd,
                        env: p.env,
                        stdin: p.stdin,
                        timeout,
                    };
                    self.exec_in(run, &op_id).await
                }
                Err(e) => Err(e),
            };
            // Whatever happened, the VM goes (a failed create rolled back
            // already; gone is fine).
            let delete = VmDeleteParams {
                name: name.clone(),
                force: true,
            };
            let _ = call::<VmDelete>(&self.target, &delete, &mint_op_id()).await;
            guard.armed = false;
            ran.map(|exec| RunOutcome { vm: name, exec })
        }
        .await;
        Ok(finish(outcome))
    }

    #[tool(
        description = "Run a command in a running VM through its agent: a shell `command` line or an `argv`, with optional cwd, env, stdin and timeout_s. Returns exit_code (or signal), stdout and stderr (each up to 1 MiB; more is counted)."
    )]
    async fn vm_exec(
        &self,
        Parameters(p): Parameters<ExecParams>,
    ) -> Result<CallToolResult, McpError> {
        let op_id = mint_op_id();
        let outcome = async {
            let argv = argv_of(p.command, p.argv, &op_id)?;
            let timeout = p
                .timeout_s
                .map_or(DEFAULT_EXEC_TIMEOUT, Duration::from_secs);
            let run = ExecRun {
                name: p.name,
                argv,
                cwd: p.cwd,
                env: p.env,
                stdin: p.stdin,
                timeout,
            };
            self.exec_in(run, &op_id).await
        }
        .await;
        Ok(finish(outcome))
    }

    #[tool(
        description = "Write a file in a running VM (text, or base64 with `base64: true`). Returns what was written."
    )]
    async fn vm_write_file(
        &self,
        Parameters(p): Parameters<WriteFileParams>,
    ) -> Result<CallToolResult, McpError> {
        let op_id = mint_op_id();
        let outcome = async {
            let data = if p.base64 {
                B64.decode(p.content.as_bytes())
                    .map_err(|e| bad_params(format!("content is not base64: {e}"), &op_id))?
            } else {
                p.content.into_bytes()
            };
            let scratch = Scratch::new(&op_id)?;
            let host = scratch.0.join("file");
            std::fs::write(&host, &data).map_err(|e| {
                ToolError::local(
                    ErrorCode::OperationFailed,
                    format!("write {}: {e}", host.display()),
                    &op_id,
                )
            })?;
            let params = CpParams {
                name: p.name,
                to_guest: true,
                host_path: host.display().to_string(),
                guest_path: p.path,
                recursive: false,
            };
            call::<VmCp>(&self.target, &params, &op_id).await
        }
        .await;
        Ok(finish(outcome))
    }

    #[tool(
        description = "Read a file (at most 8 MiB) from a running VM. Returns its content as text, or as base64 (`encoding`) when it is not UTF-8."
    )]
    async fn vm_read_file(
        &self,
        Parameters(p): Parameters<ReadFileParams>,
    ) -> Result<CallToolResult, McpError> {
        let op_id = mint_op_id();
        let outcome = async {
            let scratch = Scratch::new(&op_id)?;
            let host = scratch.0.join("file");
            let params = CpParams {
                name: p.name,
                to_guest: false,
                host_path: host.display().to_string(),
                guest_path: p.path.clone(),
                recursive: false,
            };
            let copied = call::<VmCp>(&self.target, &params, &op_id).await?;
            if copied.bytes > MAX_READ {
                return Err(ToolError::local(
                    ErrorCode::Conflict,
                    format!(
                        "{} is {} bytes; vm_read_file returns at most {MAX_READ} (use vm_exec \
                         with head or tail, or `banger vm cp`)",
                        p.path, copied.bytes
                    ),
                    &op_id,
                ));
            }
            let data = std::fs::read(&host).map_err(|e| {
                ToolError::local(
                    ErrorCode::OperationFailed,
                    format!("read {}: {e}", host.display()),
                    &op_id,
                )
            })?;
            let bytes = data.len() as u64;
            Ok(match String::from_utf8(data) {
                Ok(text) => FileContent {
                    path: p.path,
                    bytes,
                    encoding: "utf-8",
                    content: text,
                },
                Err(e) => FileContent {
                    path: p.path,
                    bytes,
                    encoding: "base64",
                    content: B64.encode(e.into_bytes()),
                },
            })
        }
        .await;
        Ok(finish(outcome))
    }

    #[tool(description = "Every VM, with its state, image, shape and address.")]
    async fn vm_list(&self) -> Result<CallToolResult, McpError> {
        let outcome = call::<VmList>(&self.target, &NoParams, &mint_op_id())
            .await
            .map(|vms| VmListResult { vms });
        Ok(finish(outcome))
    }

    #[tool(description = "One VM: its state, image, shape, backend, address and last error.")]
    async fn vm_show(&self, Parameters(p): Parameters<VmRef>) -> Result<CallToolResult, McpError> {
        self.forward::<VmShow>(&p).await
    }

    #[tool(description = "Boot a stopped VM.")]
    async fn vm_start(&self, Parameters(p): Parameters<VmRef>) -> Result<CallToolResult, McpError> {
        self.forward::<VmStart>(&p).await
    }

    #[tool(description = "Stop a VM: a clean power-off, a bounded wait, then a kill.")]
    async fn vm_stop(&self, Parameters(p): Parameters<VmRef>) -> Result<CallToolResult, McpError> {
        self.forward::<VmStop>(&p).await
    }

    #[tool(
        description = "Delete a VM, its disks and host-key pin; a running VM only with `force` (killed first)."
    )]
    async fn vm_delete(
        &self,
        Parameters(p): Parameters<VmDeleteParams>,
    ) -> Result<CallToolResult, McpError> {
        self.forward::<VmDelete>(&p).await
    }

    #[tool(
        description = "Put a host project (an absolute directory) into a running VM that has none yet, at `guest_path` (default /root/work): in git, the tracked files and the untracked ones not ignored; elsewhere the directory minus .bangerignore."
    )]
    async fn vm_workspace_push(
        &self,
        Parameters(p): Parameters<WorkspacePushParams>,
    ) -> Result<CallToolResult, McpError> {
        self.forward::<VmWorkspacePush>(&p).await
    }

    #[tool(
        description = "The guest's changes to its workspace since it was put in: the changed files and a git patch (binary-safe)."
    )]
    async fn vm_workspace_diff(
        &self,
        Parameters(p): Parameters<VmRef>,
    ) -> Result<CallToolResult, McpError> {
        self.forward::<VmWorkspaceDiff>(&p).await
    }

    #[tool(
        description = "Apply the guest's workspace changes to the host project; refused (a conflict naming the files, nothing changed) when a file they touch changed on the host."
    )]
    async fn vm_workspace_apply(
        &self,
        Parameters(p): Parameters<VmRef>,
    ) -> Result<CallToolResult, McpError> {
        self.forward::<VmWorkspaceApply>(&p).await
    }

    #[tool(
        description = "Push the host project's changes since the workspace was put in into the guest; refused (a conflict naming the files, nothing pushed) when the guest changed one of the same files."
    )]
    async fn vm_workspace_sync(
        &self,
        Parameters(p): Parameters<VmRef>,
    ) -> Result<CallToolResult, McpError> {
        self.forward::<VmWorkspaceSync>(&p).await
    }

    #[tool(description = "Sockets listening in a running VM (protocol, address, port, process).")]
    async fn vm_ports(&self, Parameters(p): Parameters<VmRef>) -> Result<CallToolResult, McpError> {
        let outcome = call::<VmPorts>(&self.target, &p, &mint_op_id())
            .await
            .map(|ports| PortsResult { ports });
        Ok(finish(outcome))
    }

    #[tool(
        description = "Snapshot a running VM (memory, devices and disks); it keeps running. Returns the snapshot. Long: reports each stage as progress."
    )]
    async fn vm_snapshot(
        &self,
        Parameters(p): Parameters<VmSnapshotParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let outcome = self
            .begin_and_wait::<VmSnapshotBegin, SnapshotView>(&p, &ctx)
            .await;
        Ok(finish(outcome))
    }

    #[tool(
        description = "Fork a running VM: `count` new VMs (default 1) continuing from its current state, named `new_name` (then `new_name-2`, ...); the source keeps running. Long: reports each stage as progress."
    )]
    async fn vm_fork(
        &self,
        Parameters(p): Parameters<VmForkParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let outcome = self.begin_and_wait::<VmForkBegin, VmForked>(&p, &ctx).await;
        Ok(finish(outcome))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BangerTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("banger", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "banger: disposable Linux microVMs. vm_run runs one command in a fresh VM; \
                 vm_create then vm_exec, vm_write_file and vm_read_file work in a VM you keep; \
                 vm_delete removes it. Errors carry the daemon's code, message and op_id.",
            )
    }
}
