//! Password hashing (argon2id, PHC strings; SHA-512 crypt for guests) and
//! fresh secrets.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rand::RngCore;

/// Hashes a password with a fresh salt.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let hashed: PasswordHash = Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("argon2 with default parameters and a 16-byte salt cannot fail");
    hashed.to_string()
}

/// Whether `password` matches a stored PHC hash; a corrupt hash matches
/// nothing.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A guest's root password as SHA-512 crypt (`$6$salt$hash`, 5000
/// rounds): the form `/etc/shadow`, cloud-init's `chpasswd` and every
/// Linux image understand. Only this hash is stored and sent to heads.
pub fn crypt_sha512(password: &str) -> String {
    use sha_crypt::PasswordHasher as _;
    // 12 bytes encode to crypt(3)'s longest salt, 16 characters.
    let mut salt = [0u8; 12];
    rand::rng().fill_bytes(&mut salt);
    sha_crypt::ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), &salt)
        .expect("SHA-512 crypt with a 12-byte salt cannot fail")
        .to_string()
}

/// A random token: 32 bytes, hex (for sessions and API keys).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let h = hash("correct horse");
        assert!(verify("correct horse", &h));
        assert!(!verify("correct horse ", &h));
        assert!(!verify("anything", "not-a-phc-string"));
        assert_ne!(hash("same"), hash("same"), "salts must differ");
        assert_ne!(new_secret(), new_secret());
    }

    #[test]
    fn guest_passwords_are_sha512_crypt_with_fresh_salts() {
        use sha_crypt::PasswordVerifier as _;
        let h = crypt_sha512("hunter2");
        assert!(h.starts_with("$6$"), "{h}");
        assert!(!h.contains("hunter2"));
        let c = sha_crypt::ShaCrypt::SHA512;
        assert!(c.verify_password(b"hunter2", h.as_str()).is_ok());
        assert!(c.verify_password(b"hunter3", h.as_str()).is_err());
        assert_ne!(crypt_sha512("same"), crypt_sha512("same"));
        // glibc's own test vector: the algorithm is the one guests use.
        let known = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        assert!(c.verify_password(b"Hello world!", known).is_ok());
    }
}
