//! `fake-firecracker`: a stand-in for Firecracker's process in banger's
//! tests (see the crate documentation). It serves Firecracker's API on
//! `--api-sock`, checks every request against the API description and
//! keeps Firecracker's state machine; its stdout is the guest's serial
//! console.
//!
//! Its stderr lines (`fake-firecracker: schema violation: ...`) are an
//! interface tests grep, so they are written with `eprintln!`, not through
//! a logging library that would reformat them.

mod config;
mod guest;
mod snapshot;
mod vmm;
mod vsock;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use banger_fc_fake::{ApiDescription, VSOCK_ECHO_ENV};
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::vmm::{Fake, Reply};

/// Firecracker's limit on a request body.
const MAX_PAYLOAD: usize = 51200;
/// How long answers in flight get to finish when the process stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A fake Firecracker: Firecracker's API on a Unix socket, checked against
/// its API description, with no guest behind it.
#[derive(Debug, Parser)]
#[command(name = "fake-firecracker", disable_version_flag = true)]
struct Args {
    /// Path to the Unix socket serving the API (must not exist).
    #[arg(long, value_name = "PATH", required_unless_present = "version")]
    api_sock: Option<PathBuf>,
    /// MicroVM id: letters, digits and `-`, at most 64 characters.
    #[arg(long, default_value = "anonymous-instance", value_parser = parse_id)]
    id: String,
    /// Print `Firecracker v<version>-fake` and exit.
    #[arg(long)]
    version: bool,
    /// Firecracker's own log, from the start (created if missing), as
    /// `PUT /logger`'s `log_path` would set it later.
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,
    /// The log level (accepted; the fake logs the same lines at any).
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    level: Option<String>,
    /// Accepted, as Firecracker's.
    #[arg(long)]
    show_level: bool,
    /// Accepted, as Firecracker's.
    #[arg(long)]
    show_log_origin: bool,
}

/// Firecracker's log levels, case-insensitive.
fn parse_level(level: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["error", "warning", "info", "debug", "trace", "off"];
    if LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        Ok(level.to_owned())
    } else {
        Err(format!("Invalid log level: {level}"))
    }
}

/// Firecracker's instance id rule.
fn parse_id(id: &str) -> Result<String, String> {
    const MAX_LEN: usize = 64;
    if id.is_empty() || id.len() > MAX_LEN {
        return Err(format!(
            "Invalid len ({});  the length must be between 1 and {MAX_LEN}",
            id.len()
        ));
    }
    if let Some((i, c)) = id
        .chars()
        .enumerate()
        .find(|(_, c)| !(*c == '-' || c.is_alphanumeric()))
    {
        return Err(format!("Invalid char ({c}) at position {i}"));
    }
    Ok(id.to_owned())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let description = match ApiDescription::load(&ApiDescription::default_path()) {
        Ok(description) => description,
        Err(e) => {
            eprintln!("fake-firecracker: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    if args.version {
        println!("Firecracker v{}-fake", description.version());
        return ExitCode::SUCCESS;
    }
    let Some(api_sock) = args.api_sock else {
        // clap requires --api-sock unless --version is given.
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fake-firecracker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let vsock_echo = std::env::var_os(VSOCK_ECHO_ENV).is_some_and(|v| v == "1");
    let _ = (args.level, args.show_level, args.show_log_origin);
    let mut fake = Fake::new(description, args.id, vsock_echo, runtime.handle().clone());
    if let Some(path) = &args.log_path {
        if let Err(e) = fake.log_to(path) {
            eprintln!("fake-firecracker: Logger error: Failed to open target file: {e}");
            return ExitCode::FAILURE;
        }
    }
    runtime.block_on(serve(&api_sock, fake))
}

/// An error and its causes, each once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn serve(api_sock: &Path, fake: Fake) -> ExitCode {
    // Firecracker refuses a path that exists rather than replacing it.
    let listener = match UnixListener::bind(api_sock) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "fake-firecracker: Failed to open the API socket at: {}. Check that it is not \
                 already used. ({e})",
                api_sock.display()
            );
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "fake-firecracker: serving the API on {}",
        api_sock.display()
    );
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("fake-firecracker: cannot handle signals");
        remove_socket(api_sock);
        return ExitCode::FAILURE;
    };
    let fake = Arc::new(Mutex::new(fake));
    let power_off = Arc::new(Notify::new());
    let graceful = GracefulShutdown::new();
    let reason = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        eprintln!("fake-firecracker: API accept failed: {e}");
                        continue;
                    }
                };
                let fake = Arc::clone(&fake);
                let power_off = Arc::clone(&power_off);
                let service = service_fn(move |request| {
                    answer(Arc::clone(&fake), Arc::clone(&power_off), request)
                });
                let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        eprintln!("fake-firecracker: API connection failed: {e}");
                    }
                });
            }
            _ = power_off.notified() => break "the guest powered off",
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
        }
    };
    drop(listener);
    remove_socket(api_sock);
    // Let answers in flight (the 204 to SendCtrlAltDel) reach the client.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("fake-firecracker: API connections still open at exit");
    }
    eprintln!("fake-firecracker: exiting: {reason}");
    ExitCode::SUCCESS
}

fn remove_socket(api_sock: &Path) {
    if let Err(e) = std::fs::remove_file(api_sock) {
        eprintln!(
            "fake-firecracker: cannot remove the API socket {}: {e}",
            api_sock.display()
        );
    }
}

async fn answer(
    fake: Arc<Mutex<Fake>>,
    power_off: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let body = match Limited::new(request.into_body(), MAX_PAYLOAD)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let message = if e.is::<http_body_util::LengthLimitError>() {
                format!(
                    "Request payload is larger than the limit of {MAX_PAYLOAD} allowed by server."
                )
            } else {
                format!("Cannot read the request body: {e}")
            };
            return Ok(response(Reply::fault(message)));
        }
    };
    let reply = tokio::task::spawn_blocking(move || {
        // A panic in an earlier request leaves a state a test double can
        // still answer from; the panic itself was printed.
        let mut fake = fake.lock().unwrap_or_else(PoisonError::into_inner);
        fake.handle(&method, &path, &body)
    })
    .await
    .unwrap_or_else(|e| Reply::fault(format!("fake-firecracker: request handler failed: {e}")));
    if reply.power_off {
        power_off.notify_one();
    }
    Ok(response(reply))
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let body = reply
        .body
        .as_ref()
        .map(|b| Bytes::from(b.to_string()))
        .unwrap_or_default();
    let has_body = reply.body.is_some();
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = reply.status;
    if has_body {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}
