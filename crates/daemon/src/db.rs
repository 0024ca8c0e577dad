//! The store, shared by the services that need it: every call runs on a
//! blocking thread (SQLite does file I/O) under one std mutex, which is a
//! leaf lock and is never held across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};

use banger_store::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct Db(Arc<Mutex<Store>>);

impl Db {
    pub fn new(store: Store) -> Self {
        Self(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` with the store on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let this = self.clone();
        let work = move || {
            let store = this.lock();
            // A lock held elsewhere, a damaged file: named as such.
            f(&store).map_err(|e| e.in_db(store.path()))
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            // A panic in `f` is a bug: let it surface where it happened.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a runtime shutting down cancels a blocking task before
            // it starts; the daemon is exiting, nothing waits for this.
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// The store, for tests that set up rows directly.
    #[cfg(test)]
    pub(crate) fn lock_for_tests(&self) -> MutexGuard<'_, Store> {
        self.lock()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the connection usable (SQLite
        // rolls back the open statement), so a poisoned lock is taken over.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
