//! The argument grammar (bigv-cli.md §3): server, group and account
//! names, sizes and disc specs.
//!
//! A name as typed may leave out its group and account; it becomes a
//! [`VmRef`]/[`GroupRef`] only once the account is known, and only those
//! build URLs. So no URL can be built with an empty account segment,
//! which was bytemark-client 4.0's bug (`/accounts//groups/...`).

use std::fmt;

use crate::error::{CliError, Result};

/// `vm[.group[.account[.cluster...]]]`, as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmName {
    pub name: String,
    pub group: Option<String>,
    pub account: Option<String>,
}

/// `group[.account]`, as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupName {
    pub name: String,
    pub account: Option<String>,
}

fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn check_label(label: &str, what: &str, whole: &str) -> Result<()> {
    if label_ok(label) {
        Ok(())
    } else if label.is_empty() {
        Err(CliError::usage(format!(
            "{whole:?} is not a valid {what} name: it has an empty part"
        )))
    } else {
        Err(CliError::usage(format!(
            "{whole:?} is not a valid {what} name: {label:?} may contain only letters, digits and hyphens"
        )))
    }
}

impl VmName {
    /// Parses `web1`, `web1.prod`, `web1.prod.alice` or the full DNS name
    /// `web1.prod.alice.uk0.bigv.io` (labels after the account are ignored).
    pub fn parse(text: &str) -> Result<VmName> {
        let text = text.trim().trim_end_matches('.');
        if text.is_empty() {
            return Err(CliError::usage("a server name is needed"));
        }
        let parts: Vec<&str> = text.split('.').collect();
        for p in parts.iter().take(3) {
            check_label(p, "server", text)?;
        }
        Ok(VmName {
            name: parts[0].to_owned(),
            group: parts.get(1).map(|s| (*s).to_owned()),
            account: parts.get(2).map(|s| (*s).to_owned()),
        })
    }

    /// A numeric name is a server id (`/virtual_machines/{id}`).
    pub fn id(&self) -> Option<u64> {
        if self.group.is_none() && self.account.is_none() {
            self.name.parse().ok()
        } else {
            None
        }
    }
}

impl GroupName {
    pub fn parse(text: &str) -> Result<GroupName> {
        let text = text.trim().trim_end_matches('.');
        if text.is_empty() {
            return Err(CliError::usage("a group name is needed"));
        }
        let parts: Vec<&str> = text.split('.').collect();
        for p in parts.iter().take(2) {
            check_label(p, "group", text)?;
        }
        Ok(GroupName {
            name: parts[0].to_owned(),
            account: parts.get(1).map(|s| (*s).to_owned()),
        })
    }
}

/// An account name: the text before the first dot.
pub fn account_name(text: &str) -> Result<String> {
    let first = text.trim().split('.').next().unwrap_or("");
    check_label(first, "account", text)?;
    Ok(first.to_owned())
}

/// A server whose account and group are known: what URLs are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRef {
    pub account: String,
    pub group: String,
    pub name: String,
}

/// A group whose account is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub account: String,
    pub name: String,
}

/// Percent-encodes one path segment (names are checked, but labels and
/// usernames typed by hand may hold anything).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl GroupRef {
    pub fn path(&self) -> String {
        format!(
            "/accounts/{}/groups/{}",
            seg(&self.account),
            seg(&self.name)
        )
    }
}

impl VmRef {
    pub fn group(&self) -> GroupRef {
        GroupRef {
            account: self.account.clone(),
            name: self.group.clone(),
        }
    }

    pub fn path(&self) -> String {
        format!(
            "{}/virtual_machines/{}",
            self.group().path(),
            seg(&self.name)
        )
    }
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.name, self.group, self.account)
    }
}

impl fmt::Display for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.account)
    }
}

/// A size in MiB, or a change of size (`+5G`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    Absolute(u64),
    Grow(u64),
}

impl SizeSpec {
    /// `[+]size`; a plain size is absolute.
    pub fn parse(text: &str) -> Result<SizeSpec> {
        match text.trim().strip_prefix('+') {
            Some(rest) => Ok(SizeSpec::Grow(parse_size(rest)?)),
            None => Ok(SizeSpec::Absolute(parse_size(text)?)),
        }
    }

    /// The new size given the current one.
    pub fn apply(self, current: u64) -> u64 {
        match self {
            SizeSpec::Absolute(n) => n,
            SizeSpec::Grow(n) => current.saturating_add(n),
        }
    }
}

/// `<number>[unit]` in MiB. Units (any case): `m`/`mb`/`mib`, `g`/`gb`/
/// `gib`, `t`/`tb`/`tib`, all binary; no unit means GiB, as in
/// bytemark-client. Fractions are fine if they come to whole MiB (`1.5G`).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = |why: &str| {
        CliError::usage(format!(
            "{text:?} is not a size{why}: use a number with an optional unit, e.g. 2048M, 25G or 1T"
        ))
    };
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(bad(""));
    }
    let mib_per: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "m" | "mb" | "mib" => 1,
        "" | "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => return Err(bad(&format!(" ({:?} is not a unit)", unit.trim()))),
    };
    let value = match number.split_once('.') {
        None => number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mib_per)),
        Some((whole, frac)) => {
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| bad(""))?
            };
            if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(""));
            }
            let scale = 10u64.pow(frac.len() as u32);
            let frac: u64 = frac.parse().map_err(|_| bad(""))?;
            let part = frac * mib_per;
            if !part.is_multiple_of(scale) {
                return Err(bad(" (it is not a whole number of MiB)"));
            }
            whole
                .checked_mul(mib_per)
                .and_then(|w| w.checked_add(part / scale))
        }
    };
    match value {
        Some(0) => Err(bad(" (it is zero)")),
        Some(v) => Ok(v),
        None => Err(bad(" (it is too big)")),
    }
}

/// A disc to create: `[label:][grade:]size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscSpec {
    pub label: Option<String>,
    pub grade: Option<String>,
    /// MiB.
    pub size: u64,
}

impl DiscSpec {
    pub fn parse(text: &str) -> Result<DiscSpec> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        let (label, grade, size) = match parts.as_slice() {
            [size] => (None, None, *size),
            [grade, size] => (None, Some(*grade), *size),
            [label, grade, size] => (Some(*label), Some(*grade), *size),
            _ => {
                return Err(CliError::usage(format!(
                    "{text:?} is not a disc spec: use [label:][grade:]size, e.g. 25G or ssd:50G"
                )));
            }
        };
        let nonempty = |s: Option<&str>, what: &str| -> Result<Option<String>> {
            match s {
                Some("") => Err(CliError::usage(format!(
                    "{text:?} is not a disc spec: the {what} is empty"
                ))),
                other => Ok(other.map(str::to_owned)),
            }
        };
        Ok(DiscSpec {
            label: nonempty(label, "label")?,
            grade: nonempty(grade, "grade")?,
            size: parse_size(size)?,
        })
    }

    /// Several specs separated by commas or spaces (one `--disc` may hold
    /// `sata:25G,ssd:50G`).
    pub fn parse_list(texts: &[String]) -> Result<Vec<DiscSpec>> {
        texts
            .iter()
            .flat_map(|t| t.split([',', ' ']))
            .filter(|t| !t.trim().is_empty())
            .map(DiscSpec::parse)
            .collect()
    }
}

/// `1GiB`, `512MiB`, `1.5TiB`: MiB for people.
pub fn human_size(mib: u64) -> String {
    if mib >= 1024 * 1024 && mib.is_multiple_of(1024 * 1024) {
        format!("{}TiB", mib / (1024 * 1024))
    } else if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}GiB", mib / 1024)
    } else if mib >= 1024 {
        let g = mib as f64 / 1024.0;
        format!("{g:.1}GiB")
    } else {
        format!("{mib}MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_take_any_prefix_of_the_dns_name() {
        assert_eq!(
            VmName::parse("web1").unwrap(),
            VmName {
                name: "web1".into(),
                group: None,
                account: None
            }
        );
        let full = VmName::parse("web1.prod.alice.uk0.bigv.io").unwrap();
        assert_eq!(full.group.as_deref(), Some("prod"));
        assert_eq!(full.account.as_deref(), Some("alice"));
        assert_eq!(VmName::parse("42").unwrap().id(), Some(42));
        assert_eq!(VmName::parse("42.default").unwrap().id(), None);
        assert!(VmName::parse("web1..alice").is_err());
        assert!(VmName::parse("").is_err());
        let e = VmName::parse("we b1").unwrap_err();
        assert!(e.message.contains("letters, digits"), "{e}");
        assert_eq!(
            GroupName::parse("prod.alice").unwrap().account.unwrap(),
            "alice"
        );
        assert_eq!(account_name("alice.uk0").unwrap(), "alice");
    }

    #[test]
    fn urls_come_only_from_resolved_names() {
        let vm = VmRef {
            account: "alice".into(),
            group: "default".into(),
            name: "web 1".into(),
        };
        assert_eq!(
            vm.path(),
            "/accounts/alice/groups/default/virtual_machines/web%201"
        );
        assert_eq!(vm.to_string(), "web 1.default.alice");
    }

    #[test]
    fn sizes_default_to_gib_and_come_out_in_mib() {
        assert_eq!(parse_size("1G").unwrap(), 1024);
        assert_eq!(parse_size("25g").unwrap(), 25600);
        assert_eq!(parse_size("2048M").unwrap(), 2048);
        assert_eq!(parse_size("2").unwrap(), 2048);
        assert_eq!(parse_size("512mib").unwrap(), 512);
        assert_eq!(parse_size("1T").unwrap(), 1048576);
        assert_eq!(parse_size("1.5G").unwrap(), 1536);
        assert!(parse_size("1.0001G").is_err());
        assert!(parse_size("lots").is_err());
        assert!(
            parse_size("5X")
                .unwrap_err()
                .message
                .contains("\"X\" is not a unit")
        );
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
        assert_eq!(SizeSpec::parse("+5G").unwrap(), SizeSpec::Grow(5120));
        assert_eq!(SizeSpec::parse("+5G").unwrap().apply(25600), 30720);
        assert_eq!(SizeSpec::parse("30G").unwrap().apply(25600), 30720);
    }

    #[test]
    fn disc_specs_are_label_grade_size() {
        assert_eq!(
            DiscSpec::parse("25G").unwrap(),
            DiscSpec {
                label: None,
                grade: None,
                size: 25600
            }
        );
        let d = DiscSpec::parse("ssd:50G").unwrap();
        assert_eq!((d.grade.as_deref(), d.size), (Some("ssd"), 51200));
        let d = DiscSpec::parse("data:archive:1T").unwrap();
        assert_eq!(d.label.as_deref(), Some("data"));
        assert!(DiscSpec::parse("a:b:c:d").is_err());
        assert!(DiscSpec::parse(":25G").is_err());
        let list = DiscSpec::parse_list(&["sata:25G,ssd:50G".into(), "10G".into()]).unwrap();
        assert_eq!(list.len(), 3);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(1024), "1GiB");
        assert_eq!(human_size(25600), "25GiB");
        assert_eq!(human_size(512), "512MiB");
        assert_eq!(human_size(1536), "1.5GiB");
        assert_eq!(human_size(1048576), "1TiB");
    }
}
