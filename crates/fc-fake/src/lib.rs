//! A fake Firecracker for banger's tests.
//!
//! CI cannot run a real Firecracker (no binary ships from the package
//! sources these machines reach, and no KVM that boots Linux), yet banger's
//! Firecracker backend must only ever send what Firecracker accepts. This
//! crate is the test double that makes that checkable:
//!
//! - [`ApiDescription`] reads Firecracker's own API description (the swagger
//!   file at `shared/reference/firecracker-api.yaml` beside the repository,
//!   see [`ApiDescription::default_path`]) and checks requests and answers
//!   against it. Object schemas are closed (`additionalProperties: false`),
//!   so a field Firecracker does not know fails.
//! - The `fake-firecracker` binary serves Firecracker's API on a Unix socket
//!   (`--api-sock PATH [--id ID]`), checks every request with the
//!   description (a violation answers `400` and prints
//!   `fake-firecracker: schema violation: METHOD PATH: ...` on stderr), and
//!   keeps Firecracker's state machine: pre-boot configuration, `InstanceStart`,
//!   pause and resume, snapshot create and load, `SendCtrlAltDel` (the
//!   guest powers off: exit 0), with Firecracker's error answers
//!   (`400 {"fault_message": ...}`). The "guest" writes to stdout as
//!   Firecracker's serial console does: the text lines found in an ELF
//!   kernel, or `fake-firecracker: guest booted`. `PUT /vsock` binds its Unix
//!   socket; with `BANGER_FC_FAKE_VSOCK_ECHO=1` a `CONNECT <port>\n` there is
//!   answered `OK 1073741824\n` and echoed, otherwise closed (no guest
//!   listens).
//! - [`fake_binary`] finds that binary from another crate's tests.
//!
//! What it does not do: run a guest (no KVM, no memory, no devices; a
//! snapshot is a small JSON file of its own and a sparse memory file), open
//! TAP devices (`host_dev_name` must name a device in the fake's network
//! namespace, else the request fails as Firecracker's does, but nothing is
//! attached to it), the Uffd memory backend,
//! balloon, MMDS contents, memory hotplug or metrics beyond a line per flush.
//! Those operations are still checked against the description and accepted
//! pre-boot where Firecracker accepts them, but have no effect.
//!
//! Where the fake follows Firecracker rather than a guess: the logger and
//! metrics files are created if missing (Firecracker does so since v1.14),
//! a `Diff` snapshot is taken without `track_dirty_pages` (Firecracker then
//! finds dirty pages another way), a vsock socket file is left behind at
//! exit and a restore binds `uds_path` anew (so a second process needs
//! `vsock_override` while the first one's socket file exists). Where it
//! follows the description rather than Firecracker: `PATCH /machine-config`
//! is described with the full `MachineConfiguration` schema, so a partial
//! patch that Firecracker accepts fails here.

mod description;

use std::path::PathBuf;

pub use description::{
    ApiDescription, DESCRIPTION_ENV, DescriptionError, RequestError, ResponseError, Violation,
    Violations, template_matches,
};

/// The environment variable that makes the fake's vsock answer
/// `CONNECT <port>` with `OK 1073741824` and echo what follows.
pub const VSOCK_ECHO_ENV: &str = "BANGER_FC_FAKE_VSOCK_ECHO";

/// The name of the fake's binary.
pub const BINARY_NAME: &str = "fake-firecracker";

/// The built `fake-firecracker` beside the running test executable, for
/// tests of other crates: the target directory holding `deps/` (e.g.
/// `target/debug`) is searched upwards from [`std::env::current_exe`].
///
/// Cargo builds a package's binaries for that package's own tests only, so
/// the binary is there once `cargo build -p banger-fc-fake` (or a workspace
/// build or test) has run; `None` otherwise.
pub fn fake_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .filter(|dir| dir.join("deps").is_dir())
        .map(|dir| dir.join(BINARY_NAME))
        .find(|candidate| candidate.is_file())
}
