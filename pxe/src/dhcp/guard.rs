//! Checks a raw DHCPv4 packet before dhcproto sees it.
//!
//! dhcproto 0.15.0 `debug_assert!`s attacker-controlled option lengths and
//! subtracts from them unchecked (`src/v4/options.rs`: option 94 `len == 3`,
//! 81 `len >= 3` then `len - 3`, 152–155 `len == 4`, 80 `len == 0`). In debug and test builds these panic; in release builds they
//! silently mis-parse. Found by fuzzing (../shared/docs/deps.md §2). We walk
//! the options exactly as dhcproto does, including its RFC 3396 merging of
//! consecutive options with the same code, and refuse any packet whose
//! merged lengths would reach those paths. The decode call is additionally
//! wrapped in `catch_unwind` (see `decode`), so a panic we did not foresee
//! costs one packet, not the service.

use std::panic::{AssertUnwindSafe, catch_unwind};

use dhcproto::Decodable;
use dhcproto::v4::Message;

use super::DhcpError;

/// Fixed BOOTP header (236 bytes) plus the magic cookie.
pub const OPTIONS_OFFSET: usize = 240;
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// The lengths dhcproto requires for the options it would panic on.
fn length_ok(code: u8, len: usize) -> Result<(), &'static str> {
    let ok = match code {
        80 => len == 0,        // rapid commit
        81 => len >= 3,        // client FQDN: flags, rcode1, rcode2, name
        94 => len == 3,        // client network interface identifier
        152..=155 => len == 4, // bulk leasequery times
        _ => return Ok(()),
    };
    if ok {
        Ok(())
    } else {
        Err(match code {
            80 => "0 bytes",
            81 => "at least 3 bytes",
            94 => "3 bytes",
            _ => "4 bytes",
        })
    }
}

/// Refuses packets that are too short, lack the magic cookie, have an
/// option running past the end, or carry an option length dhcproto would
/// panic on.
pub fn validate(packet: &[u8]) -> Result<(), DhcpError> {
    if packet.len() < OPTIONS_OFFSET {
        return Err(DhcpError::Truncated { len: packet.len() });
    }
    let cookie: [u8; 4] = packet[236..240].try_into().expect("4 bytes");
    if cookie != MAGIC_COOKIE {
        return Err(DhcpError::BadMagicCookie { found: cookie });
    }
    let mut at = OPTIONS_OFFSET;
    // (code, merged length) of the run of same-code options being read.
    let mut run: Option<(u8, usize)> = None;
    let check = |run: Option<(u8, usize)>| match run {
        Some((code, len)) => length_ok(code, len).map_err(|expected| DhcpError::BadOptionLength {
            code,
            len,
            expected,
        }),
        None => Ok(()),
    };
    while at < packet.len() {
        let code = packet[at];
        if code == 0 || code == 255 {
            // Pad or End finishes a run; dhcproto stops at End.
            check(run.take())?;
            if code == 255 {
                return Ok(());
            }
            at += 1;
            continue;
        }
        let Some(&len) = packet.get(at + 1) else {
            return Err(DhcpError::OptionOverrun { code, offset: at });
        };
        let end = at + 2 + usize::from(len);
        if end > packet.len() {
            return Err(DhcpError::OptionOverrun { code, offset: at });
        }
        run = match run {
            Some((c, l)) if c == code => Some((c, l + usize::from(len))),
            prev => {
                check(prev)?;
                Some((code, usize::from(len)))
            }
        };
        at = end;
    }
    check(run)
}

/// Validates, then decodes with any decoder panic contained.
pub fn decode(packet: &[u8]) -> Result<Message, DhcpError> {
    validate(packet)?;
    let result = catch_unwind(AssertUnwindSafe(|| {
        Message::decode(&mut dhcproto::Decoder::new(packet))
    }));
    match result {
        Ok(Ok(msg)) => Ok(msg),
        Ok(Err(e)) => Err(DhcpError::Decode(e)),
        Err(_) => Err(DhcpError::DecoderPanicked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(options: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = 1; // BOOTREQUEST
        p[1] = 1;
        p[2] = 6;
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[53, 1, 1]); // DISCOVER
        p.extend_from_slice(options);
        p.push(255);
        p
    }

    /// The inputs the fuzzer found, plus the other assertion sites.
    const KNOWN_BAD: &[(&[u8], u8)] = &[
        (&[94, 2, 1, 2], 94),
        (&[94, 4, 1, 2, 3, 4], 94),
        (&[94, 0], 94),
        (&[81, 2, 0, 0], 81),
        (&[81, 0], 81),
        (&[152, 3, 0, 0, 0], 152),
        (&[155, 5, 0, 0, 0, 0, 0], 155),
        (&[80, 1, 0], 80),
        // RFC 3396 merging: 2 + 2 bytes of option 94 make 4.
        (&[94, 2, 1, 2, 94, 2, 3, 4], 94),
    ];

    #[test]
    fn dhcproto_panics_on_these_inputs_unguarded() {
        // Documents why the guard exists. If this starts failing after a
        // dhcproto upgrade, the upstream bug is fixed; keep the guard anyway.
        for (opts, _) in KNOWN_BAD {
            let p = packet(opts);
            let r = catch_unwind(|| Message::decode(&mut dhcproto::Decoder::new(&p)));
            assert!(r.is_err(), "dhcproto no longer panics on {opts:?}");
        }
    }

    #[test]
    fn known_bad_inputs_are_refused_naming_the_option() {
        for (opts, code) in KNOWN_BAD {
            match decode(&packet(opts)) {
                Err(DhcpError::BadOptionLength { code: c, .. }) => assert_eq!(c, *code),
                other => panic!("{opts:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn good_lengths_pass_including_split_options() {
        for opts in [
            &[94, 3, 1, 2, 1][..],
            &[94, 1, 1, 94, 2, 2, 1],
            &[81, 3, 0, 0, 0],
            &[151, 0],
            &[152, 4, 0, 0, 0, 0],
            &[80, 0],
        ] {
            decode(&packet(opts)).unwrap_or_else(|e| panic!("{opts:?}: {e}"));
        }
    }

    #[test]
    fn structural_errors() {
        assert!(matches!(
            decode(&[0; 10]),
            Err(DhcpError::Truncated { len: 10 })
        ));
        let mut p = packet(&[]);
        p[236] = 0;
        assert!(matches!(decode(&p), Err(DhcpError::BadMagicCookie { .. })));
        let mut p = packet(&[]);
        p.pop();
        p.extend_from_slice(&[12, 10, b'a']);
        assert!(matches!(
            decode(&p),
            Err(DhcpError::OptionOverrun { code: 12, .. })
        ));
    }
}
