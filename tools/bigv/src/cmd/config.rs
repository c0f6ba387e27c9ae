//! `show config` and `update config`: the profile's files (config.rs).

use serde_json::{Map, Value, json};

use super::Ctx;
use crate::cli::UpdateConfigArgs;
use crate::config::{Setting, VARIABLES, set_current_profile};
use crate::error::{CliError, Result};
use crate::names::{GroupName, account_name};
use crate::output::note;
use crate::tls::Trust;

/// A secret as shown: enough to recognise it, not to use it.
fn masked(variable: &str, value: &str) -> String {
    match variable {
        "password" => "(set)".into(),
        "token" => {
            let start: String = value.chars().take(10).collect();
            format!("{start}…")
        }
        _ => value.to_owned(),
    }
}

pub fn show(ctx: &Ctx) -> Result<()> {
    let c = &ctx.config;
    let validity = Setting {
        value: Some(c.validity.to_string()),
        source: crate::config::Source::Default,
    };
    let rows: Vec<(&str, &Setting)> = vec![
        ("endpoint", &c.endpoint),
        ("auth-endpoint", &c.auth_endpoint),
        ("tls-fingerprint", &c.tls_fingerprint),
        ("ca-cert", &c.ca_cert),
        ("user", &c.user),
        ("account", &c.account),
        ("group", &c.group),
        ("token", &c.token),
        ("password", &c.password),
        ("session-validity", &validity),
    ];
    let mut json = Map::new();
    json.insert("config_dir".into(), json!(c.dir));
    json.insert("profile".into(), json!(c.profile.name));
    for (name, s) in &rows {
        if let Some(v) = &s.value {
            json.insert(
                (*name).to_owned(),
                json!({"value": masked(name, v), "source": s.source.describe()}),
            );
        }
    }
    ctx.out.show(
        &Value::Object(json),
        &["Variable", "Value", "Source"],
        || {
            rows.iter()
                .filter_map(|(n, s)| {
                    Some(vec![
                        (*n).to_owned(),
                        masked(n, s.value.as_deref()?),
                        s.source.describe().to_owned(),
                    ])
                })
                .collect()
        },
        || {
            let mut s = format!(
                "Profile {} in {}\n",
                c.profile.name,
                c.profile.dir.display()
            );
            for (name, setting) in &rows {
                match &setting.value {
                    Some(v) => s.push_str(&format!(
                        "  {name:16} {}  ({})\n",
                        masked(name, v),
                        setting.source.describe()
                    )),
                    None => s.push_str(&format!("  {name:16} -\n")),
                }
            }
            s
        },
    );
    Ok(())
}

pub fn update(ctx: &Ctx, a: UpdateConfigArgs) -> Result<()> {
    let o = &ctx.overrides;
    let mut sets: Vec<(&str, String)> = vec![];
    if let Some(v) = &o.endpoint {
        sets.push(("endpoint", v.clone()));
    }
    if let Some(v) = &o.auth_endpoint {
        sets.push(("auth-endpoint", v.clone()));
    }
    if let Some(v) = &o.tls_fingerprint {
        Trust::from_settings(Some(v), None)?;
        sets.push(("tls-fingerprint", v.trim().to_owned()));
    }
    if let Some(v) = &o.ca_cert {
        // Absolute, so the profile works from any directory.
        let path =
            std::path::absolute(v).map_err(|e| CliError::usage(format!("ca-cert {v:?}: {e}")))?;
        sets.push(("ca-cert", path.display().to_string()));
    }
    if let Some(v) = &o.user {
        sets.push(("user", v.clone()));
    }
    if let Some(v) = &o.account {
        sets.push(("account", account_name(v)?));
    }
    if let Some(v) = &o.token {
        sets.push(("token", v.clone()));
    }
    if let Some(v) = &a.group {
        sets.push(("group", GroupName::parse(v)?.name));
    }
    if let Some(v) = a.session_validity {
        if !(60..=3600).contains(&v) {
            return Err(CliError::usage(
                "--session-validity must be between 60 and 3600 seconds",
            ));
        }
        sets.push(("session-validity", v.to_string()));
    }
    for u in &a.unset {
        if !VARIABLES.iter().any(|(name, _)| name == u) {
            let names: Vec<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
            return Err(CliError::usage(format!(
                "{u:?} is not a config variable (one of {})",
                names.join(", ")
            )));
        }
    }
    if sets.is_empty() && a.unset.is_empty() && !a.make_current {
        return Err(CliError::usage(
            "nothing to change: e.g. `bigv update config --endpoint http://brain:8080 --user alice`, \
             --group G, --session-validity S, --unset VARIABLE or --make-current",
        ));
    }
    let profile = &ctx.config.profile;
    for (name, value) in &sets {
        profile.set(name, value)?;
        note(format!(
            "Set {name} to {} in profile {}.",
            masked(name, value),
            profile.name
        ));
    }
    for u in &a.unset {
        profile.unset(u)?;
        note(format!("Unset {u} in profile {}.", profile.name));
    }
    if a.make_current {
        set_current_profile(&ctx.config.dir, &profile.name)?;
        note(format!("Profile {} is now the current one.", profile.name));
    }
    Ok(())
}
