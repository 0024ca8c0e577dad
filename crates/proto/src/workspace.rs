//! Workspaces (docs/agents.md, "Workspaces"): a host project put into a
//! guest, the guest's changes back as a git patch, the host's pushed in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a project goes: `host_dir` (absolute) into the guest at
/// `guest_path` (absolute; default [`DEFAULT_GUEST_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    pub host_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_path: Option<String>,
}

/// Where a workspace goes in the guest unless told.
pub const DEFAULT_GUEST_PATH: &str = "/root/work";

/// `vm.workspace.push` params: the project in `spec` into the running VM
/// `name`, which has no workspace yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePushParams {
    pub name: String,
    pub host_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_path: Option<String>,
}

/// A VM's workspace: what was put in, and the commit (in the VM's private
/// record) the guest's changes are measured against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceView {
    pub vm: String,
    pub host_dir: String,
    pub guest_path: String,
    /// Files put in (the last push or sync: those it sent).
    pub files: u64,
    /// Bytes of file contents those files hold.
    pub bytes: u64,
    /// The base: a commit id in the VM's private workspace record.
    pub base: String,
}

/// How a file differs from the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One changed file, its path relative to the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceChange {
    pub path: String,
    pub change: ChangeKind,
}

/// `vm.workspace.diff` result: the guest's changes against the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceDiff {
    pub vm: String,
    pub host_dir: String,
    pub changes: Vec<WorkspaceChange>,
    /// The git patch (binary files as git's binary patches), when it is
    /// UTF-8 text, as it almost always is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// The patch in base64 when it is not UTF-8 (a text file in another
    /// encoding); exactly one of the two is set unless nothing changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_base64: Option<String>,
}

/// `vm.workspace.apply` result: the guest's changes now on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceApplied {
    pub vm: String,
    pub host_dir: String,
    pub changes: Vec<WorkspaceChange>,
}

/// `vm.workspace.sync` result: the host's changes since the base, now in
/// the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkspaceSynced {
    pub vm: String,
    pub guest_path: String,
    pub changes: Vec<WorkspaceChange>,
}
