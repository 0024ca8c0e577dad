use std::time::Duration;

use banger_paths::Layout;

/// Everything the daemon needs to know at start; built by `bangerd`'s
/// `main` from flags and the environment.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub layout: Layout,
    /// The crate version, reported by `ping` and `daemon.status`.
    pub version: String,
    /// Identifies the exact sources the binary was built from; the CLI
    /// replaces a daemon whose build id differs from its own.
    pub build_id: String,
    /// How long a request line may take to arrive once it has started.
    pub read_timeout: Duration,
    /// How long a connection may sit with no request before it is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests before giving up.
    pub shutdown_grace: Duration,
}

impl DaemonConfig {
    pub fn new(layout: Layout, version: impl Into<String>, build_id: impl Into<String>) -> Self {
        Self {
            layout,
            version: version.into(),
            build_id: build_id.into(),
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
