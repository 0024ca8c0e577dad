//! A blocking client for Firecracker's API socket: hyper's HTTP/1 client
//! over a Unix stream, driven by a current-thread tokio runtime of its own,
//! since the [`crate::Vmm`] calls are synchronous (the daemon runs them in
//! `spawn_blocking`). One connection per request: Firecracker serves one
//! connection at a time, and a fresh one cannot inherit a half-read answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::api::{ApiFault, Request};

/// What went wrong with one API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot start the api client's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("connect to firecracker's api socket {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{request} on {socket}")]
    Http {
        request: String,
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    /// Method, path and headers are fixed strings of ours and ids checked
    /// to be path-safe, so this is not expected.
    #[error("{request}: cannot build the request")]
    Build {
        request: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("{request} on {socket}: no answer within {secs:.1}s")]
    Timeout {
        request: String,
        socket: PathBuf,
        secs: f64,
    },
    /// Firecracker refused the call: its status and `fault_message`.
    #[error("{request}: firecracker answered {status}: {fault_message}")]
    Fault {
        request: String,
        status: u16,
        fault_message: String,
    },
    #[error("{request}: unexpected answer {body:?}")]
    BadAnswer {
        request: String,
        body: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ApiError {
    /// Firecracker's own words, when it refused the call.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            ApiError::Fault { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }

    /// Nothing listens on the socket (yet, or any more).
    pub fn is_not_listening(&self) -> bool {
        matches!(self, ApiError::Connect { source, .. }
            if matches!(source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }
}

/// The API of one Firecracker process.
#[derive(Debug)]
pub struct ApiClient {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl ApiClient {
    pub fn new(socket: &Path) -> Result<Self, ApiError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ApiError::Runtime)?;
        Ok(ApiClient {
            socket: socket.to_path_buf(),
            runtime,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request` and returns the answer's body (empty for `204`).
    /// A `4xx`/`5xx` answer is [`ApiError::Fault`] with Firecracker's
    /// `fault_message`.
    pub fn send(&self, request: &Request, timeout: Duration) -> Result<Bytes, ApiError> {
        let what = request.describe();
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, self.exchange(request, &what)).await });
        let (status, body) = answer.map_err(|_| ApiError::Timeout {
            request: what.clone(),
            socket: self.socket.clone(),
            secs: timeout.as_secs_f64(),
        })??;
        if status.is_success() {
            return Ok(body);
        }
        let fault_message = serde_json::from_slice::<ApiFault>(&body)
            .map(|f| f.fault_message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
        Err(ApiError::Fault {
            request: what,
            status: status.as_u16(),
            fault_message,
        })
    }

    /// [`ApiClient::send`], with the answer's JSON read as `T`.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let body = self.send(request, timeout)?;
        serde_json::from_slice(&body).map_err(|source| ApiError::BadAnswer {
            request: request.describe(),
            body: String::from_utf8_lossy(&body).into_owned(),
            source,
        })
    }

    async fn exchange(
        &self,
        request: &Request,
        what: &str,
    ) -> Result<(hyper::StatusCode, Bytes), ApiError> {
        let http_err = |source| ApiError::Http {
            request: what.to_owned(),
            socket: self.socket.clone(),
            source,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ApiError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        // Drives the connection until the exchange is over; dropped with
        // the runtime's task set when `exchange` returns early.
        let driver = tokio::spawn(connection);
        let body = request
            .body()
            .map(|v| Bytes::from(v.to_string()))
            .unwrap_or_default();
        let has_body = !body.is_empty();
        let mut builder = hyper::Request::builder()
            .method(request.method().as_str())
            .uri(request.path())
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json");
        if has_body {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let http_request = builder
            .body(Full::new(body))
            .map_err(|source| ApiError::Build {
                request: what.to_owned(),
                source,
            })?;
        let response = sender.send_request(http_request).await.map_err(http_err)?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        driver.abort();
        Ok((status, bytes))
    }
}
