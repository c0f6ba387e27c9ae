//! Ethernet MAC addresses, the key every boot service uses for a node.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `52-54-00-00-00-11`: iPXE's `:hexhyp` form, safe in URLs and paths.
    pub fn hyphenated(&self) -> String {
        let b = self.0;
        format!(
            "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex octets separated by ':' or '-'")]
pub struct ParseMacError {
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Accepts `52:54:00:00:00:11` and `52-54-00-00-00-11`, any case.
    fn from_str(s: &str) -> Result<MacAddr, ParseMacError> {
        let err = || ParseMacError {
            input: s.to_string(),
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let m = MacAddr([0x52, 0x54, 0, 0xab, 0, 0x11]);
        assert_eq!(m.to_string(), "52:54:00:ab:00:11");
        assert_eq!(m.hyphenated(), "52-54-00-ab-00-11");
        assert_eq!("52:54:00:AB:00:11".parse::<MacAddr>(), Ok(m));
        assert_eq!("52-54-00-ab-00-11".parse::<MacAddr>(), Ok(m));
        for bad in [
            "",
            "52:54:00:ab:00",
            "52:54:00:ab:00:11:22",
            "5:54:00:ab:00:11",
            "52:54:00:ab:00:zz",
            "+2:54:00:ab:00:11",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
