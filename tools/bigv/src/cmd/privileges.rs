//! Privileges: `grant|revoke privilege LEVEL [on] OBJECT [to|from] USER`
//! and `show privileges` (bigv-api.md §7.2).

use serde_json::{Map, Value, json};

use super::Ctx;
use crate::cli::{PrivilegeArgs, ShowPrivilegesArgs};
use crate::error::{CliError, Exit, Result};
use crate::names::{account_name, seg};
use crate::output::{note, opt};
use crate::types::Privilege;

const LEVELS: &[&str] = &[
    "cluster_su",
    "cluster_admin",
    "account_admin",
    "group_admin",
    "vm_admin",
    "vm_console",
];

/// A level name, with the old client's aliases.
pub fn level(text: &str) -> Result<&'static str> {
    let t = text.trim().to_ascii_lowercase();
    let t = match t.as_str() {
        "server_admin" => "vm_admin",
        "server_console" | "console" => "vm_console",
        other => other,
    };
    LEVELS.iter().find(|l| **l == t).copied().ok_or_else(|| {
        CliError::usage(format!(
            "{text:?} is not a privilege level (one of {})",
            LEVELS.join(", ")
        ))
    })
}

/// What a grant or revoke says: the level, its object (none for cluster
/// levels) and the user.
#[derive(Debug, PartialEq, Eq)]
pub struct Sentence {
    pub level: &'static str,
    pub object: Option<String>,
    pub user: String,
}

/// `LEVEL [on] OBJECT [to|from] USER`, or `cluster_… [to|from] USER`.
pub fn parse_sentence(words: &[String]) -> Result<Sentence> {
    let usage = || {
        CliError::usage(
            "say it as LEVEL [on] OBJECT [to|from] USER, e.g. `vm_admin on web1.default.alice to bob`, \
             or `cluster_admin to carol`",
        )
    };
    let (first, rest) = words.split_first().ok_or_else(usage)?;
    let level = level(first)?;
    let mut rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    if rest.first() == Some(&"on") {
        rest.remove(0);
    }
    if rest.len() >= 2 && matches!(rest[rest.len() - 2], "to" | "from") {
        rest.remove(rest.len() - 2);
    }
    if level.starts_with("cluster_") {
        if rest.first().is_some_and(|w| *w == "to" || *w == "from") {
            rest.remove(0);
        }
        return match rest.as_slice() {
            [user] => Ok(Sentence {
                level,
                object: None,
                user: (*user).to_owned(),
            }),
            _ => Err(usage()),
        };
    }
    match rest.as_slice() {
        [object, user] => Ok(Sentence {
            level,
            object: Some((*object).to_owned()),
            user: (*user).to_owned(),
        }),
        _ => Err(usage()),
    }
}

/// The target fields of a grant, by name, with the account resolved.
fn target_fields(ctx: &Ctx, s: &Sentence) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    let Some(object) = &s.object else {
        return Ok(m);
    };
    if s.level.starts_with("vm_") {
        let r = ctx.resolve_vm(object)?;
        m.insert("virtual_machine_name".into(), json!(r.name));
        m.insert("group_name".into(), json!(r.group));
        m.insert("account_name".into(), json!(r.account));
    } else if s.level.starts_with("group_") {
        let g = ctx.resolve_group(Some(object))?;
        m.insert("group_name".into(), json!(g.name));
        m.insert("account_name".into(), json!(g.account));
    } else {
        m.insert("account_name".into(), json!(account_name(object)?));
    }
    Ok(m)
}

fn describe(s: &Sentence, fields: &Map<String, Value>) -> String {
    let f = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or("?");
    let on = if fields.contains_key("virtual_machine_name") {
        format!(
            "{}.{}.{}",
            f("virtual_machine_name"),
            f("group_name"),
            f("account_name")
        )
    } else if fields.contains_key("group_name") {
        format!("{}.{}", f("group_name"), f("account_name"))
    } else if fields.contains_key("account_name") {
        f("account_name").to_owned()
    } else {
        "the cluster".to_owned()
    };
    format!("{} on {on}", s.level)
}

pub fn grant(ctx: &Ctx, a: PrivilegeArgs) -> Result<()> {
    let s = parse_sentence(&a.words)?;
    let fields = target_fields(ctx, &s)?;
    let mut body = fields.clone();
    body.insert("level".into(), json!(s.level));
    body.insert("password_required".into(), json!(true));
    body.insert("yubikey_required".into(), json!(a.yubikey_required));
    if let Some(id) = a.api_key_id {
        body.insert("api_key_id".into(), json!(id));
    }
    let reply = ctx.client()?.post(
        &format!("/users/{}/privileges", seg(&s.user)),
        &Value::Object(body),
        &format!("user {} or the object", s.user),
    )?;
    note(format!("Granted {} to {}.", describe(&s, &fields), s.user));
    if !ctx.out.is_human() {
        let p: Privilege = serde_json::from_value(reply.clone()).unwrap_or_default();
        ctx.out
            .show(&reply, PRIVILEGE_HEADERS, || vec![row(&p)], String::new);
    }
    Ok(())
}

pub fn revoke(ctx: &Ctx, a: PrivilegeArgs) -> Result<()> {
    let s = parse_sentence(&a.words)?;
    let fields = target_fields(ctx, &s)?;
    let privileges: Vec<Privilege> = ctx.client()?.get(
        &format!("/users/{}/privileges", seg(&s.user)),
        &format!("user {}", s.user),
    )?;
    let f = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_owned);
    let matching: Vec<&Privilege> = privileges
        .iter()
        .filter(|p| {
            p.level == s.level
                && p.virtual_machine_name == f("virtual_machine_name")
                && (p.group_name == f("group_name")
                    || (fields.is_empty() && p.group_name.is_none()))
                && (p.account_name == f("account_name")
                    || (fields.is_empty() && p.account_name.is_none()))
                && a.api_key_id.is_none_or(|k| p.api_key_id == Some(k))
        })
        .collect();
    if matching.is_empty() {
        return Err(CliError::not_found(format!(
            "{} holds no {}",
            s.user,
            describe(&s, &fields)
        )));
    }
    for p in matching {
        ctx.client()?.delete(
            &format!("/privileges/{}", p.id),
            &format!("privilege {}", p.id),
        )?;
    }
    note(format!(
        "Revoked {} from {}.",
        describe(&s, &fields),
        s.user
    ));
    Ok(())
}

const PRIVILEGE_HEADERS: &[&str] = &[
    "ID",
    "Username",
    "Level",
    "APIKeyID",
    "PasswordRequired",
    "YubikeyRequired",
    "Target",
];

fn row(p: &Privilege) -> Vec<String> {
    vec![
        p.id.to_string(),
        opt(&p.username),
        p.level.clone(),
        opt(&p.api_key_id),
        p.password_required.to_string(),
        p.yubikey_required.to_string(),
        p.target(),
    ]
}

pub fn show(ctx: &Ctx, a: ShowPrivilegesArgs) -> Result<()> {
    let (path, what) = if let Some(u) = &a.for_user {
        (format!("/users/{}/privileges", seg(u)), format!("user {u}"))
    } else if let Some(s) = &a.server {
        let r = ctx.resolve_vm(s)?;
        (format!("{}/privileges", r.path()), format!("server {r}"))
    } else if let Some(g) = &a.group {
        let g = ctx.resolve_group(Some(g))?;
        (format!("{}/privileges", g.path()), format!("group {g}"))
    } else if let Some(acc) = &a.on_account {
        let acc = account_name(acc)?;
        (
            format!("/accounts/{}/privileges", seg(&acc)),
            format!("account {acc}"),
        )
    } else {
        ("/privileges".to_owned(), "your privileges".to_owned())
    };
    let value = ctx.client()?.get_value(&path, &what)?;
    let privileges: Vec<Privilege> = serde_json::from_value(value.clone()).map_err(|e| {
        CliError::new(
            Exit::ApiInternal,
            format!("the brain's list of privileges could not be read: {e}"),
        )
    })?;
    ctx.out.show(
        &value,
        PRIVILEGE_HEADERS,
        || privileges.iter().map(row).collect(),
        || {
            if privileges.is_empty() {
                return "No privileges.\n".into();
            }
            privileges
                .iter()
                .map(|p| {
                    let key = p
                        .api_key_id
                        .map(|k| format!(" (API key {k})"))
                        .unwrap_or_default();
                    let yubikey = if p.yubikey_required {
                        ", yubikey required"
                    } else {
                        ""
                    };
                    format!(
                        "• {}: {} on {}{key}{yubikey}\n",
                        opt(&p.username),
                        p.level,
                        p.target()
                    )
                })
                .collect()
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn sentences_with_and_without_the_little_words() {
        let s = parse_sentence(&words("vm_admin on web1 to bob")).unwrap();
        assert_eq!(
            s,
            Sentence {
                level: "vm_admin",
                object: Some("web1".into()),
                user: "bob".into()
            }
        );
        assert_eq!(
            parse_sentence(&words("server_console web1 bob"))
                .unwrap()
                .level,
            "vm_console"
        );
        let s = parse_sentence(&words("cluster_admin to carol")).unwrap();
        assert_eq!((s.object, s.user.as_str()), (None, "carol"));
        assert!(parse_sentence(&words("vm_admin web1")).is_err());
        assert!(
            parse_sentence(&words("king on web1 to bob"))
                .unwrap_err()
                .message
                .contains("not a privilege level")
        );
        assert!(parse_sentence(&words("account_admin on alice from bob")).is_ok());
    }
}
