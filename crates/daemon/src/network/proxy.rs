//! Loopback TCP proxies for ports a bridged VM publishes (`-p HOST:GUEST`).
//!
//! In user mode QEMU forwards published ports itself; a bridged guest has
//! its own address, so the daemon listens on `127.0.0.1:HOST` and copies
//! bytes to `GUEST_IP:GUEST`. This stays unprivileged (no DNAT rules) and
//! is restarted by reconcile when the daemon restarts; while the daemon is
//! down, published ports of bridged VMs do not answer (the guest itself
//! stays reachable at its address).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use banger_proto::{PortProto, PublishSpec};

use super::NetworkError;

#[derive(Debug, Default)]
pub(super) struct Proxies(Mutex<HashMap<String, CancellationToken>>);

impl Proxies {
    /// Binds every published port first (so a taken port fails the start
    /// cleanly), then serves them until [`Self::stop`] or shutdown.
    pub(super) fn start(
        &self,
        vm_id: &str,
        guest: Ipv4Addr,
        publish: &[PublishSpec],
        shutdown: &CancellationToken,
    ) -> Result<(), NetworkError> {
        let mut listeners = Vec::new();
        for p in publish {
            if p.is_udp() {
                return Err(NetworkError::UdpNeedsUserMode { port: p.host });
            }
            let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, p.host))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|_| NetworkError::PortInUse {
                    port: p.host,
                    proto: PortProto::Tcp,
                })?;
            let listener =
                TcpListener::from_std(std_listener).map_err(|source| NetworkError::Listen {
                    port: p.host,
                    source,
                })?;
            listeners.push((listener, SocketAddr::from((guest, p.guest))));
        }
        let token = shutdown.child_token();
        for (listener, target) in listeners {
            tokio::spawn(serve(listener, target, token.clone()));
        }
        let old = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm_id.to_owned(), token);
        if let Some(old) = old {
            old.cancel();
        }
        Ok(())
    }

    pub(super) fn stop(&self, vm_id: &str) {
        let token = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm_id);
        if let Some(token) = token {
            token.cancel();
        }
    }
}

async fn serve(listener: TcpListener, target: SocketAddr, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_flow_both_ways_until_stopped() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let guest_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let host_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxies = Proxies::default();
        let shutdown = CancellationToken::new();
        let publish = [PublishSpec {
            host: host_port,
            guest: guest_port,
            proto: PortProto::Tcp,
        }];
        proxies
            .start("vm1", Ipv4Addr::LOCALHOST, &publish, &shutdown)
            .unwrap();
        // The port is now ours: a second VM cannot publish it.
        assert!(
            proxies
                .start("vm2", Ipv4Addr::LOCALHOST, &publish, &shutdown)
                .is_err()
        );
        let mut c = TcpStream::connect(("127.0.0.1", host_port)).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        proxies.stop("vm1");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(TcpStream::connect(("127.0.0.1", host_port)).await.is_err());
    }

    #[test]
    fn udp_is_refused_in_bridged_mode() {
        let proxies = Proxies::default();
        let err = proxies
            .start(
                "vm1",
                Ipv4Addr::LOCALHOST,
                &[PublishSpec {
                    host: 1,
                    guest: 1,
                    proto: PortProto::Udp,
                }],
                &CancellationToken::new(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("--network user"), "{err}");
    }
}
