//! What the test guest does with a cloud-init NoCloud seed drive (the
//! head's `seed.rs` writes it): find the FAT volume labelled `CIDATA`,
//! read `meta-data` and `user-data`, check a root password against the
//! delivered hash, and remember on its own disc which instance's
//! first-boot script it has "run", so it runs once per imaging.
//!
//! A real guest runs cloud-init, which reads user-data as YAML; BigV
//! writes it as JSON after the `#cloud-config` line, so this guest reads
//! JSON and needs no YAML parser.

use std::io::{Cursor, Read};

use base64ct::{Base64, Encoding};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The label NoCloud looks for.
pub const LABEL: &str = "CIDATA";
/// Where the first-boot marker starts, in the marker sector.
const MARKER: &str = "BIGV-FIRSTBOOT ";

/// What the seed delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub instance_id: String,
    pub hostname: String,
    pub password_hash: Option<String>,
    /// How many `ssh_authorized_keys` root gets.
    pub keys: usize,
    /// The firstboot script, decoded from its `write_files` entry.
    pub firstboot: Option<Vec<u8>>,
}

/// The volume label in a FAT boot sector (FAT12/16 or FAT32 layout),
/// trailing blanks removed; `None` if the sector is not FAT with one.
pub fn label(boot: &[u8]) -> Option<String> {
    if boot.len() < 512 || boot[510..512] != [0x55, 0xaa] {
        return None;
    }
    let at = if &boot[82..87] == b"FAT32" && boot[66] == 0x29 {
        71
    } else if boot[38] == 0x29 && &boot[54..57] == b"FAT" {
        43
    } else {
        return None;
    };
    let l = String::from_utf8_lossy(&boot[at..at + 11])
        .trim_end()
        .to_owned();
    (!l.is_empty()).then_some(l)
}

/// Reads both files from a FAT image.
pub fn read_image(image: Vec<u8>) -> Result<Seed, String> {
    let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new())
        .map_err(|e| format!("not a FAT volume: {e}"))?;
    let root = fs.root_dir();
    let read = |name: &str| {
        let mut text = String::new();
        root.open_file(name)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| format!("{name}: {e}"))?;
        Ok::<_, String>(text)
    };
    let meta = read("meta-data")?;
    let user = read("user-data")?;
    parse(&meta, &user)
}

/// A `key: value` line's value, JSON-quoted or plain.
fn meta_value(meta: &str, key: &str) -> Option<String> {
    meta.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?.trim();
        Some(serde_json::from_str::<String>(v).unwrap_or_else(|_| v.to_owned()))
    })
}

/// Parses `meta-data` and `user-data` as BigV writes them.
pub fn parse(meta: &str, user: &str) -> Result<Seed, String> {
    let instance_id = meta_value(meta, "instance-id").ok_or("meta-data has no instance-id")?;
    let hostname = meta_value(meta, "local-hostname").unwrap_or_default();
    let body = user
        .strip_prefix("#cloud-config\n")
        .ok_or("user-data is not #cloud-config")?;
    let start = body.find('{').ok_or("user-data holds no settings")?;
    let cfg: Value = serde_json::from_str(&body[start..]).map_err(|e| format!("user-data: {e}"))?;
    let password_hash = cfg["chpasswd"]["users"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["name"] == "root" && u["type"] == "hash")
        .and_then(|u| u["password"].as_str())
        .map(str::to_owned);
    let keys = cfg["ssh_authorized_keys"].as_array().map_or(0, Vec::len);
    let firstboot = match cfg["write_files"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["path"] == "/var/lib/bigv/firstboot")
    {
        None => None,
        Some(f) => {
            let content = f["content"].as_str().unwrap_or_default();
            Some(match f["encoding"].as_str() {
                Some("b64") => {
                    Base64::decode_vec(content).map_err(|e| format!("firstboot: {e}"))?
                }
                _ => content.as_bytes().to_vec(),
            })
        }
    };
    Ok(Seed {
        instance_id,
        hostname,
        password_hash,
        keys,
        firstboot,
    })
}

/// Whether `password` is root's, by the delivered crypt(3) hash.
pub fn password_ok(hash: &str, password: &str) -> bool {
    use sha_crypt::PasswordVerifier as _;
    sha_crypt::ShaCrypt::SHA512
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// The first 12 hex digits of SHA-256: enough to tell scripts apart in a log.
pub fn short_sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The `cidata: …` line the guest prints.
pub fn status_line(seed: &Seed) -> String {
    format!(
        "{}instance-id={} hostname={} password={} keys={} firstboot={}",
        crate::lines::CIDATA,
        seed.instance_id,
        seed.hostname,
        if seed.password_hash.is_some() {
            "set"
        } else {
            "none"
        },
        seed.keys,
        seed.firstboot
            .as_deref()
            .map_or_else(|| "none".to_owned(), short_sha256),
    )
}

/// The marker sector recording that `instance_id`'s script has run.
pub fn marker(instance_id: &str) -> [u8; 512] {
    let mut s = [0u8; 512];
    let text = format!("{MARKER}{instance_id}\n");
    let n = text.len().min(512);
    s[..n].copy_from_slice(&text.as_bytes()[..n]);
    s
}

/// The instance a marker sector names, if it is one.
pub fn marked_instance(sector: &[u8]) -> Option<String> {
    let end = sector.iter().position(|&b| b == b'\n')?;
    let text = std::str::from_utf8(&sector[..end]).ok()?;
    text.strip_prefix(MARKER).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "instance-id: \"bigv-vm1-op2\"\nlocal-hostname: \"web1.example\"\n";

    #[test]
    fn parses_what_bigv_writes() {
        let user = "#cloud-config\n# comment\n{\n  \"chpasswd\": {\"users\": [{\"name\": \"root\", \
                    \"password\": \"$6$s$h\", \"type\": \"hash\"}]},\n  \"ssh_authorized_keys\": \
                    [\"a\", \"b\", \"c\"],\n  \"write_files\": [{\"path\": \"/var/lib/bigv/firstboot\", \
                    \"encoding\": \"b64\", \"content\": \"ZWNobyBoaQo=\"}]\n}\n";
        let s = parse(META, user).unwrap();
        assert_eq!(s.instance_id, "bigv-vm1-op2");
        assert_eq!(s.hostname, "web1.example");
        assert_eq!(s.password_hash.as_deref(), Some("$6$s$h"));
        assert_eq!(s.keys, 3);
        assert_eq!(s.firstboot.as_deref(), Some(&b"echo hi\n"[..]));
        let line = status_line(&s);
        assert!(
            line.starts_with("cidata: instance-id=bigv-vm1-op2 "),
            "{line}"
        );
        assert!(line.contains(" keys=3 "), "{line}");
        assert!(line.ends_with(&format!("firstboot={}", short_sha256(b"echo hi\n"))));
        let bare = parse(META, "#cloud-config\n{\"disable_root\": false}\n").unwrap();
        assert_eq!(
            (bare.keys, bare.password_hash, bare.firstboot),
            (0, None, None)
        );
        assert!(parse(META, "#!/bin/sh\n").is_err());
        assert!(parse("", "#cloud-config\n{}").is_err());
    }

    #[test]
    fn checks_passwords_against_sha512_crypt() {
        // glibc's test vector.
        let h = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        assert!(password_ok(h, "Hello world!"));
        assert!(!password_ok(h, "Hello world"));
        assert!(!password_ok("garbage", "Hello world!"));
    }

    #[test]
    fn markers_round_trip_and_blank_sectors_are_none() {
        assert_eq!(
            marked_instance(&marker("bigv-vm1-op2")).as_deref(),
            Some("bigv-vm1-op2")
        );
        assert_eq!(marked_instance(&[0u8; 512]), None);
        assert_eq!(marked_instance(b"DATA something\n"), None);
    }

    #[test]
    fn finds_the_label_of_fat_boot_sectors_only() {
        let mut img = std::io::Cursor::new(vec![0u8; 2 << 20]);
        fatfs::format_volume(
            &mut img,
            fatfs::FormatVolumeOptions::new()
                .bytes_per_sector(2048)
                .volume_label(*b"CIDATA     "),
        )
        .unwrap();
        assert_eq!(label(&img.get_ref()[..512]).as_deref(), Some(LABEL));
        assert_eq!(label(&[0u8; 512]), None);
        let mut mbr = [0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(label(&mbr), None);
    }
}
