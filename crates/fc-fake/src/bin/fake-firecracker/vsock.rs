//! The host side of Firecracker's hybrid vsock: a Unix socket at
//! `uds_path` where a host process asks for a guest port with
//! `CONNECT <port>\n`.
//!
//! There is no guest, so by default a request is answered by closing the
//! connection, as Firecracker does when no guest program listens on the
//! port. With `BANGER_FC_FAKE_VSOCK_ECHO=1` the "guest" listens on every
//! port: the answer is `OK <host port>\n` (Firecracker numbers host ports
//! from 2^30) and every byte sent afterwards comes back.

use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

/// The first host-side port Firecracker hands out.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// A `CONNECT` line is short; a longer one is not a request.
const MAX_REQUEST_LINE: usize = 64;

static NEXT_LOCAL_PORT: AtomicU32 = AtomicU32::new(FIRST_LOCAL_PORT);

/// Binds `uds_path` now (so the caller can answer with the error) and serves
/// it on `rt` until the returned handle aborts the task.
pub fn bind(uds_path: &Path, echo: bool, rt: &Handle) -> std::io::Result<AbortHandle> {
    let listener = StdUnixListener::bind(uds_path)?;
    listener.set_nonblocking(true)?;
    let _entered = rt.enter();
    let listener = UnixListener::from_std(listener)?;
    Ok(rt.spawn(accept_loop(listener, echo)).abort_handle())
}

async fn accept_loop(listener: UnixListener, echo: bool) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, echo));
            }
            Err(e) => {
                eprintln!("fake-firecracker: vsock accept failed: {e}");
                return;
            }
        }
    }
}

async fn connection(stream: UnixStream, echo: bool) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    let mut limited = (&mut read).take(MAX_REQUEST_LINE as u64);
    if limited.read_line(&mut line).await.is_err() {
        return;
    }
    let port = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix("CONNECT "))
        .and_then(|p| p.trim().parse::<u32>().ok());
    let Some(_port) = port else {
        // Firecracker drops a connection whose request it cannot parse.
        return;
    };
    if !echo {
        // No guest listens: the guest's reset closes the host connection.
        return;
    }
    let local_port = NEXT_LOCAL_PORT.fetch_add(1, Ordering::Relaxed);
    if write
        .write_all(format!("OK {local_port}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    // The peer hanging up ends the echo; nothing to report.
    let _ = tokio::io::copy(&mut read, &mut write).await;
}
