//! What names, labels and enumerated values the API accepts
//! (bigv-api.md §3, §12). Every refusal says what is wrong in words: the
//! clients drop a lone "is invalid".

/// Longest name: a DNS label.
pub const MAX_NAME: usize = 63;

/// Shortest account name (bigv-api.md §12). Groups and VMs may be one
/// character long.
pub const MIN_ACCOUNT_NAME: usize = 3;

/// Keys `signal` accepts in `sendkey` data (dash-separated), which
/// `/definitions` lists as `sendkeys`: qemu's key names (QKeyCode), so
/// they pass straight through to it.
pub const SENDKEYS: &[&str] = &[
    // Modifiers.
    "shift",
    "shift_r",
    "alt",
    "alt_r",
    "altgr",
    "altgr_r",
    "ctrl",
    "ctrl_r",
    "meta_l",
    "meta_r",
    "menu",
    // Editing and navigation.
    "esc",
    "tab",
    "ret",
    "spc",
    "backspace",
    "caps_lock",
    "insert",
    "delete",
    "home",
    "end",
    "pgup",
    "pgdn",
    "left",
    "up",
    "down",
    "right",
    "print",
    "sysrq",
    "pause",
    "num_lock",
    "scroll_lock",
    // Function keys.
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "f6",
    "f7",
    "f8",
    "f9",
    "f10",
    "f11",
    "f12",
    // Digits and letters.
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "p",
    "q",
    "r",
    "s",
    "t",
    "u",
    "v",
    "w",
    "x",
    "y",
    "z",
    // Punctuation.
    "minus",
    "equal",
    "bracket_left",
    "bracket_right",
    "semicolon",
    "apostrophe",
    "grave_accent",
    "backslash",
    "comma",
    "dot",
    "slash",
    "asterisk",
    "less",
    // Keypad.
    "kp_0",
    "kp_1",
    "kp_2",
    "kp_3",
    "kp_4",
    "kp_5",
    "kp_6",
    "kp_7",
    "kp_8",
    "kp_9",
    "kp_divide",
    "kp_multiply",
    "kp_subtract",
    "kp_add",
    "kp_enter",
    "kp_decimal",
];

/// Hardware profiles a VM may use (`/definitions` `hardware_profiles`):
/// the two the heads implement.
pub const HARDWARE_PROFILES: &[&str] = &["virtio2013", "compatibility2013"];

/// The profile of a VM created without one.
pub const DEFAULT_HARDWARE_PROFILE: &str = "virtio2013";

/// Console keymaps (`/definitions` `keymaps`): qemu's names (`-k`).
pub const KEYMAPS: &[&str] = &[
    "ar", "bepo", "cz", "da", "de", "de-ch", "en-gb", "en-us", "es", "et", "fi", "fo", "fr",
    "fr-be", "fr-ca", "fr-ch", "hr", "hu", "is", "it", "ja", "lt", "lv", "mk", "nl", "no", "pl",
    "pt", "pt-br", "ru", "sl", "sv", "th", "tr",
];

/// Grades always offered, even before a pool of that grade exists (a
/// disc of one is refused for capacity until a pool appears).
pub const DEFAULT_STORAGE_GRADES: &[&str] = &["sata", "ssd"];

/// Problems with an account, group or VM name; empty when it is good.
/// Names are DNS labels (`vm.group.account.<domain>`): lower-case letters,
/// digits and hyphens, starting and ending with a letter or digit.
pub fn name_problems(name: &str, min: usize) -> Vec<String> {
    let mut problems = vec![];
    if name.is_empty() {
        return vec!["can't be blank".into()];
    }
    let len = name.chars().count();
    if len < min {
        problems.push(format!("is too short (minimum is {min} characters)"));
    }
    if len > MAX_NAME {
        problems.push(format!("is too long (maximum is {MAX_NAME} characters)"));
    }
    if name.contains('.') {
        problems.push("may not contain dots (names are parts of a DNS name)".into());
    }
    let bad: String = name
        .chars()
        .filter(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
        .collect();
    if !bad.is_empty() {
        problems.push(format!(
            "may contain only lower-case letters, digits and hyphens (not {bad:?})"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        problems.push("must start and end with a letter or a digit".into());
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        problems.push("may not be only digits (it would read as an id)".into());
    }
    problems
}

/// Problems with a disc label; empty when it is good. Labels are free
/// text, except that they appear in URLs and must not look like the guest
/// device names (`vda`, `sdb`, `hda`…) or like ids.
pub fn disc_label_problems(label: &str) -> Vec<String> {
    let mut problems = vec![];
    if label.trim().is_empty() {
        return vec!["can't be blank".into()];
    }
    if label.chars().count() > MAX_NAME {
        problems.push(format!("is too long (maximum is {MAX_NAME} characters)"));
    }
    if label.chars().any(|c| {
        c == '/' || c == '?' || c == '#' || c == '%' || c.is_whitespace() || c.is_control()
    }) {
        problems.push("may not contain spaces or the characters / ? # %".into());
    }
    if looks_like_device(label) {
        problems.push(format!(
            "may not look like a guest device name such as vda or sdb ({label:?} does)"
        ));
    }
    if label.chars().all(|c| c.is_ascii_digit()) {
        problems.push("may not be only digits (it would read as an id)".into());
    }
    problems
}

/// `vda`, `sdb`, `hdc1`, `xvda`: what guests call their discs.
fn looks_like_device(label: &str) -> bool {
    let rest = label.strip_prefix('x').unwrap_or(label);
    let Some(rest) = ["vd", "sd", "hd"].iter().find_map(|p| rest.strip_prefix(p)) else {
        return false;
    };
    let letters = rest.trim_end_matches(|c: char| c.is_ascii_digit());
    (1..=2).contains(&letters.len()) && letters.chars().all(|c| c.is_ascii_lowercase())
}

/// Problems with `sendkey` data such as `ctrl-alt-delete`.
pub fn sendkey_problems(data: &str) -> Vec<String> {
    if data.trim().is_empty() {
        return vec!["can't be blank: name the keys to press, e.g. ctrl-alt-delete".into()];
    }
    let unknown: Vec<&str> = data.split('-').filter(|k| !SENDKEYS.contains(k)).collect();
    if unknown.is_empty() {
        vec![]
    } else {
        vec![format!(
            "names keys that do not exist: {} (see sendkeys in /definitions)",
            unknown.join(", ")
        )]
    }
}

/// `http://` or `https://` followed by a host, no spaces.
pub fn cdrom_url_problems(url: &str) -> Vec<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        None => vec!["must be an http:// or https:// URL of an ISO image".into()],
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            vec!["must name a host after http:// or https://".into()]
        }
        Some(_) if url.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            vec!["may not contain spaces".into()]
        }
        Some(_) if url.len() > 2048 => vec!["is too long (maximum is 2048 characters)".into()],
        Some(_) => vec![],
    }
}

/// A reverse-DNS name: dot-separated labels of letters, digits, hyphens
/// and underscores.
pub fn rdns_problems(name: &str) -> Vec<String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.len() > 253 {
        return vec!["is too long (maximum is 253 characters)".into()];
    }
    let ok = trimmed.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_NAME
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if ok {
        vec![]
    } else {
        vec!["must be a host name such as host.example.com".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_label_rules_with_specific_messages() {
        assert!(name_problems("web1", 1).is_empty());
        assert!(name_problems("a", 1).is_empty());
        assert!(name_problems("nrgi-dev", 3).is_empty());
        assert_eq!(
            name_problems("ab", 3),
            ["is too short (minimum is 3 characters)"]
        );
        assert_eq!(name_problems("", 3), ["can't be blank"]);
        assert!(name_problems("Web", 1)[0].contains("lower-case"));
        assert!(name_problems("a.b", 1)[0].contains("dots"));
        assert!(name_problems("-ab", 1)[0].contains("start and end"));
        assert!(name_problems("123", 1)[0].contains("digits"));
        assert!(name_problems(&"a".repeat(64), 1)[0].contains("too long"));
        for problems in [name_problems("Web!", 1), name_problems("x y", 1)] {
            assert!(!problems.is_empty());
            assert!(problems.iter().all(|p| p != "is invalid"));
        }
    }

    #[test]
    fn disc_labels_may_not_look_like_devices() {
        assert!(disc_label_problems("disc-1").is_empty());
        assert!(disc_label_problems("Data Disc").len() == 1);
        for device in ["vda", "sdb", "hda", "xvda", "vdb1"] {
            assert!(!disc_label_problems(device).is_empty(), "{device}");
        }
        assert!(disc_label_problems("vdata").is_empty());
        assert!(disc_label_problems("hdd-archive").is_empty());
        assert!(!disc_label_problems("12").is_empty());
    }

    #[test]
    fn sendkeys_and_urls() {
        assert!(sendkey_problems("ctrl-alt-delete").is_empty());
        assert!(sendkey_problems("ctrl-alt-bogus")[0].contains("bogus"));
        assert!(cdrom_url_problems("https://example.com/x.iso").is_empty());
        assert!(!cdrom_url_problems("ftp://example.com/x.iso").is_empty());
        assert!(!cdrom_url_problems("http:///x.iso").is_empty());
        assert!(rdns_problems("host.example.com").is_empty());
        assert!(!rdns_problems("bad host").is_empty());
    }
}
