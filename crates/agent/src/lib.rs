//! `banger-agent`: the agent inside every guest VM (docs/agent.md).
//!
//! It speaks the framed protocol of [`banger_proto::agent`] over the
//! virtio-serial port named [`banger_proto::agent::AGENT_PORT_NAME`]
//! (or stdin/stdout, or any device path, for tests): health, stats,
//! listening ports, exec (pipes or a pty) and file and directory copy in
//! and out; and,
//! for pause/resume, snapshots and restores, setting the clock, freezing
//! and thawing filesystems and a restored guest's new identity, through
//! the [`host::Host`] seam (faked in tests).
//!
//! Threads: the caller's thread reads the port and dispatches frames
//! ([`Agent::feed`]); one writer thread owns writing ([`Outbox`]);
//! every exec and file transfer runs in threads of its own. Nothing here
//! panics on any input.

pub mod log;

mod dispatch;
mod exec;
pub mod fake;
mod files;
mod guest_ops;
pub mod host;
pub mod image_config;
pub mod init;
mod outbox;
pub mod procfs;
pub mod sysinfo;
pub mod transport;
mod tree;

pub use dispatch::Agent;
pub use outbox::{Outbox, Sink};

/// Stack size of the agent's threads: they hold small buffers on the
/// heap and recurse nowhere, so the default 2 MiB is wasted address space.
const THREAD_STACK: usize = 256 * 1024;

/// Starts a named thread with a small stack.
pub(crate) fn spawn<F>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(THREAD_STACK)
        .spawn(f)
}

/// `error: cause: cause…`: an error and its sources, each once (the
/// crate's error types leave their sources out of their messages).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
