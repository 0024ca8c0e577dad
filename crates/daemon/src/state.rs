use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use banger_store::Store;
use tokio_util::sync::CancellationToken;

use crate::DaemonConfig;

/// What every request handler can reach.
///
/// Lock order: `store` is a leaf; it is only ever taken inside
/// `spawn_blocking` and never held across an `.await`.
#[derive(Debug)]
pub struct DaemonState {
    pub config: DaemonConfig,
    pub started: Instant,
    store: Mutex<Store>,
    /// Fired by `daemon.shutdown` or a signal; the accept loop and every
    /// idle connection watch it.
    pub shutdown: CancellationToken,
    #[cfg(test)]
    pub probe: crate::handlers::test_methods::Probe,
}

impl DaemonState {
    pub fn new(config: DaemonConfig, store: Store, shutdown: CancellationToken) -> Self {
        Self {
            config,
            started: Instant::now(),
            store: Mutex::new(store),
            shutdown,
            #[cfg(test)]
            probe: Default::default(),
        }
    }

    /// Runs `f` with the store on a blocking thread.
    pub async fn with_store<T, F>(self: &Arc<Self>, f: F) -> Result<T, crate::dispatch::RpcError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, banger_store::StoreError> + Send + 'static,
    {
        let state = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&state.lock_store()))
            .await
            .map_err(|e| crate::dispatch::RpcError::internal(format!("store task failed: {e}")))?
            .map_err(Into::into)
    }

    fn lock_store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the connection usable (SQLite
        // rolls back the open statement), so a poisoned lock is taken over.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}
