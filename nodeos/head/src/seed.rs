//! The cloud-init NoCloud seed ("config drive") a VM gets when its
//! resource carries [`ImagerOptions`]: a small read-only FAT volume
//! labelled `CIDATA` holding `meta-data` and `user-data`, the way every
//! modern cloud image picks up its first-boot settings without a
//! network metadata service.
//!
//! - `meta-data`: `instance-id` (new at every imaging, so cloud-init runs
//!   its once-per-instance steps once per imaging) and `local-hostname`.
//! - `user-data`: `#cloud-config` written as JSON (JSON is YAML, and it
//!   needs no indentation or quoting rules of our own): root's password
//!   hash through `chpasswd` (both the `users` form of cloud-init ≥ 22.2
//!   and the older `list`), the `ssh_public_key` lines as
//!   `ssh_authorized_keys` with `disable_root: false` so they work for
//!   root, and the firstboot script as a `write_files` entry that
//!   `runcmd` runs once per instance.
//!
//! The image is a pure function of its inputs (fixed volume id, FAT's
//! fixed 1980 timestamps, sorted JSON keys): the destination of a live
//! migration builds the identical drive. Logical sectors are 2048 bytes
//! so the same image also works behind an IDE CD drive (compatibility
//! profile), whose blocks are 2048 bytes.

use std::io::{Cursor, Write};
use std::path::Path;

use base64ct::{Base64, Encoding};
use bigv_spine::resource::ImagerOptions;
use serde_json::{Value, json};

/// The volume label cloud-init's NoCloud looks for (it accepts
/// `cidata` and `CIDATA`; FAT labels are upper case).
pub const LABEL: &str = "CIDATA";
/// Fixed so the bytes depend on nothing but the inputs ("BIGV").
pub const VOLUME_ID: u32 = 0x4249_4756;
pub const SECTOR: u16 = 2048;
/// The whole image: far more than the brain lets the texts grow to
/// (64 KiB each), small enough to be nothing on a head.
pub const SIZE: u64 = 2 << 20;
/// Where the firstboot script lands in the guest.
pub const FIRSTBOOT_PATH: &str = "/var/lib/bigv/firstboot";

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("building the seed image: {0}")]
    Image(#[source] std::io::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Every file time: 1980-01-01 00:00, FAT's first day (fatfs without a
/// clock would write the invalid month 0).
#[derive(Debug)]
struct DosEpoch;
static DOS_EPOCH: DosEpoch = DosEpoch;

impl fatfs::TimeProvider for DosEpoch {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

/// `serde_json`'s output with every non-ASCII character of the BMP as
/// `\uXXXX`: cloud-init reads user-data with a YAML 1.1 parser (PyYAML)
/// that refuses some raw characters JSON allows (C1 controls, U+FEFF…),
/// never escapes.
fn yaml_safe_json(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).expect("a Value always serialises");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // Outside the BMP stays raw: PyYAML takes those characters but
        // reads a `\u` surrogate pair as two broken ones.
        if c.is_ascii() || c as u32 > 0xffff {
            out.push(c);
        } else {
            out.push_str(&format!("\\u{:04x}", c as u32));
        }
    }
    out
}

/// `meta-data`: a YAML mapping whose values are JSON strings.
pub fn meta_data(opts: &ImagerOptions, hostname: &str) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        yaml_safe_json(&json!(opts.instance_id)),
        yaml_safe_json(&json!(hostname)),
    )
}

/// `user-data`: `#cloud-config`, then the settings as JSON.
pub fn user_data(opts: &ImagerOptions) -> String {
    let mut cfg = serde_json::Map::new();
    cfg.insert("disable_root".into(), json!(false));
    if let Some(hash) = &opts.root_password_hash {
        cfg.insert(
            "chpasswd".into(),
            json!({
                "expire": false,
                "users": [{"name": "root", "password": hash, "type": "hash"}],
                "list": format!("root:{hash}"),
            }),
        );
        cfg.insert("ssh_pwauth".into(), json!(true));
    }
    let keys: Vec<&str> = opts.authorized_keys().collect();
    if !keys.is_empty() {
        cfg.insert("ssh_authorized_keys".into(), json!(keys));
    }
    if !opts.firstboot_script.is_empty() {
        cfg.insert(
            "write_files".into(),
            json!([{
                "path": FIRSTBOOT_PATH,
                "owner": "root:root",
                "permissions": "0700",
                "encoding": "b64",
                "content": Base64::encode_string(opts.firstboot_script.as_bytes()),
            }]),
        );
        // `sh -c PATH` runs a script without a `#!` line as shell too.
        cfg.insert("runcmd".into(), json!([["sh", "-c", FIRSTBOOT_PATH]]));
    }
    format!(
        "#cloud-config\n# Written by BigV from the last imaging's options.\n{}\n",
        yaml_safe_json(&Value::Object(cfg))
    )
}

/// The FAT image holding both files.
pub fn image(opts: &ImagerOptions, hostname: &str) -> Result<Vec<u8>, SeedError> {
    build(opts, hostname).map_err(SeedError::Image)
}

fn build(opts: &ImagerOptions, hostname: &str) -> std::io::Result<Vec<u8>> {
    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
    let mut disk = Cursor::new(vec![0u8; SIZE as usize]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .bytes_per_sector(SECTOR)
            .volume_id(VOLUME_ID)
            .volume_label(label),
    )?;
    {
        let options = fatfs::FsOptions::new().time_provider(&DOS_EPOCH);
        let fs = fatfs::FileSystem::new(&mut disk, options)?;
        for (name, text) in [
            ("meta-data", meta_data(opts, hostname)),
            ("user-data", user_data(opts)),
        ] {
            let mut f = fs.root_dir().create_file(name)?;
            f.write_all(text.as_bytes())?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// Writes the image to `path` (replacing any older one), readable only
/// by the head: it holds the root password's hash.
pub fn write(path: &Path, opts: &ImagerOptions, hostname: &str) -> Result<(), SeedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = image(opts, hostname)?;
    let tmp = path.with_extension("img.tmp");
    let err = |source| SeedError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn opts() -> ImagerOptions {
        ImagerOptions {
            instance_id: "bigv-vm7-op3".into(),
            root_password_hash: Some("$6$saltsalt$abc/def.ghi".into()),
            ssh_public_key: "ssh-ed25519 AAAA alice@laptop\n# old key\n\nssh-rsa BBBB bob@desk\n"
                .into(),
            firstboot_script: "#!/bin/sh\necho 'héllo' > /root/x\n".into(),
        }
    }

    /// The JSON after the `#cloud-config` line and the comment.
    fn cloud_config(text: &str) -> Value {
        let body = text.strip_prefix("#cloud-config\n").expect("the header");
        serde_json::from_str(&body[body.find('{').unwrap()..]).unwrap()
    }

    fn files(img: Vec<u8>) -> (String, Vec<(String, String)>) {
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
        let label = fs.volume_label();
        let mut out = vec![];
        for e in fs.root_dir().iter() {
            let e = e.unwrap();
            let mut text = String::new();
            e.to_file().read_to_string(&mut text).unwrap();
            out.push((e.file_name(), text));
        }
        (label, out)
    }

    #[test]
    fn the_image_parses_back_with_its_label_and_both_files() {
        let o = opts();
        let img = image(&o, "web1.default.alice.bigv.test").unwrap();
        assert_eq!(img.len() as u64, SIZE);
        let (label, files) = files(img);
        assert_eq!(label, "CIDATA");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["meta-data", "user-data"]);
        assert_eq!(files[0].1, meta_data(&o, "web1.default.alice.bigv.test"));
        assert_eq!(files[1].1, user_data(&o));
    }

    #[test]
    fn user_data_is_cloud_config_json_with_every_option() {
        let o = opts();
        let text = user_data(&o);
        assert!(text.is_ascii(), "non-ASCII escaped: {text}");
        let v = cloud_config(&text);
        assert_eq!(v["disable_root"], false);
        assert_eq!(
            v["chpasswd"]["users"][0],
            json!({"name": "root", "password": "$6$saltsalt$abc/def.ghi", "type": "hash"})
        );
        assert_eq!(v["chpasswd"]["list"], "root:$6$saltsalt$abc/def.ghi");
        assert_eq!(
            v["ssh_authorized_keys"],
            json!(["ssh-ed25519 AAAA alice@laptop", "ssh-rsa BBBB bob@desk"])
        );
        let wf = &v["write_files"][0];
        assert_eq!(wf["path"], FIRSTBOOT_PATH);
        assert_eq!(wf["encoding"], "b64");
        let script = Base64::decode_vec(wf["content"].as_str().unwrap()).unwrap();
        assert_eq!(script, o.firstboot_script.as_bytes());
        assert_eq!(v["runcmd"], json!([["sh", "-c", FIRSTBOOT_PATH]]));
        // The guest-side reader (the test guest) agrees on every field.
        let seed =
            bigv_test_guest::cidata::parse(&meta_data(&o, "web1.default.alice.bigv.test"), &text)
                .unwrap();
        assert_eq!(seed.instance_id, "bigv-vm7-op3");
        assert_eq!(seed.hostname, "web1.default.alice.bigv.test");
        assert_eq!(seed.keys, 2);
        assert_eq!(
            seed.firstboot.as_deref(),
            Some(o.firstboot_script.as_bytes())
        );
    }

    #[test]
    fn text_is_escaped_for_pyyaml() {
        let s = yaml_safe_json(&json!("a\u{85}\u{feff}é😀\n"));
        assert_eq!(s, "\"a\\u0085\\ufeff\\u00e9😀\\n\"");
        assert_eq!(
            serde_json::from_str::<String>(&s).unwrap(),
            "a\u{85}\u{feff}é😀\n"
        );
    }

    #[test]
    fn nothing_asked_means_nothing_set() {
        let o = ImagerOptions {
            instance_id: "i-1".into(),
            ..Default::default()
        };
        assert_eq!(cloud_config(&user_data(&o)), json!({"disable_root": false}));
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let a = image(&opts(), "h").unwrap();
        assert_eq!(a, image(&opts(), "h").unwrap());
        let mut other = opts();
        other.instance_id = "bigv-vm7-op4".into();
        assert_ne!(a, image(&other, "h").unwrap());
    }

    #[test]
    fn write_replaces_the_file_readable_by_the_head_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        std::fs::write(&path, b"old").unwrap();
        write(&path, &opts(), "h").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), image(&opts(), "h").unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
