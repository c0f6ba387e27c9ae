//! TFTP packets (RFC 1350) with option extension (RFC 2347): the request
//! parser the server exposes to the wire, and encoders for what it sends.

/// Opcodes.
pub const RRQ: u16 = 1;
pub const WRQ: u16 = 2;
pub const DATA: u16 = 3;
pub const ACK: u16 = 4;
pub const ERROR: u16 = 5;
pub const OACK: u16 = 6;

/// TFTP error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
    UnknownTransferId = 5,
    OptionRefused = 8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
}

/// Transfer mode; we serve only `octet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
    Mail,
    Other(String),
}

/// A parsed RRQ or WRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub filename: String,
    pub mode: Mode,
    /// Options in the order given, names lower-cased.
    pub options: Vec<(String, String)>,
}

/// A request that could not be parsed, naming the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet of {len} bytes is too short for a request")]
    TooShort { len: usize },
    #[error("opcode {opcode} is not a request (RRQ 1 or WRQ 2)")]
    NotARequest { opcode: u16 },
    #[error("{field} is not NUL-terminated")]
    Unterminated { field: &'static str },
    #[error("{field} is not printable ASCII")]
    NotAscii { field: &'static str },
    #[error("filename is empty")]
    EmptyFilename,
    #[error("option {name:?} has no value")]
    MissingValue { name: String },
    #[error("option {name:?} given twice")]
    DuplicateOption { name: String },
}

/// Splits off one NUL-terminated printable-ASCII string.
fn take_str<'a>(buf: &'a [u8], field: &'static str) -> Result<(&'a str, &'a [u8]), ParseError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::Unterminated { field })?;
    let s = &buf[..nul];
    if !s.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ParseError::NotAscii { field });
    }
    // Printable ASCII is UTF-8.
    let s = std::str::from_utf8(s).map_err(|_| ParseError::NotAscii { field })?;
    Ok((s, &buf[nul + 1..]))
}

/// Parses an RRQ/WRQ.
pub fn parse_request(packet: &[u8]) -> Result<Request, ParseError> {
    if packet.len() < 4 {
        return Err(ParseError::TooShort { len: packet.len() });
    }
    let opcode = u16::from_be_bytes([packet[0], packet[1]]);
    let kind = match opcode {
        RRQ => RequestKind::Read,
        WRQ => RequestKind::Write,
        _ => return Err(ParseError::NotARequest { opcode }),
    };
    let (filename, rest) = take_str(&packet[2..], "filename")?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    let (mode, mut rest) = take_str(rest, "mode")?;
    let mode = match mode.to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        "mail" => Mode::Mail,
        other => Mode::Other(other.to_string()),
    };
    let mut options: Vec<(String, String)> = Vec::new();
    // Some clients pad requests with trailing NULs.
    while !rest.is_empty() && rest.iter().any(|&b| b != 0) {
        let (name, r) = take_str(rest, "option name")?;
        let name = name.to_ascii_lowercase();
        if r.is_empty() {
            return Err(ParseError::MissingValue { name });
        }
        let (value, r) = take_str(r, "option value")?;
        if options.iter().any(|(n, _)| *n == name) {
            return Err(ParseError::DuplicateOption { name });
        }
        options.push((name, value.to_string()));
        rest = r;
    }
    Ok(Request {
        kind,
        filename: filename.to_string(),
        mode,
        options,
    })
}

/// Encodes a request (used by tests and tools).
pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut p = match r.kind {
        RequestKind::Read => RRQ,
        RequestKind::Write => WRQ,
    }
    .to_be_bytes()
    .to_vec();
    let mode = match &r.mode {
        Mode::Octet => "octet",
        Mode::Netascii => "netascii",
        Mode::Mail => "mail",
        Mode::Other(m) => m,
    };
    for s in [r.filename.as_str(), mode]
        .into_iter()
        .chain(r.options.iter().flat_map(|(n, v)| [n.as_str(), v.as_str()]))
    {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

pub fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + payload.len());
    p.extend_from_slice(&DATA.to_be_bytes());
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut p = OACK.to_be_bytes().to_vec();
    for (n, v) in options {
        p.extend_from_slice(n.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut p = ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&(code as u16).to_be_bytes());
    p.extend(message.bytes().filter(|&b| b != 0));
    p.push(0);
    p
}

/// What a client sends during a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket {
    Ack(u16),
    Error { code: u16, message: String },
    Other,
}

pub fn parse_client(p: &[u8]) -> ClientPacket {
    if p.len() < 4 {
        return ClientPacket::Other;
    }
    let op = u16::from_be_bytes([p[0], p[1]]);
    let n = u16::from_be_bytes([p[2], p[3]]);
    match op {
        ACK => ClientPacket::Ack(n),
        ERROR => ClientPacket::Error {
            code: n,
            message: String::from_utf8_lossy(p[4..].split(|&b| b == 0).next().unwrap_or(&[]))
                .into_owned(),
        },
        _ => ClientPacket::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_an_ipxe_request() {
        let r =
            parse_request(b"\0\x01undionly.kpxe\0octet\0blksize\x001432\0tsize\x000\0").unwrap();
        assert_eq!(r.kind, RequestKind::Read);
        assert_eq!(r.filename, "undionly.kpxe");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            r.options,
            vec![
                ("blksize".into(), "1432".into()),
                ("tsize".into(), "0".into())
            ]
        );
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            parse_request(b"\0\x01"),
            Err(ParseError::TooShort { len: 2 })
        );
        assert_eq!(
            parse_request(b"\0\x03a\0octet\0"),
            Err(ParseError::NotARequest { opcode: 3 })
        );
        assert_eq!(
            parse_request(b"\0\x01abc"),
            Err(ParseError::Unterminated { field: "filename" })
        );
        assert_eq!(
            parse_request(b"\0\x01a\0oct"),
            Err(ParseError::Unterminated { field: "mode" })
        );
        assert_eq!(
            parse_request(b"\0\x01\0octet\0"),
            Err(ParseError::EmptyFilename)
        );
        assert_eq!(
            parse_request(b"\0\x01a\xff\0octet\0"),
            Err(ParseError::NotAscii { field: "filename" })
        );
        assert_eq!(
            parse_request(b"\0\x01a\0octet\0blksize\0"),
            Err(ParseError::MissingValue {
                name: "blksize".into()
            })
        );
        assert_eq!(
            parse_request(b"\0\x01a\0octet\0tsize\x000\0TSIZE\x000\0"),
            Err(ParseError::DuplicateOption {
                name: "tsize".into()
            })
        );
        // Trailing NUL padding is tolerated.
        assert!(parse_request(b"\0\x01a\0octet\0\0\0").is_ok());
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let s = "[ -~]{1,40}";
        (
            prop_oneof![Just(RequestKind::Read), Just(RequestKind::Write)],
            s,
            prop_oneof![Just(Mode::Octet), Just(Mode::Netascii), Just(Mode::Mail)],
            prop::collection::btree_map("[a-z]{1,10}", "[ -~]{0,20}", 0..5),
        )
            .prop_map(|(kind, filename, mode, opts)| Request {
                kind,
                filename,
                mode,
                options: opts.into_iter().collect(),
            })
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_request(&bytes);
            let _ = parse_client(&bytes);
        }

        #[test]
        fn requests_round_trip(r in arb_request()) {
            prop_assert_eq!(parse_request(&encode_request(&r)), Ok(r));
        }

        #[test]
        fn mutated_requests_never_panic(r in arb_request(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut p = encode_request(&r);
            for (i, b) in flips {
                let i = i.index(p.len());
                p[i] = b;
            }
            let _ = parse_request(&p);
        }
    }
}
