//! Configuration: profiles in a config directory, environment variables
//! and flags (docs/cli.md "Configuration").
//!
//! ```text
//! $BIGV_CONFIG_DIR                 default: $XDG_CONFIG_HOME/bigv, else ~/.config/bigv
//!   current-profile                the profile used when none is named (else "default")
//!   profiles/<name>/<variable>     one file per variable; the file holds the value
//! ```
//!
//! Variables: `endpoint`, `auth-endpoint`, `tls-fingerprint`, `ca-cert`,
//! `user`, `account`, `group`, `session-validity`, and the secrets `token` and `password` (written
//! with mode 0600; `password` only by `bigv login --save-password`).
//! Precedence: flag, then environment (`BIGV_*`), then the profile's
//! file, then the built-in default.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{CliError, Result};

pub const DEFAULT_ENDPOINT: &str = "http://localhost:8080";
pub const DEFAULT_PROFILE: &str = "default";
pub const DEFAULT_GROUP: &str = "default";
pub const DEFAULT_VALIDITY: u64 = 1800;

/// The variables a profile holds, and whether each is a secret.
pub const VARIABLES: &[(&str, bool)] = &[
    ("endpoint", false),
    ("auth-endpoint", false),
    ("tls-fingerprint", false),
    ("ca-cert", false),
    ("user", false),
    ("account", false),
    ("group", false),
    ("session-validity", false),
    ("token", true),
    ("password", true),
];

/// Where a value came from, for `show config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "environment",
            Source::File => "profile",
            Source::Default => "default",
        }
    }
}

/// One profile directory.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub dir: PathBuf,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The config directory: `--config-dir`, `$BIGV_CONFIG_DIR`,
/// `$XDG_CONFIG_HOME/bigv`, `~/.config/bigv`.
pub fn config_dir(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir.to_owned());
    }
    if let Some(dir) = std::env::var_os("BIGV_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(xdg).join("bigv"));
    }
    home()
        .map(|h| h.join(".config").join("bigv"))
        .ok_or_else(|| {
            CliError::config_read(
                "cannot find a config directory: set BIGV_CONFIG_DIR or HOME, or pass --config-dir",
            )
        })
}

fn profile_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn read_trimmed(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let value = text.trim().to_owned();
            Ok((!value.is_empty()).then_some(value))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::config_read(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

impl Profile {
    /// The profile named by `--profile`/`$BIGV_PROFILE`, else the one in
    /// `current-profile`, else `default`.
    pub fn select(dir: &Path, name: Option<&str>) -> Result<Profile> {
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => n.to_owned(),
            None => read_trimmed(&dir.join("current-profile"))?
                .unwrap_or_else(|| DEFAULT_PROFILE.to_owned()),
        };
        if !profile_name_ok(&name) {
            return Err(CliError::usage(format!(
                "{name:?} is not a profile name: use letters, digits, - and _"
            )));
        }
        Ok(Profile {
            dir: dir.join("profiles").join(&name),
            name,
        })
    }

    pub fn get(&self, variable: &str) -> Result<Option<String>> {
        read_trimmed(&self.dir.join(variable))
    }

    /// Writes a variable; secrets are created with mode 0600.
    pub fn set(&self, variable: &str, value: &str) -> Result<()> {
        let secret = VARIABLES
            .iter()
            .any(|(name, secret)| *name == variable && *secret);
        let fail = |e: std::io::Error, path: &Path| {
            CliError::config_write(format!("cannot write {}: {e}", path.display()))
        };
        fs::create_dir_all(&self.dir).map_err(|e| fail(e, &self.dir))?;
        let path = self.dir.join(variable);
        let tmp = self.dir.join(format!(".{variable}.new"));
        let mode = if secret { 0o600 } else { 0o644 };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| fail(e, &tmp))?;
        // An existing file keeps its old mode through `open`: set it.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| writeln!(file, "{value}"))
            .and_then(|()| file.sync_all())
            .map_err(|e| fail(e, &tmp))?;
        fs::rename(&tmp, &path).map_err(|e| fail(e, &path))
    }

    pub fn unset(&self, variable: &str) -> Result<()> {
        let path = self.dir.join(variable);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CliError::config_write(format!(
                "cannot remove {}: {e}",
                path.display()
            ))),
        }
    }
}

/// Makes `name` the profile used when none is named.
pub fn set_current_profile(dir: &Path, name: &str) -> Result<()> {
    if !profile_name_ok(name) {
        return Err(CliError::usage(format!(
            "{name:?} is not a profile name: use letters, digits, - and _"
        )));
    }
    fs::create_dir_all(dir)
        .and_then(|()| fs::write(dir.join("current-profile"), format!("{name}\n")))
        .map_err(|e| CliError::config_write(format!("cannot write {}: {e}", dir.display())))
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub struct Setting {
    pub value: Option<String>,
    pub source: Source,
}

impl Setting {
    /// Flag, then environment variable, then profile file.
    pub fn resolve(
        flag: Option<&str>,
        env: &str,
        profile: &Profile,
        variable: &str,
    ) -> Result<Setting> {
        if let Some(v) = flag.filter(|v| !v.is_empty()) {
            return Ok(Setting {
                value: Some(v.to_owned()),
                source: Source::Flag,
            });
        }
        if let Some(v) = std::env::var(env).ok().filter(|v| !v.is_empty()) {
            return Ok(Setting {
                value: Some(v),
                source: Source::Env,
            });
        }
        Ok(match profile.get(variable)? {
            Some(v) => Setting {
                value: Some(v),
                source: Source::File,
            },
            None => Setting {
                value: None,
                source: Source::Default,
            },
        })
    }

    pub fn or_default(mut self, default: &str) -> Setting {
        if self.value.is_none() {
            self.value = Some(default.to_owned());
            self.source = Source::Default;
        }
        self
    }
}

/// Everything the commands need to know about where and who.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub profile: Profile,
    pub endpoint: Setting,
    pub auth_endpoint: Setting,
    /// Pin for an https endpoint's self-signed certificate.
    pub tls_fingerprint: Setting,
    /// A PEM file of CAs an https endpoint's certificate must chain to.
    pub ca_cert: Setting,
    pub user: Setting,
    pub account: Setting,
    pub group: Setting,
    pub token: Setting,
    pub password: Setting,
    pub validity: u64,
}

/// The flags that override the config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_dir: Option<PathBuf>,
    pub profile: Option<String>,
    pub endpoint: Option<String>,
    pub auth_endpoint: Option<String>,
    pub tls_fingerprint: Option<String>,
    pub ca_cert: Option<String>,
    pub user: Option<String>,
    pub account: Option<String>,
    pub token: Option<String>,
}

impl Config {
    pub fn load(o: &Overrides) -> Result<Config> {
        let dir = config_dir(o.config_dir.as_deref())?;
        let profile_flag = o
            .profile
            .clone()
            .or_else(|| std::env::var("BIGV_PROFILE").ok());
        let profile = Profile::select(&dir, profile_flag.as_deref())?;
        let endpoint =
            Setting::resolve(o.endpoint.as_deref(), "BIGV_ENDPOINT", &profile, "endpoint")?
                .or_default(DEFAULT_ENDPOINT);
        let mut auth_endpoint = Setting::resolve(
            o.auth_endpoint.as_deref(),
            "BIGV_AUTH_ENDPOINT",
            &profile,
            "auth-endpoint",
        )?;
        if auth_endpoint.value.is_none() {
            // Our brain serves /session itself.
            auth_endpoint = Setting {
                value: endpoint.value.clone(),
                source: Source::Default,
            };
        }
        let validity =
            match Setting::resolve(None, "BIGV_SESSION_VALIDITY", &profile, "session-validity")?
                .value
            {
                Some(v) => v.parse().map_err(|_| {
                    CliError::usage(format!(
                        "session-validity {v:?} is not a whole number of seconds"
                    ))
                })?,
                None => DEFAULT_VALIDITY,
            };
        Ok(Config {
            endpoint,
            auth_endpoint,
            tls_fingerprint: Setting::resolve(
                o.tls_fingerprint.as_deref(),
                "BIGV_TLS_FINGERPRINT",
                &profile,
                "tls-fingerprint",
            )?,
            ca_cert: Setting::resolve(o.ca_cert.as_deref(), "BIGV_CA_CERT", &profile, "ca-cert")?,
            user: Setting::resolve(o.user.as_deref(), "BIGV_USER", &profile, "user")?,
            account: Setting::resolve(o.account.as_deref(), "BIGV_ACCOUNT", &profile, "account")?,
            group: Setting::resolve(None, "BIGV_GROUP", &profile, "group")?
                .or_default(DEFAULT_GROUP),
            token: Setting::resolve(o.token.as_deref(), "BIGV_TOKEN", &profile, "token")?,
            password: Setting::resolve(None, "BIGV_PASS", &profile, "password")?,
            validity,
            dir,
            profile,
        })
    }

    pub fn endpoint(&self) -> &str {
        self.endpoint.value.as_deref().unwrap_or(DEFAULT_ENDPOINT)
    }

    pub fn auth_endpoint(&self) -> &str {
        self.auth_endpoint
            .value
            .as_deref()
            .unwrap_or_else(|| self.endpoint())
    }

    pub fn group(&self) -> &str {
        self.group.value.as_deref().unwrap_or(DEFAULT_GROUP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_keep_one_file_per_variable_and_secrets_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::select(dir.path(), None).unwrap();
        assert_eq!(p.name, "default");
        p.set("endpoint", "http://brain:8080").unwrap();
        p.set("token", "secret").unwrap();
        assert_eq!(
            p.get("endpoint").unwrap().as_deref(),
            Some("http://brain:8080")
        );
        let mode = fs::metadata(p.dir.join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        p.unset("token").unwrap();
        assert_eq!(p.get("token").unwrap(), None);
        set_current_profile(dir.path(), "work").unwrap();
        assert_eq!(Profile::select(dir.path(), None).unwrap().name, "work");
        assert_eq!(
            Profile::select(dir.path(), Some("home")).unwrap().name,
            "home"
        );
        assert!(Profile::select(dir.path(), Some("../x")).is_err());
    }
}
