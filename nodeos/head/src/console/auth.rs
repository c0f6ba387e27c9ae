//! Who may use a VM's console, and the head's SSH host key.
//!
//! Users come from the VM resource: `console_users` names them and
//! `user_authentication` gives each an `authorized_keys` text and/or a
//! password hash. A user must be in both. Passwords are checked against
//! an argon2 PHC string (`$argon2id$…`, how the brain stores account
//! passwords) or a SHA-512/SHA-256 crypt string (`$6$…`/`$5$…`); any other
//! form matches nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bigv_spine::resource::{UserAuthentication, VmSpec};
use russh::keys::{PrivateKey, PublicKey};

/// The console users of one VM and their credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    users: BTreeMap<String, UserAuthentication>,
}

impl Access {
    /// The users named in `console_users` that have an entry in
    /// `user_authentication`.
    pub fn from_spec(spec: &VmSpec) -> Access {
        let users = spec
            .console_users
            .iter()
            .filter_map(|u| {
                spec.user_authentication
                    .get(u)
                    .map(|a| (u.clone(), a.clone()))
            })
            .collect();
        Access { users }
    }

    /// Whether `key` is one of `user`'s authorized keys.
    pub fn key_allowed(&self, user: &str, key: &PublicKey) -> bool {
        let Some(text) = self
            .users
            .get(user)
            .and_then(|a| a.authorized_keys.as_deref())
        else {
            return false;
        };
        authorized_keys(text).any(|k| k.key_data() == key.key_data())
    }

    /// Whether `user` has a password hash at all (no hashing needed to
    /// refuse everyone else).
    pub fn has_password(&self, user: &str) -> bool {
        self.password_hash(user).is_some()
    }

    pub fn password_hash(&self, user: &str) -> Option<&str> {
        self.users.get(user).and_then(|a| a.password.as_deref())
    }

    /// Whether `password` is `user`'s (slow on purpose: run it off the
    /// async workers).
    pub fn password_allowed(&self, user: &str, password: &str) -> bool {
        self.password_hash(user)
            .is_some_and(|h| password_matches(password, h))
    }
}

/// The keys in an `authorized_keys` text; lines with options before the
/// key type (`from="…" ssh-ed25519 AAAA…`) are read without their
/// options, which are not enforced. Unreadable lines are skipped.
pub fn authorized_keys(text: &str) -> impl Iterator<Item = PublicKey> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            PublicKey::from_openssh(line).ok().or_else(|| {
                // Skip an options field (which may hold quoted spaces).
                let mut quoted = false;
                let at = line.char_indices().find(|&(_, c)| {
                    if c == '"' {
                        quoted = !quoted;
                    }
                    c == ' ' && !quoted
                })?;
                PublicKey::from_openssh(line[at.0..].trim()).ok()
            })
        })
}

/// Checks `password` against an argon2 PHC string or a SHA crypt string.
pub fn password_matches(password: &str, hash: &str) -> bool {
    if hash.starts_with("$argon2") {
        use argon2::password_hash::PasswordVerifier;
        use argon2::password_hash::phc::PasswordHash;
        PasswordHash::new(hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    } else if hash.starts_with("$6$") || hash.starts_with("$5$") {
        use sha_crypt::PasswordVerifier;
        let alg = if hash.starts_with("$6$") {
            sha_crypt::ShaCrypt::SHA512
        } else {
            sha_crypt::ShaCrypt::SHA256
        };
        alg.verify_password(password.as_bytes(), hash).is_ok()
    } else {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("reading the SSH host key {0}")]
    Read(PathBuf, #[source] russh::keys::Error),
    #[error("writing the SSH host key {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("encoding a new SSH host key")]
    Encode(#[source] russh::keys::ssh_key::Error),
}

/// The head's SSH host key at `path`: read, or made (Ed25519) and written
/// (mode 0600) if there is none, so clients see the same key every time.
pub fn host_key(path: &Path) -> Result<PrivateKey, HostKeyError> {
    if path.exists() {
        return russh::keys::load_secret_key(path, None)
            .map_err(|e| HostKeyError::Read(path.to_owned(), e));
    }
    use rand::RngCore;
    use russh::keys::ssh_key::private::{Ed25519Keypair, PrivateKey as SshPrivateKey};
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key: SshPrivateKey = Ed25519Keypair::from_seed(&seed).into();
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(HostKeyError::Encode)?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| HostKeyError::Write(path.to_owned(), e))?;
    tracing::info!(path = %path.display(), fingerprint = %key.public_key().fingerprint(Default::default()), "made the console's SSH host key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDDEH3OThN31I83aynG8pEvmX0qEIkyTFRY87r4U2oZv alice@x";

    fn key_b() -> PublicKey {
        let dir = tempfile::tempdir().unwrap();
        host_key(&dir.path().join("k"))
            .unwrap()
            .public_key()
            .clone()
    }

    fn spec(users: &[(&str, Option<&str>, Option<&str>)], console: &[&str]) -> VmSpec {
        VmSpec {
            console_users: console.iter().map(|s| s.to_string()).collect(),
            user_authentication: users
                .iter()
                .map(|(u, k, p)| {
                    (
                        u.to_string(),
                        UserAuthentication {
                            authorized_keys: k.map(str::to_owned),
                            password: p.map(str::to_owned),
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn keys_are_checked_per_console_user() {
        let a = PublicKey::from_openssh(KEY_A).unwrap();
        let b = key_b();
        let keys = format!("# mine\n\n{KEY_A}\nnot a key\n");
        let access = Access::from_spec(&spec(
            &[("alice", Some(&keys), None), ("mallory", Some(KEY_A), None)],
            &["alice", "bob"],
        ));
        assert!(access.key_allowed("alice", &a));
        assert!(!access.key_allowed("alice", &b));
        // In user_authentication but not a console user; a console user
        // with no credentials.
        assert!(!access.key_allowed("mallory", &a));
        assert!(!access.key_allowed("bob", &a));
        assert!(!access.key_allowed("nobody", &a));
    }

    #[test]
    fn authorized_keys_lines_may_carry_options() {
        let text = format!("from=\"10.0.0.1, 10.0.0.2\",no-pty {KEY_A}\n");
        assert_eq!(authorized_keys(&text).count(), 1);
        assert_eq!(authorized_keys("garbage\n# ssh-ed25519\n").count(), 0);
    }

    #[test]
    fn passwords_verify_against_argon2_and_sha_crypt() {
        use argon2::password_hash::PasswordHasher;
        let argon = argon2::Argon2::default()
            .hash_password_with_salt(b"correct horse", b"0123456789abcdef")
            .unwrap()
            .to_string();
        assert!(password_matches("correct horse", &argon));
        assert!(!password_matches("correct horse ", &argon));
        // `openssl passwd -6 -salt saltsalt 'correct horse'` (and -5).
        let sha512 = "$6$saltsalt$hRM5XZ86KXEw9UOmjigeVqFgULtFB2sgpC9lXQDfMib3Zgw7mEiUvBJI2EplzfAqxL5Vvwp2scFtv/uamSo5z0";
        let sha256 = "$5$saltsalt$myjXcpMpE2Ofk7fj9hqyNYSn6lmWG4Mqnjx.KIRRr4/";
        assert!(password_matches("correct horse", sha256));
        assert!(!password_matches("correct horsf", sha256));
        assert!(password_matches("correct horse", sha512));
        assert!(!password_matches("wrong", sha512));
        assert!(!password_matches("correct horse", "correct horse"));
        assert!(!password_matches("", ""));
        assert!(!password_matches("x", "$argon2id$garbage"));

        let access = Access::from_spec(&spec(
            &[("alice", None, Some(sha512)), ("bob", Some(KEY_A), None)],
            &["alice", "bob"],
        ));
        assert!(access.password_allowed("alice", "correct horse"));
        assert!(!access.password_allowed("alice", "wrong"));
        assert!(!access.has_password("bob"));
        assert!(!access.password_allowed("bob", ""));
    }

    #[test]
    fn the_host_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/ssh_host_ed25519_key");
        let first = host_key(&path).unwrap();
        let again = host_key(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "junk").unwrap();
        assert!(matches!(host_key(&path), Err(HostKeyError::Read(..))));
    }
}
