//! Fixed-newstyle negotiation, from the server's greeting to the start of
//! the transmission phase.
//!
//! Supported options: `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO`,
//! `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and `SET_META_CONTEXT` (for
//! `base:allocation`); anything else is answered `NBD_REP_ERR_UNSUP`.
//! Admission (the ACL and the one-client rule) is decided by the caller at
//! the moment a client asks to start transmission.

use std::future::Future;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::protocol::*;

/// What the client is negotiating for.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// The export's name; the empty name (qemu's default) also selects it.
    pub name: String,
    pub size: u64,
    pub read_only: bool,
}

impl ExportInfo {
    pub fn matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }

    pub fn transmission_flags(&self) -> u16 {
        let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
        if self.read_only {
            f |= TFLAG_READ_ONLY;
        } else {
            f |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
        }
        f
    }
}

/// Decides, when a client asks to start transmission, whether it may.
pub trait Admission: Send {
    /// Proof of admission, held for the life of the connection.
    type Ticket: Send;
    /// `Err` carries the reason given to the client (`NBD_REP_ERR_POLICY`).
    fn admit(&mut self) -> impl Future<Output = Result<Self::Ticket, String>> + Send;
}

/// What negotiation settled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub structured: bool,
    /// `base:allocation` was selected with `SET_META_CONTEXT`.
    pub base_allocation: bool,
}

#[derive(Debug)]
pub enum Outcome<T> {
    /// Go on to transmission.
    Transmission { negotiated: Negotiated, ticket: T },
    /// The client sent `NBD_OPT_ABORT`.
    Aborted,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{during}")]
    Io {
        during: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed negotiation")]
    Protocol(#[source] ProtocolError),
    #[error("NBD_OPT_EXPORT_NAME for unknown export {name:?}")]
    UnknownExport { name: String },
    #[error("NBD_OPT_EXPORT_NAME refused: {reason}")]
    Refused { reason: String },
    #[error("more than {MAX_OPTIONS} options without starting transmission")]
    TooManyOptions,
}

/// A client that keeps negotiating forever is cut off after this many
/// options.
pub const MAX_OPTIONS: usize = 256;

fn io(during: &'static str) -> impl FnOnce(std::io::Error) -> HandshakeError {
    move |source| HandshakeError::Io { during, source }
}

/// Runs the server side of the negotiation on `stream`.
pub async fn negotiate<S, A>(
    stream: &mut S,
    export: &ExportInfo,
    admission: &mut A,
) -> Result<Outcome<A::Ticket>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: Admission,
{
    let mut out = BytesMut::with_capacity(256);
    out.put_u64(NBD_MAGIC);
    out.put_u64(IHAVEOPT);
    out.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    send(stream, &mut out, "sending the greeting").await?;

    let client_flags = stream
        .read_u32()
        .await
        .map_err(io("reading client flags"))?;
    let no_zeroes = parse_client_flags(client_flags).map_err(HandshakeError::Protocol)?;

    let mut negotiated = Negotiated::default();
    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; OPTION_HEADER_LEN];
        stream
            .read_exact(&mut header)
            .await
            .map_err(io("reading an option header"))?;
        let OptionHeader { option, length } =
            OptionHeader::parse(&header).map_err(HandshakeError::Protocol)?;
        let mut data = vec![0u8; length as usize];
        stream
            .read_exact(&mut data)
            .await
            .map_err(io("reading option data"))?;

        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                if !export.matches(&name) {
                    return Err(HandshakeError::UnknownExport { name });
                }
                let ticket = admission
                    .admit()
                    .await
                    .map_err(|reason| HandshakeError::Refused { reason })?;
                out.put_u64(export.size);
                out.put_u16(export.transmission_flags());
                if !no_zeroes {
                    out.put_bytes(0, 124);
                }
                send(stream, &mut out, "answering NBD_OPT_EXPORT_NAME").await?;
                return Ok(Outcome::Transmission { negotiated, ticket });
            }
            OPT_ABORT => {
                put_option_reply(&mut out, option, REP_ACK, &[]);
                // The client may already have closed; that is fine.
                let _ = send(stream, &mut out, "acknowledging NBD_OPT_ABORT").await;
                return Ok(Outcome::Aborted);
            }
            OPT_LIST => {
                if data.is_empty() {
                    put_option_reply(&mut out, option, REP_SERVER, &rep_server(&export.name));
                    put_option_reply(&mut out, option, REP_ACK, &[]);
                } else {
                    error_reply(
                        &mut out,
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_LIST takes no data",
                    );
                }
            }
            OPT_INFO | OPT_GO => {
                let request = match parse_info_request(option, &data) {
                    Ok(r) => r,
                    Err(e) => {
                        error_reply(&mut out, option, REP_ERR_INVALID, &e.to_string());
                        send(stream, &mut out, "refusing an option").await?;
                        continue;
                    }
                };
                if !export.matches(&request.name) {
                    let msg = format!("no export named {:?} here", request.name);
                    error_reply(&mut out, option, REP_ERR_UNKNOWN, &msg);
                    send(stream, &mut out, "refusing an option").await?;
                    continue;
                }
                let ticket = if option == OPT_GO {
                    match admission.admit().await {
                        Ok(t) => Some(t),
                        Err(reason) => {
                            error_reply(&mut out, option, REP_ERR_POLICY, &reason);
                            send(stream, &mut out, "refusing NBD_OPT_GO").await?;
                            continue;
                        }
                    }
                } else {
                    None
                };
                let tflags = export.transmission_flags();
                put_option_reply(
                    &mut out,
                    option,
                    REP_INFO,
                    &info_export(export.size, tflags),
                );
                for r in &request.requests {
                    match *r {
                        INFO_NAME => {
                            put_option_reply(&mut out, option, REP_INFO, &info_name(&export.name))
                        }
                        INFO_BLOCK_SIZE => put_option_reply(
                            &mut out,
                            option,
                            REP_INFO,
                            &info_block_size(1, 4096, MAX_PAYLOAD),
                        ),
                        _ => {}
                    }
                }
                put_option_reply(&mut out, option, REP_ACK, &[]);
                send(stream, &mut out, "answering NBD_OPT_INFO/GO").await?;
                if let Some(ticket) = ticket {
                    return Ok(Outcome::Transmission { negotiated, ticket });
                }
                continue;
            }
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    negotiated.structured = true;
                    put_option_reply(&mut out, option, REP_ACK, &[]);
                } else {
                    error_reply(
                        &mut out,
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    );
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let setting = option == OPT_SET_META_CONTEXT;
                match parse_meta_context_request(option, &data) {
                    Err(e) => error_reply(&mut out, option, REP_ERR_INVALID, &e.to_string()),
                    Ok(_) if setting && !negotiated.structured => error_reply(
                        &mut out,
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_SET_META_CONTEXT needs structured replies first",
                    ),
                    Ok(req) if !export.matches(&req.export) => {
                        let msg = format!("no export named {:?} here", req.export);
                        error_reply(&mut out, option, REP_ERR_UNKNOWN, &msg);
                    }
                    Ok(req) => {
                        let selected = if setting {
                            req.queries
                                .iter()
                                .any(|q| query_selects_base_allocation(q, false))
                        } else {
                            req.queries.is_empty()
                                || req
                                    .queries
                                    .iter()
                                    .any(|q| query_selects_base_allocation(q, true))
                        };
                        if setting {
                            negotiated.base_allocation = selected;
                        }
                        if selected {
                            let id = if setting { BASE_ALLOCATION_ID } else { 0 };
                            put_option_reply(
                                &mut out,
                                option,
                                REP_META_CONTEXT,
                                &rep_meta_context(id, BASE_ALLOCATION),
                            );
                        }
                        put_option_reply(&mut out, option, REP_ACK, &[]);
                    }
                }
            }
            other => {
                let msg = match other {
                    OPT_STARTTLS => "TLS is not offered: discs are reached on the storage LAN",
                    OPT_EXTENDED_HEADERS => "extended headers are not supported",
                    _ => "unsupported option",
                };
                error_reply(&mut out, option, REP_ERR_UNSUP, msg);
            }
        }
        send(stream, &mut out, "answering an option").await?;
    }
    Err(HandshakeError::TooManyOptions)
}

fn error_reply(out: &mut BytesMut, option: u32, reply: u32, message: &str) {
    let msg = &message.as_bytes()[..message.len().min(1024)];
    put_option_reply(out, option, reply, msg);
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    during: &'static str,
) -> Result<(), HandshakeError> {
    stream.write_all(out).await.map_err(io(during))?;
    stream.flush().await.map_err(io(during))?;
    out.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Always;
    impl Admission for Always {
        type Ticket = ();
        async fn admit(&mut self) -> Result<(), String> {
            Ok(())
        }
    }

    struct Never;
    impl Admission for Never {
        type Ticket = ();
        async fn admit(&mut self) -> Result<(), String> {
            Err("disc is in use by 192.0.2.1".into())
        }
    }

    fn export() -> ExportInfo {
        ExportInfo {
            name: "disc.sata.1".into(),
            size: 1 << 20,
            read_only: false,
        }
    }

    fn option(opt: u32, data: &[u8]) -> Vec<u8> {
        let mut v = OptionHeader {
            option: opt,
            length: data.len() as u32,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(data);
        v
    }

    fn go(name: &str) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        option(OPT_GO, &d)
    }

    /// Runs the server over a scripted client; returns what it sent.
    async fn run<A: Admission>(
        input: Vec<u8>,
        admission: &mut A,
    ) -> (Result<Outcome<A::Ticket>, HandshakeError>, Vec<u8>) {
        let mut stream = tokio::io::join(std::io::Cursor::new(input), Vec::<u8>::new());
        let result = negotiate(&mut stream, &export(), admission).await;
        let (_, written) = stream.into_inner();
        (result, written)
    }

    /// Option reply types found in the server's output (after the greeting).
    fn reply_types(out: &[u8]) -> Vec<u32> {
        let mut v = vec![];
        let mut p = 18;
        while p + 20 <= out.len() {
            let t = u32::from_be_bytes(out[p + 12..p + 16].try_into().unwrap());
            let len = u32::from_be_bytes(out[p + 16..p + 20].try_into().unwrap()) as usize;
            v.push(t);
            p += 20 + len;
        }
        v
    }

    #[tokio::test]
    async fn go_with_structured_replies_and_base_allocation() {
        let mut input = 3u32.to_be_bytes().to_vec();
        input.extend(option(OPT_STRUCTURED_REPLY, &[]));
        let mut meta = 0u32.to_be_bytes().to_vec();
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        meta.extend_from_slice(BASE_ALLOCATION.as_bytes());
        input.extend(option(OPT_SET_META_CONTEXT, &meta));
        input.extend(option(OPT_EXTENDED_HEADERS, &[]));
        input.extend(go(""));
        let (result, out) = run(input, &mut Always).await;
        let Ok(Outcome::Transmission { negotiated, .. }) = result else {
            panic!("{result:?}")
        };
        assert!(negotiated.structured && negotiated.base_allocation);
        assert_eq!(
            reply_types(&out),
            [
                REP_ACK,
                REP_META_CONTEXT,
                REP_ACK,
                REP_ERR_UNSUP,
                REP_INFO,
                REP_ACK
            ]
        );
    }

    #[tokio::test]
    async fn refusals_are_answered_and_negotiation_goes_on() {
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend(go("other"));
        input.extend(go("disc.sata.1"));
        input.extend(option(OPT_ABORT, &[]));
        let (result, out) = run(input, &mut Never).await;
        assert!(matches!(result, Ok(Outcome::Aborted)), "{result:?}");
        assert_eq!(
            reply_types(&out),
            [REP_ERR_UNKNOWN, REP_ERR_POLICY, REP_ACK]
        );
        assert!(String::from_utf8_lossy(&out).contains("in use by 192.0.2.1"));
    }

    #[tokio::test]
    async fn export_name_without_no_zeroes_pads() {
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend(option(OPT_EXPORT_NAME, b"disc.sata.1"));
        let (result, out) = run(input, &mut Always).await;
        assert!(matches!(result, Ok(Outcome::Transmission { .. })));
        assert_eq!(out.len(), 18 + 8 + 2 + 124);
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend(option(OPT_EXPORT_NAME, b"nope"));
        let (result, _) = run(input, &mut Always).await;
        let e = result.unwrap_err().to_string();
        assert!(e.contains("unknown export \"nope\""), "{e}");
    }

    #[tokio::test]
    async fn bad_client_flags_close_with_reason() {
        let (result, _) = run(0x80u32.to_be_bytes().to_vec(), &mut Always).await;
        let e = result.unwrap_err();
        assert!(
            matches!(
                &e,
                HandshakeError::Protocol(ProtocolError::UnknownClientFlags { .. })
            ),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512), flags in 0u32..4) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut input = flags.to_be_bytes().to_vec();
            input.extend(tail);
            let (result, _) = rt.block_on(run(input, &mut Always));
            if let Err(e) = result {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        #[test]
        fn well_framed_garbage_options_never_panic(
            opts in proptest::collection::vec((0u32..16, proptest::collection::vec(any::<u8>(), 0..64)), 0..8)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut input = 1u32.to_be_bytes().to_vec();
            for (o, d) in &opts {
                input.extend(option(*o, d));
            }
            let (result, _) = rt.block_on(run(input, &mut Always));
            if let Err(e) = result {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
