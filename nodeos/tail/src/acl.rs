//! Which heads may connect to a disc: the `access_control_list` field of
//! `disc.GRADE.ID`, as a set of IP addresses. Empty means nobody.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access_control_list[{index}]: {entry:?} is not an IP address")]
pub struct AclError {
    pub index: usize,
    pub entry: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl(BTreeSet<IpAddr>);

impl Acl {
    /// Parses the spine's list of address strings. IPv4-mapped IPv6
    /// addresses are stored as IPv4 so either spelling matches.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Acl, AclError> {
        list.iter()
            .enumerate()
            .map(|(index, s)| {
                let entry = s.as_ref().trim();
                // Accept `[v6]` as written in URIs.
                let bare = entry.trim_start_matches('[').trim_end_matches(']');
                bare.parse::<IpAddr>().map(normalise).map_err(|_| AclError {
                    index,
                    entry: entry.to_owned(),
                })
            })
            .collect::<Result<_, _>>()
            .map(Acl)
    }

    pub fn allows(&self, peer: IpAddr) -> bool {
        self.0.contains(&normalise(peer))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpAddr> {
        self.0.iter()
    }
}

impl FromIterator<IpAddr> for Acl {
    fn from_iter<T: IntoIterator<Item = IpAddr>>(iter: T) -> Self {
        Acl(iter.into_iter().map(normalise).collect())
    }
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "[{}]", list.join(", "))
    }
}

fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_allow_and_name_the_bad_entry() {
        let acl = Acl::parse(&["192.0.2.1", "[fd00::1]", "::ffff:10.0.0.1"]).unwrap();
        assert!(acl.allows("192.0.2.1".parse().unwrap()));
        assert!(acl.allows("fd00::1".parse().unwrap()));
        assert!(acl.allows("10.0.0.1".parse().unwrap()));
        assert!(acl.allows("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!acl.allows("192.0.2.2".parse().unwrap()));
        assert!(!Acl::default().allows("192.0.2.1".parse().unwrap()));
        let e = Acl::parse(&["192.0.2.1", "head7"]).unwrap_err().to_string();
        assert_eq!(e, "access_control_list[1]: \"head7\" is not an IP address");
    }
}
