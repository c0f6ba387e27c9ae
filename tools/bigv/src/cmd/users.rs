//! Logging in, users, SSH keys and API keys (bigv-api.md §2.2, §7.1, §7.3).

use serde_json::{Value, json};

use super::{Ctx, read_file};
use crate::cli::{
    AddApiKeyArgs, AddKeyArgs, DeleteApiKeyArgs, DeleteKeyArgs, LoginArgs, NewUserArgs,
    UpdateUserArgs,
};
use crate::client::{prompt_line, prompt_password};
use crate::config::set_current_profile;
use crate::error::{CliError, Exit, Result};
use crate::names::seg;
use crate::output::{interactive_output, note, opt};
use crate::types::{ApiKey, User};

pub fn login(ctx: &Ctx, a: LoginArgs) -> Result<()> {
    let client = ctx.client()?;
    let can_ask = interactive_output() || std::io::IsTerminal::is_terminal(&std::io::stdin());
    let user = match &ctx.config.user.value {
        Some(u) => u.clone(),
        None if can_ask => prompt_line("User: ")?,
        None => {
            return Err(CliError::credentials(
                "who are you? pass --user or set BIGV_USER",
            ));
        }
    };
    let password = match std::env::var("BIGV_PASS").ok().filter(|p| !p.is_empty()) {
        Some(p) => p,
        None if can_ask => prompt_password(&format!("Password for {user}: "))?,
        None => {
            return Err(CliError::credentials(format!(
                "no password for {user}: set BIGV_PASS, or run `bigv login` on a terminal"
            )));
        }
    };
    let token = client.create_session(&user, &password, ctx.config.validity)?;
    let profile = &ctx.config.profile;
    profile.set("token", &token)?;
    profile.set("user", &user)?;
    if let Some(e) = &ctx.overrides.endpoint {
        profile.set("endpoint", e)?;
    }
    if let Some(e) = &ctx.overrides.auth_endpoint {
        profile.set("auth-endpoint", e)?;
    }
    // How the endpoint was trusted, so the next command trusts it too.
    if let Some(pin) = &ctx.overrides.tls_fingerprint {
        profile.set("tls-fingerprint", pin.trim())?;
    }
    if let Some(ca) = &ctx.overrides.ca_cert {
        let ca =
            std::path::absolute(ca).map_err(|e| CliError::usage(format!("ca-cert {ca:?}: {e}")))?;
        profile.set("ca-cert", &ca.display().to_string())?;
    }
    if a.save_password {
        profile.set("password", &password)?;
    }
    if a.make_current {
        set_current_profile(&ctx.config.dir, &profile.name)?;
    }
    note(format!(
        "Logged in to {} as {user}; the session (valid for {} s) is kept in profile {}.",
        client.endpoint(),
        ctx.config.validity,
        profile.name
    ));
    Ok(())
}

pub fn logout(ctx: &Ctx) -> Result<()> {
    ctx.config.profile.unset("token")?;
    note(format!(
        "Forgot the session token of profile {}.",
        ctx.config.profile.name
    ));
    Ok(())
}

fn user_path(name: Option<&str>) -> String {
    // `/users/` is the caller.
    format!("/users/{}", name.map(seg).unwrap_or_default())
}

fn fetch_user(ctx: &Ctx, name: Option<&str>) -> Result<(Value, User)> {
    let what = name.map_or_else(|| "your user".to_owned(), |n| format!("user {n}"));
    let value = ctx.client()?.get_value(&user_path(name), &what)?;
    let user = serde_json::from_value(value.clone()).map_err(|e| {
        CliError::new(
            Exit::ApiInternal,
            format!("the brain's description of {what} could not be read: {e}"),
        )
    })?;
    Ok((value, user))
}

fn keys_of(user: &User) -> Vec<String> {
    user.authorized_keys
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// `ssh-ed25519 AAAAC3Nz…lJ7lJxXk comment`: a key short enough to read.
fn short_key(key: &str) -> String {
    key.split_whitespace()
        .map(|w| {
            let chars: Vec<char> = w.chars().collect();
            if chars.len() > 40 && w.starts_with("AAAA") {
                let head: String = chars[..8].iter().collect();
                let tail: String = chars[chars.len() - 8..].iter().collect();
                format!("{head}…{tail}")
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn show_user(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let (value, user) = fetch_user(ctx, name)?;
    let keys = keys_of(&user);
    ctx.out.show(
        &value,
        &["ID", "Username", "Email", "Keys"],
        || {
            vec![vec![
                user.id.to_string(),
                user.username.clone(),
                opt(&user.email),
                keys.len().to_string(),
            ]]
        },
        || {
            let mut s = format!("{} (user {})\n", user.username, user.id);
            if let Some(e) = &user.email {
                s.push_str(&format!("  email: {e}\n"));
            }
            if keys.is_empty() {
                s.push_str("  no SSH keys\n");
            } else {
                s.push_str("  SSH keys:\n");
                for k in &keys {
                    s.push_str(&format!("    • {}\n", short_key(k)));
                }
            }
            s
        },
    );
    Ok(())
}

pub fn show_keys(ctx: &Ctx, name: Option<&str>) -> Result<()> {
    let (_, user) = fetch_user(ctx, name)?;
    let keys = keys_of(&user);
    ctx.out.show(
        &json!(keys),
        &["Key"],
        || keys.iter().map(|k| vec![k.clone()]).collect(),
        || {
            if keys.is_empty() {
                format!("{} has no SSH keys.\n", user.username)
            } else {
                keys.iter().map(|k| format!("{k}\n")).collect()
            }
        },
    );
    Ok(())
}

fn looks_like_key(key: &str) -> bool {
    let words: Vec<&str> = key.split_whitespace().collect();
    words.windows(2).any(|w| {
        (w[0].starts_with("ssh-") || w[0].starts_with("ecdsa-") || w[0].starts_with("sk-"))
            && w[1].len() >= 16
    })
}

pub fn add_key(ctx: &Ctx, a: AddKeyArgs) -> Result<()> {
    let key = match &a.public_key_file {
        Some(f) => read_file(f, "the public key")?,
        None => a.key.join(" "),
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(CliError::usage(
            "give the key: `bigv add key ssh-ed25519 AAAA… me@laptop` or --public-key-file FILE",
        ));
    }
    if key.contains('\n') {
        return Err(CliError::usage("give one key at a time"));
    }
    if !looks_like_key(&key) && !ctx.force {
        return Err(CliError::usage(
            "that does not look like an SSH public key (\"<type> <base64> [comment]\"); did you give the private key?",
        ));
    }
    let (_, user) = fetch_user(ctx, a.for_user.as_deref())?;
    let mut keys = keys_of(&user);
    if keys.iter().any(|k| k == &key) {
        note(format!("{} already has that key.", user.username));
        return Ok(());
    }
    keys.push(key);
    ctx.client()?.put(
        &user_path(Some(&user.username)),
        &json!({"authorized_keys": keys.join("\n")}),
        &format!("user {}", user.username),
    )?;
    note(format!("Added the key to {}.", user.username));
    Ok(())
}

pub fn delete_key(ctx: &Ctx, a: DeleteKeyArgs) -> Result<()> {
    let wanted = a.key.join(" ").trim().to_owned();
    if wanted.is_empty() {
        return Err(CliError::usage(
            "say which key: the key, its comment, or part of it",
        ));
    }
    let (_, user) = fetch_user(ctx, a.for_user.as_deref())?;
    let keys = keys_of(&user);
    let exact: Vec<&String> = keys
        .iter()
        .filter(|k| *k == &wanted || k.split_whitespace().last() == Some(wanted.as_str()))
        .collect();
    let matches: Vec<&String> = if exact.is_empty() {
        keys.iter().filter(|k| k.contains(&wanted)).collect()
    } else {
        exact
    };
    let doomed = match matches.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(CliError::usage(format!(
                "{} has no key matching {wanted:?}",
                user.username
            )));
        }
        many => {
            return Err(CliError::usage(format!(
                "{} keys of {} match {wanted:?}; give more of the key",
                many.len(),
                user.username
            )));
        }
    };
    let rest: Vec<String> = keys.into_iter().filter(|k| *k != doomed).collect();
    ctx.client()?.put(
        &user_path(Some(&user.username)),
        &json!({"authorized_keys": rest.join("\n")}),
        &format!("user {}", user.username),
    )?;
    note(format!(
        "Removed {} from {}.",
        short_key(&doomed),
        user.username
    ));
    Ok(())
}

pub fn add_api_key(ctx: &Ctx, a: AddApiKeyArgs) -> Result<()> {
    let (_, user) = fetch_user(ctx, a.for_user.as_deref())?;
    let mut body = json!({"user_id": user.id.0, "label": a.label});
    if let Some(t) = &a.expires_at {
        body["expires_at"] = json!(t);
    }
    let reply = ctx.client()?.post(
        "/api_keys",
        &body,
        &format!("the API keys of {}", user.username),
    )?;
    let key: ApiKey = serde_json::from_value(reply.clone()).unwrap_or_default();
    let secret = key.api_key.clone().unwrap_or_default();
    match ctx.out.format {
        crate::output::Format::Human => {
            note(format!(
                "Created API key {} for {}; it is shown only this once:",
                key.id, user.username
            ));
            println!("apikey.{secret}");
        }
        _ => ctx.out.show(
            &reply,
            &["ID", "Label", "Token"],
            || {
                vec![vec![
                    key.id.to_string(),
                    key.label.clone(),
                    format!("apikey.{secret}"),
                ]]
            },
            String::new,
        ),
    }
    Ok(())
}

fn list_api_keys(ctx: &Ctx, user: Option<&str>) -> Result<(Value, Vec<ApiKey>)> {
    let path = match user {
        Some(u) => format!("/api_keys?view=overview&user_name={}", seg(u)),
        None => "/api_keys?view=overview".to_owned(),
    };
    let value = ctx.client()?.get_value(&path, "the API keys")?;
    let keys = serde_json::from_value(value.clone()).map_err(|e| {
        CliError::new(
            Exit::ApiInternal,
            format!("the brain's list of API keys could not be read: {e}"),
        )
    })?;
    Ok((value, keys))
}

pub fn show_api_keys(ctx: &Ctx, user: Option<&str>) -> Result<()> {
    let (value, keys) = list_api_keys(ctx, user)?;
    ctx.out.show(
        &value,
        &["ID", "Label", "User", "ExpiresAt", "Privileges"],
        || {
            keys.iter()
                .map(|k| {
                    vec![
                        k.id.to_string(),
                        k.label.clone(),
                        opt(&k.username),
                        opt(&k.expires_at),
                        k.privileges.len().to_string(),
                    ]
                })
                .collect()
        },
        || {
            if keys.is_empty() {
                return "No API keys.\n".into();
            }
            keys.iter()
                .map(|k| {
                    let label = if k.label.is_empty() {
                        "(no label)"
                    } else {
                        &k.label
                    };
                    let expiry = k
                        .expires_at
                        .as_deref()
                        .map(|e| format!(", expires {e}"))
                        .unwrap_or_default();
                    let privs = if k.privileges.is_empty() {
                        "acts with all its user's privileges".to_owned()
                    } else {
                        k.privileges
                            .iter()
                            .map(|p| format!("{} on {}", p.level, p.target()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    format!("• {} {label}{expiry}: {privs}\n", k.id)
                })
                .collect()
        },
    );
    Ok(())
}

pub fn delete_api_key(ctx: &Ctx, a: DeleteApiKeyArgs) -> Result<()> {
    let id = match a.key.parse::<u64>() {
        Ok(id) => id,
        Err(_) => {
            let (_, keys) = list_api_keys(ctx, a.for_user.as_deref())?;
            let found: Vec<&ApiKey> = keys.iter().filter(|k| k.label == a.key).collect();
            match found.as_slice() {
                [one] => one.id.0,
                [] => {
                    return Err(CliError::not_found(format!(
                        "no API key is labelled {:?}",
                        a.key
                    )));
                }
                _ => {
                    return Err(CliError::usage(format!(
                        "several API keys are labelled {:?}: give the id",
                        a.key
                    )));
                }
            }
        }
    };
    ctx.confirm(&format!(
        "This will delete API key {id}; scripts using it stop working."
    ))?;
    ctx.client()?
        .delete(&format!("/api_keys/{id}"), &format!("API key {id}"))?;
    note(format!("Deleted API key {id}."));
    Ok(())
}

/// A new password: the flag, `BIGV_NEW_PASS`, or asked twice on a terminal.
pub fn new_password(flag: Option<&str>, username: &str) -> Result<String> {
    if let Some(p) = flag.filter(|p| !p.is_empty()) {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var("BIGV_NEW_PASS")
        .ok()
        .filter(|p| !p.is_empty())
    {
        return Ok(p);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(CliError::usage(format!(
            "give {username} a password: --password, or BIGV_NEW_PASS"
        )));
    }
    let first = prompt_password(&format!("New password for {username}: "))?;
    let again = prompt_password("Again: ")?;
    if first != again {
        return Err(CliError::usage(
            "the two passwords differ; nothing was changed",
        ));
    }
    Ok(first)
}

pub fn add_user(ctx: &Ctx, a: NewUserArgs) -> Result<()> {
    let password = new_password(a.password.as_deref(), &a.username)?;
    let mut body = json!({"username": a.username, "password": password});
    if let Some(e) = &a.email {
        body["email"] = json!(e);
    }
    ctx.client()?.post("/users", &body, "the users")?;
    note(format!(
        "Created user {}; give them privileges with `bigv grant privilege`.",
        a.username
    ));
    Ok(())
}

pub fn update_user(ctx: &Ctx, a: UpdateUserArgs) -> Result<()> {
    let (_, user) = fetch_user(ctx, a.username.as_deref())?;
    let password = new_password(a.password.as_deref(), &user.username)?;
    ctx.client()?.put(
        &user_path(Some(&user.username)),
        &json!({"password": password}),
        &format!("user {}", user.username),
    )?;
    note(format!("Changed the password of {}.", user.username));
    Ok(())
}
