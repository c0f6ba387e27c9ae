//! The NBD wire format: constants, and parsing/encoding of the fixed-size
//! pieces. Pure functions over byte slices, so they can be fed arbitrary
//! input by property tests; the async handshake and server are built on
//! them.
//!
//! Reference: the NBD protocol document (`doc/proto.md` in the nbd
//! project), "fixed newstyle" negotiation, simple and structured replies.

use bytes::{BufMut, BytesMut};

/// `NBDMAGIC`: the first 8 bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: follows [`NBD_MAGIC`] in newstyle negotiation and starts
/// every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

// Information types in `NBD_REP_INFO`.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
/// BigV's own command, only on a migration destination's mirror
/// connection: "everything is copied and flushed; take the disc over".
/// Far outside the range the NBD project assigns (0..=8 today).
pub const CMD_BIGV_HANDOVER: u16 = 0x4256;
/// BigV's own command, also only on a mirror connection: a piece of one of
/// the disc's backups, which travel with it (payload: a [`BackupChunk`]).
pub const CMD_BIGV_BACKUP: u16 = 0x4257;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

// Structured reply chunk types and flags.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// `base:allocation` states.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// The only metadata context we serve, and the id we give it.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Error values in replies (Linux errno numbering, as the protocol says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum NbdErrno {
    Perm = 1,
    Io = 5,
    NoMem = 12,
    Inval = 22,
    NoSpc = 28,
    Overflow = 75,
    NotSup = 95,
    Shutdown = 108,
}

impl NbdErrno {
    /// Maps a local I/O error to the closest value the protocol allows.
    pub fn from_io(e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc_errno) if libc_errno == nix::errno::Errno::ENOSPC as i32 => NbdErrno::NoSpc,
            Some(e) if e == nix::errno::Errno::EDQUOT as i32 => NbdErrno::NoSpc,
            Some(e) if e == nix::errno::Errno::EPERM as i32 => NbdErrno::Perm,
            Some(e) if e == nix::errno::Errno::EROFS as i32 => NbdErrno::Perm,
            Some(e) if e == nix::errno::Errno::ENOMEM as i32 => NbdErrno::NoMem,
            Some(e) if e == nix::errno::Errno::EINVAL as i32 => NbdErrno::Inval,
            Some(e) if e == nix::errno::Errno::EOPNOTSUPP as i32 => NbdErrno::NotSup,
            _ => NbdErrno::Io,
        }
    }
}

/// The largest payload a WRITE may carry and a READ may ask for; also the
/// maximum block size we advertise. qemu never sends more than 32 MiB.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// The largest option payload accepted during negotiation.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// The longest export or metadata context name accepted.
pub const MAX_NAME_LEN: usize = 4096;

/// Why a client's bytes were refused; each names the field or packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("request header: bad magic {found:#010x} (expected {REQUEST_MAGIC:#010x})")]
    BadRequestMagic { found: u32 },
    #[error("option header: bad magic {found:#018x} (expected IHAVEOPT)")]
    BadOptionMagic { found: u64 },
    #[error("client flags {flags:#x}: unknown bits set")]
    UnknownClientFlags { flags: u32 },
    #[error("client flags {flags:#x}: fixed newstyle is required")]
    NotFixedNewstyle { flags: u32 },
    #[error("option {option}: length {length} exceeds the limit of {MAX_OPTION_LEN}")]
    OptionTooLong { option: u32, length: u32 },
    #[error("option {option}: {what}")]
    BadOptionData { option: u32, what: &'static str },
    #[error("BIGV_BACKUP payload: malformed {what}")]
    BadBackupChunk { what: &'static str },
    #[error("{command} request: payload length {length} exceeds the limit of {MAX_PAYLOAD}")]
    PayloadTooLong { command: &'static str, length: u32 },
    #[error("request type {kind}: unknown command")]
    UnknownCommand { kind: u16 },
}

/// One transmission-phase request, as the 28-byte header carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    /// Followed by `length` bytes of payload.
    Write,
    Disc,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    /// [`CMD_BIGV_HANDOVER`].
    Handover,
    /// [`CMD_BIGV_BACKUP`]; followed by `length` bytes of payload.
    Backup,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Read => "READ",
            Command::Write => "WRITE",
            Command::Disc => "DISC",
            Command::Flush => "FLUSH",
            Command::Trim => "TRIM",
            Command::WriteZeroes => "WRITE_ZEROES",
            Command::BlockStatus => "BLOCK_STATUS",
            Command::Handover => "BIGV_HANDOVER",
            Command::Backup => "BIGV_BACKUP",
        }
    }

    /// Whether `length` bytes of payload follow the request.
    pub fn has_payload(self) -> bool {
        matches!(self, Command::Write | Command::Backup)
    }

    pub fn code(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Handover => CMD_BIGV_HANDOVER,
            Command::Backup => CMD_BIGV_BACKUP,
        }
    }
}

pub const REQUEST_LEN: usize = 28;

/// The payload of [`CMD_BIGV_BACKUP`]: `data` goes at the request's
/// offset in backup `id`, a file of `size` bytes; `seal` (with no data)
/// says every piece was sent and answered, so the backup is complete.
/// Wire form: id length (u8), id, size (u64), seal (u8: 0 or 1), data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupChunk<'a> {
    pub id: &'a str,
    pub size: u64,
    pub seal: bool,
    pub data: &'a [u8],
}

impl<'a> BackupChunk<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let id = self.id.as_bytes();
        let mut b = Vec::with_capacity(10 + id.len() + self.data.len());
        b.push(u8::try_from(id.len()).expect("backup ids are at most 64 bytes"));
        b.extend_from_slice(id);
        b.extend_from_slice(&self.size.to_be_bytes());
        b.push(u8::from(self.seal));
        b.extend_from_slice(self.data);
        b
    }

    pub fn parse(b: &'a [u8]) -> Result<BackupChunk<'a>, ProtocolError> {
        let bad = |what: &'static str| ProtocolError::BadBackupChunk { what };
        let (&n, rest) = b.split_first().ok_or(bad("id length"))?;
        let n = usize::from(n);
        if rest.len() < n + 9 {
            return Err(bad("header"));
        }
        let id = std::str::from_utf8(&rest[..n]).map_err(|_| bad("id"))?;
        let size = u64::from_be_bytes(rest[n..n + 8].try_into().expect("8 bytes"));
        let seal = match rest[n + 8] {
            0 => false,
            1 => true,
            _ => return Err(bad("seal")),
        };
        Ok(BackupChunk {
            id,
            size,
            seal,
            data: &rest[n + 9..],
        })
    }
}

impl Request {
    /// Parses a request header. A WRITE whose payload exceeds
    /// [`MAX_PAYLOAD`] is an error: the connection cannot skip the bytes
    /// safely, so it is closed. An oversized READ parses (and is answered
    /// with `EINVAL` by the server) because nothing follows it.
    pub fn parse(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtocolError> {
        let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::BadRequestMagic { found: magic });
        }
        let flags = u16::from_be_bytes([b[4], b[5]]);
        let kind = u16::from_be_bytes([b[6], b[7]]);
        let cookie = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
        let offset = u64::from_be_bytes(b[16..24].try_into().expect("8 bytes"));
        let length = u32::from_be_bytes(b[24..28].try_into().expect("4 bytes"));
        let command = match kind {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            CMD_BIGV_HANDOVER => Command::Handover,
            CMD_BIGV_BACKUP => Command::Backup,
            kind => return Err(ProtocolError::UnknownCommand { kind }),
        };
        if command.has_payload() && length > MAX_PAYLOAD {
            return Err(ProtocolError::PayloadTooLong {
                command: command.name(),
                length,
            });
        }
        Ok(Request {
            flags,
            command,
            cookie,
            offset,
            length,
        })
    }

    /// The wire form (used by our client: the mirror and the tests).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.code().to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// An option header from the client: magic, option, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

pub const OPTION_HEADER_LEN: usize = 16;

impl OptionHeader {
    pub fn parse(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtocolError> {
        let magic = u64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
        if magic != IHAVEOPT {
            return Err(ProtocolError::BadOptionMagic { found: magic });
        }
        let option = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
        let length = u32::from_be_bytes(b[12..16].try_into().expect("4 bytes"));
        if length > MAX_OPTION_LEN {
            return Err(ProtocolError::OptionTooLong { option, length });
        }
        Ok(OptionHeader { option, length })
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Checks the client's 32-bit flags; returns whether it asked for
/// `NO_ZEROES`.
pub fn parse_client_flags(flags: u32) -> Result<bool, ProtocolError> {
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtocolError::UnknownClientFlags { flags });
    }
    if flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(ProtocolError::NotFixedNewstyle { flags });
    }
    Ok(flags & FLAG_C_NO_ZEROES != 0)
}

/// A small cursor over option data that names the option on failure.
struct Fields<'a> {
    option: u32,
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.data.len() < n {
            return Err(ProtocolError::BadOptionData {
                option: self.option,
                what,
            });
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u32-length-prefixed UTF-8 string of at most [`MAX_NAME_LEN`].
    fn string(
        &mut self,
        len_what: &'static str,
        what: &'static str,
    ) -> Result<String, ProtocolError> {
        let len = self.u32(len_what)? as usize;
        if len > MAX_NAME_LEN {
            return Err(ProtocolError::BadOptionData {
                option: self.option,
                what: "name longer than 4096 bytes",
            });
        }
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| ProtocolError::BadOptionData {
            option: self.option,
            what: "name is not UTF-8",
        })
    }

    fn finish(&self) -> Result<(), ProtocolError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::BadOptionData {
                option: self.option,
                what: "trailing bytes after the option's fields",
            })
        }
    }
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

pub fn parse_info_request(option: u32, data: &[u8]) -> Result<InfoRequest, ProtocolError> {
    let mut f = Fields { option, data };
    let name = f.string("export name length", "export name")?;
    let count = f.u16("number of information requests")?;
    let mut requests = Vec::with_capacity(usize::from(count).min(16));
    for _ in 0..count {
        requests.push(f.u16("information request")?);
    }
    f.finish()?;
    Ok(InfoRequest { name, requests })
}

/// The payload of `NBD_OPT_{LIST,SET}_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

pub fn parse_meta_context_request(
    option: u32,
    data: &[u8],
) -> Result<MetaContextRequest, ProtocolError> {
    let mut f = Fields { option, data };
    let export = f.string("export name length", "export name")?;
    let count = f.u32("number of queries")?;
    let mut queries = Vec::with_capacity((count as usize).min(16));
    for _ in 0..count {
        queries.push(f.string("query length", "query")?);
    }
    f.finish()?;
    Ok(MetaContextRequest { export, queries })
}

/// Whether a metadata-context query selects `base:allocation`. For LIST, a
/// bare `base:` (the whole namespace) matches too.
pub fn query_selects_base_allocation(query: &str, listing: bool) -> bool {
    query == BASE_ALLOCATION || (listing && query == "base:")
}

/// Appends an option reply header and its data.
pub fn put_option_reply(buf: &mut BytesMut, option: u32, reply: u32, data: &[u8]) {
    buf.put_u64(OPT_REPLY_MAGIC);
    buf.put_u32(option);
    buf.put_u32(reply);
    buf.put_u32(u32::try_from(data.len()).expect("option reply data is small"));
    buf.put_slice(data);
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64, tflags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&tflags.to_be_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block sizes.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&min.to_be_bytes());
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&max.to_be_bytes());
    b
}

/// `NBD_INFO_NAME`.
pub fn info_name(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + name.len());
    b.extend_from_slice(&INFO_NAME.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// `NBD_REP_SERVER` data: a length-prefixed export name.
pub fn rep_server(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// `NBD_REP_META_CONTEXT` data: context id and name.
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// A simple reply header.
pub fn put_simple_reply(buf: &mut BytesMut, cookie: u64, error: u32) {
    buf.put_u32(SIMPLE_REPLY_MAGIC);
    buf.put_u32(error);
    buf.put_u64(cookie);
}

/// A structured reply chunk header; `length` counts the chunk's payload.
pub fn put_chunk_header(buf: &mut BytesMut, flags: u16, kind: u16, cookie: u64, length: u32) {
    buf.put_u32(STRUCTURED_REPLY_MAGIC);
    buf.put_u16(flags);
    buf.put_u16(kind);
    buf.put_u64(cookie);
    buf.put_u32(length);
}

/// A complete `NBD_REPLY_TYPE_ERROR` chunk (always the last).
pub fn put_error_chunk(buf: &mut BytesMut, cookie: u64, error: NbdErrno, message: &str) {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    put_chunk_header(
        buf,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6 + msg.len() as u32,
    );
    buf.put_u32(error as u32);
    buf.put_u16(msg.len() as u16);
    buf.put_slice(msg);
}

/// One extent of `base:allocation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u32,
    pub flags: u32,
}

/// A complete `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for one context.
pub fn put_block_status_chunk(buf: &mut BytesMut, cookie: u64, context: u32, extents: &[Extent]) {
    let length = 4 + 8 * extents.len() as u32;
    put_chunk_header(
        buf,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        length,
    );
    buf.put_u32(context);
    for e in extents {
        buf.put_u32(e.length);
        buf.put_u32(e.flags);
    }
}

/// A reply as our client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        kind: u16,
        cookie: u64,
        length: u32,
    },
}

/// Parses a reply header's first 4 bytes (the magic) to learn how many
/// more bytes it has: 12 for simple, 16 for structured.
pub fn reply_rest_len(magic: u32) -> Option<usize> {
    match magic {
        SIMPLE_REPLY_MAGIC => Some(12),
        STRUCTURED_REPLY_MAGIC => Some(16),
        _ => None,
    }
}

/// Parses the bytes after the magic; `rest` must be `reply_rest_len` long.
pub fn parse_reply_header(magic: u32, rest: &[u8]) -> Option<ReplyHeader> {
    match (magic, rest.len()) {
        (SIMPLE_REPLY_MAGIC, 12) => Some(ReplyHeader::Simple {
            error: u32::from_be_bytes(rest[0..4].try_into().ok()?),
            cookie: u64::from_be_bytes(rest[4..12].try_into().ok()?),
        }),
        (STRUCTURED_REPLY_MAGIC, 16) => Some(ReplyHeader::Chunk {
            flags: u16::from_be_bytes(rest[0..2].try_into().ok()?),
            kind: u16::from_be_bytes(rest[2..4].try_into().ok()?),
            cookie: u64::from_be_bytes(rest[4..12].try_into().ok()?),
            length: u32::from_be_bytes(rest[12..16].try_into().ok()?),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trips() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: Command::Write,
            cookie: 0xdead_beef,
            offset: 4096,
            length: 512,
        };
        assert_eq!(Request::parse(&r.encode()), Ok(r));
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let mut b = Request {
            flags: 0,
            command: Command::Read,
            cookie: 1,
            offset: 0,
            length: 1,
        }
        .encode();
        b[7] = 99;
        let e = Request::parse(&b).unwrap_err().to_string();
        assert!(e.contains("request type 99"), "{e}");
        b[0] = 0;
        let e = Request::parse(&b).unwrap_err().to_string();
        assert!(e.contains("bad magic"), "{e}");
        let big = Request {
            flags: 0,
            command: Command::Write,
            cookie: 1,
            offset: 0,
            length: MAX_PAYLOAD + 1,
        };
        let e = Request::parse(&big.encode()).unwrap_err().to_string();
        assert!(e.contains("WRITE request: payload length"), "{e}");
    }

    #[test]
    fn info_request_parses_and_rejects_truncation() {
        let mut d = vec![];
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let r = parse_info_request(OPT_GO, &d).unwrap();
        assert_eq!(r.name, "abc");
        assert_eq!(r.requests, [INFO_BLOCK_SIZE]);
        let e = parse_info_request(OPT_GO, &d[..d.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("option 7: information request"), "{e}");
        d.push(0);
        let e = parse_info_request(OPT_GO, &d).unwrap_err().to_string();
        assert!(e.contains("trailing"), "{e}");
    }

    #[test]
    fn client_flags() {
        assert_eq!(parse_client_flags(1), Ok(false));
        assert_eq!(parse_client_flags(3), Ok(true));
        assert!(matches!(
            parse_client_flags(2),
            Err(ProtocolError::NotFixedNewstyle { .. })
        ));
        assert!(matches!(
            parse_client_flags(0x11),
            Err(ProtocolError::UnknownClientFlags { .. })
        ));
    }

    #[test]
    fn backup_chunk_errors_name_the_part() {
        for (bad, what) in [(&[][..], "id length"), (&[3, b'a'][..], "header")] {
            let e = BackupChunk::parse(bad).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let mut seal2 = BackupChunk {
            id: "b",
            size: 1,
            seal: false,
            data: &[],
        }
        .encode();
        seal2[10] = 2;
        assert!(
            BackupChunk::parse(&seal2)
                .unwrap_err()
                .to_string()
                .contains("seal")
        );
    }

    proptest! {
        #[test]
        fn request_parser_never_panics(b in proptest::array::uniform28(any::<u8>())) {
            match Request::parse(&b) {
                Ok(r) => prop_assert_eq!(r.encode(), b),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn option_parsers_never_panic(option in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_info_request(option, &data);
            let _ = parse_meta_context_request(option, &data);
        }

        #[test]
        fn backup_chunks_round_trip_and_garbage_is_refused(
            id in "[a-z0-9_-]{1,64}",
            size in any::<u64>(),
            seal in any::<bool>(),
            data in proptest::collection::vec(any::<u8>(), 0..64),
            garbage in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let chunk = BackupChunk { id: &id, size, seal, data: &data };
            let wire = chunk.encode();
            prop_assert_eq!(BackupChunk::parse(&wire).unwrap(), chunk);
            if let Ok(c) = BackupChunk::parse(&garbage) {
                prop_assert_eq!(c.encode(), garbage);
            }
        }

        #[test]
        fn option_header_never_panics(b in proptest::array::uniform16(any::<u8>())) {
            if let Ok(h) = OptionHeader::parse(&b) {
                prop_assert_eq!(h.encode(), b);
                prop_assert!(h.length <= MAX_OPTION_LEN);
            }
        }
    }
}
