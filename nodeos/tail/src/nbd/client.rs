//! A small NBD client: what the mirror uses to copy a disc to another
//! tail, and what tests use where qemu cannot help (binding a chosen
//! source address). Simple replies only; requests can be pipelined with
//! [`NbdClient::submit`] / [`NbdClient::complete`].

use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpSocket, TcpStream};

use super::protocol::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{during}")]
    Io {
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the server closed the connection during {during}")]
    Closed { during: &'static str },
    #[error("{what}: unexpected bytes from the server")]
    Protocol { what: &'static str },
    #[error("NBD_OPT_GO refused with reply {reply:#x}: {message}")]
    Refused { reply: u32, message: String },
    #[error("{command} at {offset}+{length} failed with error {errno}")]
    Request {
        command: &'static str,
        offset: u64,
        length: u64,
        errno: u32,
    },
}

fn io(during: &'static str) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            ClientError::Closed { during }
        } else {
            ClientError::Io { during, source }
        }
    }
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    cookie: u64,
    command: Command,
    offset: u64,
    length: u32,
}

pub struct NbdClient {
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    size: u64,
    flags: u16,
    next_cookie: u64,
    pending: std::collections::VecDeque<Pending>,
}

impl NbdClient {
    /// Connects (from `bind` if given), negotiates fixed newstyle and
    /// `NBD_OPT_GO` for `export`.
    pub async fn connect(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        export: &str,
    ) -> Result<NbdClient, ClientError> {
        let err = |source| ClientError::Connect { addr, source };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0)).map_err(err)?;
        }
        let stream: TcpStream = socket.connect(addr).await.map_err(err)?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut c = NbdClient {
            read: BufReader::with_capacity(256 << 10, r),
            write: BufWriter::with_capacity(256 << 10, w),
            size: 0,
            flags: 0,
            next_cookie: 1,
            pending: Default::default(),
        };
        c.negotiate(export).await?;
        Ok(c)
    }

    async fn negotiate(&mut self, export: &str) -> Result<(), ClientError> {
        let magic = self.read.read_u64().await.map_err(io("the greeting"))?;
        let opt = self.read.read_u64().await.map_err(io("the greeting"))?;
        if magic != NBD_MAGIC || opt != IHAVEOPT {
            return Err(ClientError::Protocol { what: "greeting" });
        }
        let _flags = self.read.read_u16().await.map_err(io("the greeting"))?;
        let mut out = BytesMut::new();
        out.put_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        let mut data = BytesMut::new();
        data.put_u32(export.len() as u32);
        data.put_slice(export.as_bytes());
        data.put_u16(0);
        out.put_slice(
            &OptionHeader {
                option: OPT_GO,
                length: data.len() as u32,
            }
            .encode(),
        );
        out.put_slice(&data);
        self.write.write_all(&out).await.map_err(io("NBD_OPT_GO"))?;
        self.write.flush().await.map_err(io("NBD_OPT_GO"))?;
        loop {
            let magic = self.read.read_u64().await.map_err(io("NBD_OPT_GO"))?;
            let option = self.read.read_u32().await.map_err(io("NBD_OPT_GO"))?;
            let reply = self.read.read_u32().await.map_err(io("NBD_OPT_GO"))?;
            let len = self.read.read_u32().await.map_err(io("NBD_OPT_GO"))?;
            if magic != OPT_REPLY_MAGIC || option != OPT_GO || len > MAX_OPTION_LEN {
                return Err(ClientError::Protocol {
                    what: "option reply",
                });
            }
            let mut body = vec![0u8; len as usize];
            self.read
                .read_exact(&mut body)
                .await
                .map_err(io("NBD_OPT_GO"))?;
            match reply {
                REP_ACK => return Ok(()),
                REP_INFO if body.len() >= 12 && body[0..2] == INFO_EXPORT.to_be_bytes() => {
                    self.size = u64::from_be_bytes(body[2..10].try_into().expect("8 bytes"));
                    self.flags = u16::from_be_bytes([body[10], body[11]]);
                }
                REP_INFO => {}
                r if r & (1 << 31) != 0 => {
                    return Err(ClientError::Refused {
                        reply: r,
                        message: String::from_utf8_lossy(&body).into_owned(),
                    });
                }
                _ => {
                    return Err(ClientError::Protocol {
                        what: "option reply type",
                    });
                }
            }
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.flags & TFLAG_READ_ONLY != 0
    }

    /// Queues a request (with its payload for WRITE); call
    /// [`NbdClient::complete`] once per submitted request, in order.
    pub async fn submit(
        &mut self,
        command: Command,
        flags: u16,
        offset: u64,
        length: u32,
        payload: Option<&[u8]>,
    ) -> Result<u64, ClientError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let req = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        self.write
            .write_all(&req.encode())
            .await
            .map_err(io("sending a request"))?;
        if let Some(p) = payload {
            self.write
                .write_all(p)
                .await
                .map_err(io("sending a WRITE payload"))?;
        }
        self.pending.push_back(Pending {
            cookie,
            command,
            offset,
            length,
        });
        Ok(cookie)
    }

    /// Sends anything buffered.
    pub async fn push(&mut self) -> Result<(), ClientError> {
        self.write.flush().await.map_err(io("sending requests"))
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Waits for the next reply (servers may answer out of order): its
    /// request's cookie, and READ data.
    pub async fn complete(&mut self) -> Result<(u64, Option<Vec<u8>>), ClientError> {
        self.push().await?;
        let magic = self.read.read_u32().await.map_err(io("a reply"))?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(ClientError::Protocol {
                what: "reply magic",
            });
        }
        let errno = self.read.read_u32().await.map_err(io("a reply"))?;
        let cookie = self.read.read_u64().await.map_err(io("a reply"))?;
        let Some(pos) = self.pending.iter().position(|p| p.cookie == cookie) else {
            return Err(ClientError::Protocol {
                what: "reply cookie",
            });
        };
        let p = self.pending.remove(pos).expect("position is valid");
        if errno != 0 {
            return Err(ClientError::Request {
                command: p.command.name(),
                offset: p.offset,
                length: u64::from(p.length),
                errno,
            });
        }
        if p.command == Command::Read {
            let mut data = vec![0u8; p.length as usize];
            self.read
                .read_exact(&mut data)
                .await
                .map_err(io("READ data"))?;
            return Ok((cookie, Some(data)));
        }
        Ok((cookie, None))
    }

    /// The connection's socket, for a sender that writes requests itself
    /// (the mirror's `sendfile` path). Call [`NbdClient::push`] first and
    /// submit nothing through this client while such a sender runs.
    pub(crate) fn socket(&self) -> &TcpStream {
        self.write.get_ref().as_ref()
    }

    /// Reads one simple reply header: its error value and cookie, without
    /// looking the cookie up (requests sent through [`NbdClient::socket`]
    /// are not in this client's queue). Not for READ replies.
    pub(crate) async fn read_reply_head(&mut self) -> Result<(u32, u64), ClientError> {
        let magic = self.read.read_u32().await.map_err(io("a reply"))?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(ClientError::Protocol {
                what: "reply magic",
            });
        }
        let errno = self.read.read_u32().await.map_err(io("a reply"))?;
        let cookie = self.read.read_u64().await.map_err(io("a reply"))?;
        Ok((errno, cookie))
    }

    pub async fn read(&mut self, offset: u64, length: u32) -> Result<Vec<u8>, ClientError> {
        self.submit(Command::Read, 0, offset, length, None).await?;
        Ok(self.complete().await?.1.unwrap_or_default())
    }

    pub async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), ClientError> {
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        self.submit(Command::Write, flags, offset, data.len() as u32, Some(data))
            .await?;
        self.complete().await.map(drop)
    }

    pub async fn write_zeroes(
        &mut self,
        offset: u64,
        length: u32,
        no_hole: bool,
    ) -> Result<(), ClientError> {
        let flags = if no_hole { CMD_FLAG_NO_HOLE } else { 0 };
        self.submit(Command::WriteZeroes, flags, offset, length, None)
            .await?;
        self.complete().await.map(drop)
    }

    pub async fn trim(&mut self, offset: u64, length: u32) -> Result<(), ClientError> {
        self.submit(Command::Trim, 0, offset, length, None).await?;
        self.complete().await.map(drop)
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.submit(Command::Flush, 0, 0, 0, None).await?;
        self.complete().await.map(drop)
    }

    /// Asks a migration destination to take the disc over
    /// (`NBD_CMD_BIGV_HANDOVER`); `Ok` means it has committed to serving.
    pub async fn handover(&mut self) -> Result<(), ClientError> {
        self.submit(Command::Handover, 0, 0, 0, None).await?;
        self.complete().await.map(drop)
    }

    /// Sends `NBD_CMD_DISC` and closes.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.submit(Command::Disc, 0, 0, 0, None).await?;
        self.pending.pop_back();
        self.push().await?;
        let _ = self.write.shutdown().await;
        Ok(())
    }

    /// Whether the server has closed the connection (reads EOF soon).
    pub async fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.read.read(&mut b).await, Ok(0) | Err(_))
    }
}
