//! A small read-only TFTP server on tokio, for the iPXE binaries.
//!
//! RRQ only (WRQ is refused), `octet` mode only, with the options iPXE and
//! other clients use: `blksize` (RFC 2348), `tsize` and `timeout`
//! (RFC 2349) and `windowsize` (RFC 7440). Files come from memory or from a
//! directory; names are checked lexically (no absolute paths, no `..`) and,
//! for directories, resolved so that symlinks cannot lead out of the root
//! ([`crate::fsroot`]). Each transfer runs on its own task with its own
//! socket (a fresh transfer ID), with a bound on concurrent transfers.
//!
//! Why not the `tftpd` crate the design card named: docs/decisions.md.

pub mod packet;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::fsroot::{self, PathError};
use packet::{ClientPacket, ErrorCode, Mode, Request, RequestKind};

/// Largest file served (block numbers roll over, so this is a sanity cap).
const MAX_FILE: u64 = 256 << 20;

/// Where files come from.
#[derive(Debug, Clone)]
pub enum TftpSource {
    /// Named blobs (e.g. the iPXE binaries embedded or loaded at start-up).
    Memory(Arc<HashMap<String, Bytes>>),
    /// A directory; symlinks inside it are followed only if they stay in it.
    Directory(PathBuf),
}

impl TftpSource {
    /// Loads a file, or says why not.
    pub async fn load(&self, name: &str) -> Result<Bytes, PathError> {
        fsroot::check_relative(name)?;
        match self {
            TftpSource::Memory(files) => files.get(name).cloned().ok_or(PathError::NotFound {
                path: name.to_string(),
            }),
            TftpSource::Directory(root) => {
                let (root, name) = (root.clone(), name.to_string());
                tokio::task::spawn_blocking(move || {
                    let path = fsroot::resolve(&root, &name)?;
                    let io_err = |source| PathError::Io {
                        path: name.clone(),
                        source,
                    };
                    let len = path.metadata().map_err(io_err)?.len();
                    if len > MAX_FILE {
                        return Err(PathError::Refused {
                            path: name.clone(),
                            reason: "file too large for TFTP",
                        });
                    }
                    std::fs::read(&path).map(Bytes::from).map_err(io_err)
                })
                .await
                .map_err(|e| PathError::Io {
                    path: String::new(),
                    source: io::Error::other(e),
                })?
            }
        }
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Usually `<boot LAN address>:69`.
    pub listen: SocketAddr,
    /// Bind the sockets to this interface (`SO_BINDTODEVICE`).
    pub interface: Option<String>,
    /// Largest `blksize` granted; 1468 fits a 1500-byte MTU.
    pub max_blksize: u16,
    /// Largest `windowsize` granted.
    pub max_window: u16,
    /// Retransmission timeout unless the client negotiates `timeout`.
    pub timeout: Duration,
    /// Retransmissions before a transfer is abandoned.
    pub retries: u32,
    /// Concurrent transfers; more are refused with an error.
    pub max_transfers: usize,
}

impl TftpConfig {
    pub fn new(listen: SocketAddr) -> TftpConfig {
        TftpConfig {
            listen,
            interface: None,
            max_blksize: 1468,
            max_window: 64,
            timeout: Duration::from_secs(2),
            retries: 5,
            max_transfers: 64,
        }
    }
}

/// Setting the server up failed.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("creating a TFTP socket")]
    Create(#[source] io::Error),
    #[error("binding SO_BINDTODEVICE {interface:?}")]
    BindDevice {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("binding the TFTP socket to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

fn udp_socket(addr: SocketAddr, interface: Option<&str>) -> Result<UdpSocket, TftpError> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(TftpError::Create)?;
    if let Some(dev) = interface {
        s.bind_device(Some(dev.as_bytes()))
            .map_err(|source| TftpError::BindDevice {
                interface: dev.to_string(),
                source,
            })?;
    }
    s.set_nonblocking(true).map_err(TftpError::Create)?;
    s.bind(&addr.into())
        .map_err(|source| TftpError::Bind { addr, source })?;
    UdpSocket::from_std(s.into()).map_err(TftpError::Create)
}

/// A bound TFTP server; [`TftpServer::serve`] runs it.
pub struct TftpServer {
    socket: UdpSocket,
    source: TftpSource,
    config: TftpConfig,
}

impl TftpServer {
    pub fn bind(config: TftpConfig, source: TftpSource) -> Result<TftpServer, TftpError> {
        let socket = udp_socket(config.listen, config.interface.as_deref())?;
        Ok(TftpServer {
            socket,
            source,
            config,
        })
    }

    /// The bound address (for port 0 in tests).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serves until `shutdown` resolves; transfers in flight are dropped
    /// with the runtime or finish on their own.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let local = match self.socket.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "TFTP socket has no local address");
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(self.config.max_transfers));
        let mut buf = vec![0u8; 2048];
        tokio::pin!(shutdown);
        loop {
            let (len, peer) = tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "TFTP receive failed");
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let req = match packet::parse_request(&buf[..len]) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad TFTP request");
                    let _ = self
                        .socket
                        .send_to(
                            &packet::error(ErrorCode::IllegalOperation, &e.to_string()),
                            peer,
                        )
                        .await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, file = %req.filename, "TFTP busy: too many transfers");
                let _ = self
                    .socket
                    .send_to(&packet::error(ErrorCode::NotDefined, "server busy"), peer)
                    .await;
                continue;
            };
            let (source, config) = (self.source.clone(), self.config.clone());
            let local = SocketAddr::new(local.ip(), 0);
            tokio::spawn(async move {
                if let Err(e) = transfer(req, peer, local, source, config).await {
                    tracing::warn!(%peer, error = %crate::ErrorChain(&e), "TFTP transfer failed");
                }
                drop(permit);
            });
        }
    }
}

/// How one transfer ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("setting up the transfer socket")]
    Socket(#[source] TftpError),
    #[error("sending to the client")]
    Send(#[source] io::Error),
    #[error("receiving from the client")]
    Receive(#[source] io::Error),
    #[error("no ACK for block {block} after {retries} retransmissions")]
    TimedOut { block: u64, retries: u32 },
    #[error("client sent error {code}: {message}")]
    ClientError { code: u16, message: String },
}

/// Negotiated transfer parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub window: u16,
    pub timeout: Duration,
    /// Options to acknowledge in an OACK (empty: no OACK, plain RFC 1350).
    pub oack: Vec<(String, String)>,
}

/// Applies the options we support; invalid values are ignored (RFC 2347
/// lets a server leave an option out of its OACK).
pub fn negotiate(req: &Request, file_len: u64, config: &TftpConfig) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        window: 1,
        timeout: config.timeout,
        oack: Vec::new(),
    };
    for (name, value) in &req.options {
        match name.as_str() {
            "blksize" => {
                if let Ok(v) = value.parse::<u16>()
                    && (8..=65464).contains(&v)
                {
                    let v = v.min(config.max_blksize.max(8));
                    n.blksize = usize::from(v);
                    n.oack.push((name.clone(), v.to_string()));
                }
            }
            "tsize" if value.parse::<u64>().is_ok() => {
                n.oack.push((name.clone(), file_len.to_string()));
            }
            "windowsize" => {
                if let Ok(v) = value.parse::<u16>()
                    && v >= 1
                {
                    let v = v.min(config.max_window.max(1));
                    n.window = v;
                    n.oack.push((name.clone(), v.to_string()));
                }
            }
            "timeout" => {
                if let Ok(v) = value.parse::<u8>()
                    && v >= 1
                {
                    n.timeout = Duration::from_secs(u64::from(v));
                    n.oack.push((name.clone(), v.to_string()));
                }
            }
            _ => {}
        }
    }
    n
}

async fn transfer(
    req: Request,
    peer: SocketAddr,
    local: SocketAddr,
    source: TftpSource,
    config: TftpConfig,
) -> Result<(), TransferError> {
    let sock = udp_socket(local, config.interface.as_deref()).map_err(TransferError::Socket)?;
    sock.connect(peer).await.map_err(|e| {
        TransferError::Socket(TftpError::Bind {
            addr: peer,
            source: e,
        })
    })?;
    let refuse = |code, msg: &str| {
        let p = packet::error(code, msg);
        let sock = &sock;
        async move { sock.send(&p).await.map(|_| ()).map_err(TransferError::Send) }
    };
    if req.kind == RequestKind::Write {
        tracing::info!(%peer, file = %req.filename, "TFTP WRQ refused: read-only server");
        return refuse(ErrorCode::AccessViolation, "read-only server").await;
    }
    if req.mode != Mode::Octet {
        tracing::info!(%peer, file = %req.filename, mode = ?req.mode, "TFTP mode refused");
        return refuse(ErrorCode::IllegalOperation, "only octet mode is served").await;
    }
    let data = match source.load(&req.filename).await {
        Ok(d) => d,
        Err(e) => {
            let code = match e {
                PathError::NotFound { .. } => ErrorCode::FileNotFound,
                _ => ErrorCode::AccessViolation,
            };
            tracing::info!(%peer, error = %crate::ErrorChain(&e), "TFTP RRQ refused");
            return refuse(code, &e.to_string()).await;
        }
    };
    let n = negotiate(&req, data.len() as u64, &config);
    tracing::info!(%peer, file = %req.filename, size = data.len(), blksize = n.blksize, window = n.window, "TFTP RRQ");
    let mut buf = vec![0u8; 1024];

    // With options: OACK, then the client's ACK 0.
    if !n.oack.is_empty() {
        let oack = packet::oack(&n.oack);
        let mut tries = 0;
        loop {
            sock.send(&oack).await.map_err(TransferError::Send)?;
            match tokio::time::timeout(n.timeout, sock.recv(&mut buf)).await {
                Ok(Ok(len)) => match packet::parse_client(&buf[..len]) {
                    ClientPacket::Ack(0) => break,
                    ClientPacket::Error { code, message } => {
                        // Code 8: the client does not like our options.
                        return Err(TransferError::ClientError { code, message });
                    }
                    _ => {}
                },
                Ok(Err(e)) => return Err(TransferError::Receive(e)),
                Err(_) => {
                    tries += 1;
                    if tries > config.retries {
                        return Err(TransferError::TimedOut {
                            block: 0,
                            retries: config.retries,
                        });
                    }
                }
            }
        }
    }

    // Blocks are numbered from 1; the last one is shorter than blksize
    // (possibly empty). Internally u64, on the wire mod 2^16 (rollover).
    let last = data.len() as u64 / n.blksize as u64 + 1;
    let window = u64::from(n.window);
    let mut next = 1u64; // first block not yet acknowledged
    let mut tries = 0u32;
    let block = |b: u64| {
        let start = ((b - 1) * n.blksize as u64) as usize;
        let end = (start + n.blksize).min(data.len());
        packet::data(b as u16, &data[start..end])
    };
    while next <= last {
        let end = (next + window - 1).min(last);
        for b in next..=end {
            sock.send(&block(b)).await.map_err(TransferError::Send)?;
        }
        // Wait for an ACK that moves us forward.
        let deadline = tokio::time::Instant::now() + n.timeout;
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Ok(Ok(len)) => match packet::parse_client(&buf[..len]) {
                    ClientPacket::Ack(a) => {
                        // The block in [next-1, end] whose low 16 bits match.
                        let acked = (next - 1..=end).find(|b| *b as u16 == a);
                        match acked {
                            Some(b) if b >= next => {
                                next = b + 1;
                                tries = 0;
                                break;
                            }
                            // A repeated ACK of the block before the window:
                            // with windows the client is telling us it
                            // lost the window's start; resend at once.
                            // With window 1, wait (Sorcerer's Apprentice).
                            Some(_) if window > 1 => {
                                tries += 1;
                                if tries > config.retries {
                                    return Err(TransferError::TimedOut {
                                        block: next,
                                        retries: config.retries,
                                    });
                                }
                                break;
                            }
                            _ => {}
                        }
                    }
                    ClientPacket::Error { code, message } => {
                        return Err(TransferError::ClientError { code, message });
                    }
                    ClientPacket::Other => {}
                },
                Ok(Err(e)) => return Err(TransferError::Receive(e)),
                Err(_) => {
                    tries += 1;
                    if tries > config.retries {
                        return Err(TransferError::TimedOut {
                            block: next,
                            retries: config.retries,
                        });
                    }
                    tracing::debug!(%peer, block = next, "TFTP retransmit");
                    break;
                }
            }
        }
    }
    tracing::debug!(%peer, file = %req.filename, "TFTP transfer complete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(options: &[(&str, &str)]) -> Request {
        Request {
            kind: RequestKind::Read,
            filename: "f".into(),
            mode: Mode::Octet,
            options: options
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn negotiation() {
        let c = TftpConfig::new("127.0.0.1:0".parse().unwrap());
        let n = negotiate(&req(&[]), 10, &c);
        assert_eq!((n.blksize, n.window, n.oack.len()), (512, 1, 0));
        let n = negotiate(
            &req(&[
                ("blksize", "1432"),
                ("tsize", "0"),
                ("windowsize", "8"),
                ("foo", "1"),
            ]),
            12345,
            &c,
        );
        assert_eq!((n.blksize, n.window), (1432, 8));
        assert_eq!(
            n.oack,
            vec![
                ("blksize".into(), "1432".into()),
                ("tsize".into(), "12345".into()),
                ("windowsize".into(), "8".into())
            ]
        );
        // Capped, and invalid values ignored.
        let n = negotiate(
            &req(&[
                ("blksize", "65464"),
                ("windowsize", "1000"),
                ("timeout", "0"),
            ]),
            1,
            &c,
        );
        assert_eq!((n.blksize, n.window), (1468, 64));
        assert_eq!(n.oack.len(), 2);
        let n = negotiate(
            &req(&[("blksize", "7"), ("tsize", "x"), ("windowsize", "0")]),
            1,
            &c,
        );
        assert!(n.oack.is_empty());
    }
}
