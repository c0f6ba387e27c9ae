//! Privileges (bigv-api.md §7.2): a level for a user on the cluster, an
//! account, a group or a VM, optionally bound to one of the user's API keys.
//!
//! Rules ([G] where the spec is silent):
//! - **Grant, change, revoke**: only someone holding a level strictly above
//!   the privilege's level on its target (or anything containing it); a
//!   `cluster_su` may do anything. A target the caller cannot see is 404,
//!   one it sees but lacks the level for is 403.
//! - Anyone may give up (revoke) a privilege of their own. The last
//!   `cluster_su` privilege can never be revoked: that would lock every
//!   operator out of the cluster.
//! - **Who sees a privilege**: its holder, any `cluster_admin`, and anyone
//!   holding at least its level on its target (peers and those above).
//! - A grant names its user by id or username whether or not the granter
//!   can see that user: granting is how an account admin brings a colleague
//!   in. The target is checked first, so a caller who may grant nothing
//!   learns nothing about which users exist.
//! - After a grant only `yubikey_required`, `yubikey_otp_max_age` and
//!   `ip_restrictions` change; a PUT repeating the other fields unchanged
//!   is fine. A duplicate grant is refused (400 on `level`).
//! - `password_required` defaults to true and is stored and shown; the
//!   brain never lets anyone in without a password, API key or session.
//! - `ip_restrictions` is read as a list of addresses/CIDRs or one string of
//!   them separated by commas or spaces, stored as CIDRs and shown as a
//!   list (or null).
//! - JSON carries exactly one of `account_id`/`group_id`/
//!   `virtual_machine_id` (the Go client matches privileges by comparing
//!   all three), plus the names of the target and what contains it.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::AppState;
use super::access::Caller;
use super::error::ApiError;
use super::fields::{Fields, truthy};
use super::lookup;
use super::users;
use crate::model::{AccountId, ApiKeyId, GroupId, Level, Model, Privilege, PrivilegeId, Target};

/// What the spec says a Yubikey OTP is good for when none is set.
const DEFAULT_OTP_MAX_AGE: u64 = 900;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/privileges", get(list_own))
        .route("/privileges/{id}", get(show).put(update).delete(revoke))
        .route("/users/{user}/privileges", get(list_for_user).post(grant))
        .route("/accounts/{acc}/privileges", get(list_on_account))
        .route(
            "/accounts/{acc}/groups/{grp}/privileges",
            get(list_on_group),
        )
        .route(
            "/accounts/{acc}/groups/{grp}/virtual_machines/{vm}/privileges",
            get(list_on_vm),
        )
}

/// Query pairs; a malformed query string reads as empty (unknown
/// parameters are ignored anyway).
pub fn query_pairs(raw: Option<String>) -> Vec<(String, String)> {
    raw.and_then(|q| serde_urlencoded::from_str(&q).ok())
        .unwrap_or_default()
}

fn query_value<'q>(pairs: &'q [(String, String)], names: &[&str]) -> Option<&'q str> {
    pairs
        .iter()
        .find(|(k, _)| names.contains(&k.as_str()))
        .map(|(_, v)| v.as_str())
}

/// A privilege as the API shows it.
pub fn privilege_json(model: &Model, p: &Privilege) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(p.id));
    o.insert(
        "username".into(),
        json!(model.user(p.user_id).map(|u| u.username.as_str())),
    );
    o.insert("level".into(), json!(p.level.as_str()));
    let account_name = |id| model.account(id).map(|a| a.name.clone());
    match p.target {
        Target::Cluster => {}
        Target::Account(a) => {
            o.insert("account_id".into(), json!(a));
            o.insert("account_name".into(), json!(account_name(a)));
        }
        Target::Group(g) => {
            let group = model.group(g);
            o.insert("group_id".into(), json!(g));
            o.insert("group_name".into(), json!(group.map(|g| &g.name)));
            o.insert(
                "account_name".into(),
                json!(group.and_then(|g| account_name(g.account_id))),
            );
        }
        Target::Vm(v) => {
            let vm = model.vm(v);
            let group = vm.and_then(|v| model.group(v.group_id));
            o.insert("virtual_machine_id".into(), json!(v));
            o.insert("virtual_machine_name".into(), json!(vm.map(|v| &v.name)));
            o.insert("group_name".into(), json!(group.map(|g| &g.name)));
            o.insert(
                "account_name".into(),
                json!(group.and_then(|g| account_name(g.account_id))),
            );
        }
    }
    o.insert("api_key_id".into(), json!(p.api_key_id));
    o.insert("password_required".into(), json!(p.password_required));
    o.insert("yubikey_required".into(), json!(p.yubikey_required));
    o.insert(
        "yubikey_otp_max_age".into(),
        json!(p.yubikey_otp_max_age.unwrap_or(DEFAULT_OTP_MAX_AGE)),
    );
    o.insert("ip_restrictions".into(), json!(p.ip_restrictions));
    o.insert("creating_username".into(), json!(p.creating_username));
    Value::Object(o)
}

fn is_su(model: &Model, caller: &Caller) -> bool {
    caller.level_on(model, Target::Cluster) == Some(Level::ClusterSu)
}

/// Whether the caller may see privilege `p`.
pub fn visible(model: &Model, caller: &Caller, p: &Privilege) -> bool {
    p.user_id == caller.user_id
        || caller.is_cluster_admin(model)
        || caller.level_on(model, p.target) >= Some(p.level)
}

/// `Ok` if the caller may grant, change or revoke `level` on `target`.
pub fn may_grant(
    model: &Model,
    caller: &Caller,
    target: Target,
    level: Level,
) -> Result<(), ApiError> {
    if is_su(model, caller) {
        return Ok(());
    }
    match caller.level_on(model, target) {
        Some(held) if held > level => Ok(()),
        _ if caller.can_see(model, target) => Err(ApiError::Forbidden),
        _ => Err(ApiError::NotFound),
    }
}

fn list_json(model: &Model, caller: &Caller, keep: impl Fn(&Privilege) -> bool) -> Response {
    let out: Vec<Value> = model
        .privileges
        .values()
        .filter(|p| keep(p) && visible(model, caller, p))
        .map(|p| privilege_json(model, p))
        .collect();
    Json(out).into_response()
}

/// `GET /privileges`: the caller's own, or (with `user_id`/`user_name`)
/// those of a user the caller can see.
async fn list_own(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw);
    let model = state.db.read();
    let user_id = match query_value(&pairs, &["user_id", "user_name", "username"]) {
        Some(seg) => users::lookup(&model, &caller, seg)?.id,
        None => caller.user_id,
    };
    Ok(list_json(&model, &caller, |p| p.user_id == user_id))
}

async fn list_for_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(seg): Path<String>,
) -> Result<Response, ApiError> {
    let model = state.db.read();
    let user_id = users::lookup(&model, &caller, &seg)?.id;
    Ok(list_json(&model, &caller, |p| p.user_id == user_id))
}

async fn list_on_account(
    State(state): State<AppState>,
    caller: Caller,
    Path(acc): Path<String>,
) -> Result<Response, ApiError> {
    let model = state.db.read();
    let target = Target::Account(lookup::account(&model, &caller, &acc)?.id);
    Ok(list_json(&model, &caller, |p| p.target == target))
}

async fn list_on_group(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let model = state.db.read();
    let account = lookup::account(&model, &caller, &acc)?;
    let target = Target::Group(lookup::group(&model, &caller, account, &grp)?.id);
    Ok(list_json(&model, &caller, |p| p.target == target))
}

async fn list_on_vm(
    State(state): State<AppState>,
    caller: Caller,
    Path((acc, grp, vm)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(raw);
    let include_deleted = query_value(&pairs, &["include_deleted"])
        .and_then(truthy)
        .unwrap_or(false);
    let model = state.db.read();
    let account = lookup::account(&model, &caller, &acc)?;
    let group = lookup::group(&model, &caller, account, &grp)?;
    let target = Target::Vm(lookup::vm(&model, &caller, group, &vm, include_deleted)?.id);
    Ok(list_json(&model, &caller, |p| p.target == target))
}

fn find_privilege<'m>(
    model: &'m Model,
    caller: &Caller,
    seg: &str,
) -> Result<&'m Privilege, ApiError> {
    seg.parse::<u64>()
        .ok()
        .and_then(|id| model.privileges.get(&id))
        .filter(|p| visible(model, caller, p))
        .ok_or(ApiError::NotFound)
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(seg): Path<String>,
) -> Result<Response, ApiError> {
    let model = state.db.read();
    let p = find_privilege(&model, &caller, &seg)?;
    Ok(Json(privilege_json(&model, p)).into_response())
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// `ip_restrictions`: `None` when absent, `Some(None)` to clear.
fn read_ip_restrictions(f: &mut Fields) -> Option<Option<Vec<String>>> {
    let raw = f.raw("ip_restrictions")?.clone();
    let items: Vec<String> = match raw {
        Value::Null => return Some(None),
        Value::String(s) => s
            .split([',', ' ', '\n', '\t'])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Value::Array(items) => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(|s| s.trim().to_owned()))
                .collect();
            match strings {
                Some(s) => s,
                None => {
                    f.error(
                        "ip_restrictions",
                        "must be a list of addresses or CIDR ranges",
                    );
                    return None;
                }
            }
        }
        _ => {
            f.error(
                "ip_restrictions",
                "must be a list of addresses or CIDR ranges",
            );
            return None;
        }
    };
    let mut cidrs = vec![];
    for item in items {
        let parsed = item.parse::<ipnet::IpNet>().ok().or_else(|| {
            item.parse::<std::net::IpAddr>()
                .ok()
                .map(ipnet::IpNet::from)
        });
        match parsed {
            Some(net) => cidrs.push(net.trunc().to_string()),
            None => f.error(
                "ip_restrictions",
                format!("\"{item}\" is not an IP address or CIDR range (like 192.0.2.0/24)"),
            ),
        }
    }
    Some((!cidrs.is_empty()).then_some(cidrs))
}

fn read_otp_max_age(f: &mut Fields) -> Option<u64> {
    f.u64_in("yubikey_otp_max_age", 1, 86_400)
}

/// The id in `{prefix}_id`, or the record named by `{prefix}_name`.
enum Named {
    Id(u64),
    Name(String),
}

fn named(f: &mut Fields, prefix: &str) -> Option<Named> {
    if let Some(id) = f.u64(&format!("{prefix}_id")) {
        return Some(Named::Id(id));
    }
    f.string(&format!("{prefix}_name"))
        .filter(|n| !n.is_empty())
        .map(Named::Name)
}

/// The account a grant names; `Ok(None)` when the fields were bad (the
/// error is recorded in `f`), 404 when there is no such account.
fn grant_account(
    model: &Model,
    f: &mut Fields,
    a: Option<Named>,
) -> Result<Option<AccountId>, ApiError> {
    let found = match a {
        Some(Named::Id(id)) => model.accounts.get(&id),
        Some(Named::Name(n)) => model.account_named(&n),
        None => {
            f.error(
                "account_id",
                "can't be blank: give account_id or account_name",
            );
            return Ok(None);
        }
    };
    found.map(|a| Some(a.id)).ok_or(ApiError::NotFound)
}

/// The group a grant names (by id, or by name within the named account).
fn grant_group(
    model: &Model,
    f: &mut Fields,
    g: Option<Named>,
    a: Option<Named>,
) -> Result<Option<GroupId>, ApiError> {
    let found = match g {
        Some(Named::Id(id)) => model.groups.get(&id),
        Some(Named::Name(n)) => {
            if a.is_none() {
                f.error(
                    "group_name",
                    "needs account_id or account_name to say which account",
                );
                return Ok(None);
            }
            let Some(account) = grant_account(model, f, a)? else {
                return Ok(None);
            };
            model.group_named(account, &n)
        }
        None => {
            f.error(
                "group_id",
                "can't be blank: give group_id, or group_name with the account",
            );
            return Ok(None);
        }
    };
    found.map(|g| Some(g.id)).ok_or(ApiError::NotFound)
}

/// Resolves the target a grant names, checking its kind fits the level.
/// `Ok(None)` means the fields were bad (recorded in `f`).
fn grant_target(model: &Model, f: &mut Fields, level: Level) -> Result<Option<Target>, ApiError> {
    let account = named(f, "account");
    let group = named(f, "group");
    let vm = named(f, "virtual_machine");
    if !f.is_ok() {
        return Ok(None);
    }
    let l = level.as_str();
    // Naming something more specific than the level's kind is a mistake;
    // less specific fields say where to find a target given by name.
    let mistake = match level {
        Level::ClusterSu | Level::ClusterAdmin => (account.is_some()
            || group.is_some()
            || vm.is_some())
        .then_some("applies to the whole cluster: give no account, group or virtual machine"),
        Level::AccountAdmin => (group.is_some() || vm.is_some())
            .then_some("is granted on an account: give only account_id or account_name"),
        Level::GroupAdmin => vm
            .is_some()
            .then_some("is granted on a group: give group_id, or group_name with the account"),
        Level::VmAdmin | Level::VmConsole => None,
    };
    if let Some(what) = mistake {
        f.error("level", format!("{l} {what}"));
        return Ok(None);
    }
    Ok(match level {
        Level::ClusterSu | Level::ClusterAdmin => Some(Target::Cluster),
        Level::AccountAdmin => grant_account(model, f, account)?.map(Target::Account),
        Level::GroupAdmin => grant_group(model, f, group, account)?.map(Target::Group),
        Level::VmAdmin | Level::VmConsole => match vm {
            Some(Named::Id(id)) => {
                let vm = model.vms.get(&id).filter(|v| !v.deleted);
                Some(Target::Vm(vm.ok_or(ApiError::NotFound)?.id))
            }
            Some(Named::Name(n)) if group.is_some() => grant_group(model, f, group, account)?
                .map(|g| model.vm_named_live(g, &n).ok_or(ApiError::NotFound))
                .transpose()?
                .map(|v| Target::Vm(v.id)),
            Some(Named::Name(_)) => {
                f.error(
                    "virtual_machine_name",
                    "needs group_id, or group_name with the account, to say which group",
                );
                None
            }
            None => {
                f.error(
                    "virtual_machine_id",
                    format!("can't be blank: {l} is granted on a virtual machine"),
                );
                None
            }
        },
    })
}

/// `POST /users/{user}/privileges`: grant.
async fn grant(
    State(state): State<AppState>,
    caller: Caller,
    Path(seg): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = Fields::parse(content_type(&headers), &body)?;
    let privilege = {
        let model = state.db.read();
        let level = f.required_string("level").and_then(|l| {
            let parsed = Level::parse(&l);
            if parsed.is_none() {
                let all: Vec<&str> = Level::ALL.iter().map(|l| l.as_str()).collect();
                f.error(
                    "level",
                    format!(
                        "\"{l}\" is not a privilege level (one of {})",
                        all.join(", ")
                    ),
                );
            }
            parsed
        });
        let target = match level {
            Some(level) => grant_target(&model, &mut f, level)?,
            None => None,
        };
        let (Some(level), Some(target)) = (level, target) else {
            // A field error is recorded whenever either is missing.
            f.finish()?;
            return Err(ApiError::Internal("grant without level or target".into()));
        };
        may_grant(&model, &caller, target, level)?;
        let user = users::find(&model, &caller, &seg).ok_or(ApiError::NotFound)?;
        // 0 is how a Go client says "none".
        let api_key_id = f.u64("api_key_id").filter(|id| *id != 0).map(ApiKeyId);
        if let Some(key) = api_key_id
            && model
                .api_keys
                .get(&key.0)
                .is_none_or(|k| k.user_id != user.id)
        {
            f.error(
                "api_key_id",
                format!("is not an API key of {}", user.username),
            );
        }
        let password_required = f.bool("password_required").unwrap_or(true);
        let yubikey_required = f.bool("yubikey_required").unwrap_or(false);
        let yubikey_otp_max_age = read_otp_max_age(&mut f);
        let ip_restrictions = read_ip_restrictions(&mut f).flatten();
        f.finish()?;
        Privilege {
            id: PrivilegeId(0),
            user_id: user.id,
            level,
            target,
            api_key_id,
            password_required,
            yubikey_required,
            yubikey_otp_max_age,
            ip_restrictions,
            creating_username: Some(caller.username.clone()),
        }
    };
    let json = state
        .db
        .write(move |tx| {
            let mut p = privilege;
            let model = tx.model();
            let key_gone = p
                .api_key_id
                .is_some_and(|k| !model.api_keys.contains_key(&k.0));
            if model.user(p.user_id).is_none() || key_gone {
                return Err(ApiError::NotFound);
            }
            let duplicate = model.privileges.values().any(|q| {
                q.user_id == p.user_id
                    && q.level == p.level
                    && q.target == p.target
                    && q.api_key_id == p.api_key_id
            });
            if duplicate {
                return Err(ApiError::field(
                    "level",
                    format!(
                        "{} has already been granted on that to this user",
                        p.level.as_str()
                    ),
                ));
            }
            p.id = PrivilegeId(tx.new_id::<Privilege>()?);
            let json = privilege_json(tx.model(), &p);
            tx.put(p)?;
            Ok::<_, ApiError>(json)
        })
        .await?;
    tracing::info!(by = %caller.username, privilege = %json, "privilege granted");
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

/// A field's value for comparison: absent, null, 0 and "" all mean
/// "nothing"; numbers and booleans sent as strings (forms) count as such.
fn normalise(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Value::Null,
        Some(Value::String(s)) if s.is_empty() => Value::Null,
        Some(Value::String(s)) => {
            if let Ok(n) = s.parse::<u64>() {
                normalise(Some(&json!(n)))
            } else if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
                json!(s.eq_ignore_ascii_case("true"))
            } else {
                Value::String(s.clone())
            }
        }
        Some(v) => v.clone(),
    }
}

/// `PUT /privileges/{id}`: only the Yubikey and IP fields change.
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(seg): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut f = Fields::parse(content_type(&headers), &body)?;
    let (id, yubikey_required, otp_max_age, ip_restrictions) = {
        let model = state.db.read();
        let p = find_privilege(&model, &caller, &seg)?;
        may_grant(&model, &caller, p.target, p.level)?;
        let current = privilege_json(&model, p);
        for name in [
            "level",
            "username",
            "account_id",
            "group_id",
            "virtual_machine_id",
            "api_key_id",
            "password_required",
        ] {
            if f.has(name) && normalise(f.raw(name)) != normalise(current.get(name)) {
                f.error(
                    name,
                    "can't be changed once granted: revoke the privilege and grant a new one",
                );
            }
        }
        let yubikey_required = f.bool("yubikey_required");
        let otp_max_age = read_otp_max_age(&mut f);
        let ip_restrictions = read_ip_restrictions(&mut f);
        f.finish()?;
        (p.id, yubikey_required, otp_max_age, ip_restrictions)
    };
    let json = state
        .db
        .write(move |tx| {
            let mut p = tx
                .model()
                .privileges
                .get(&id.0)
                .cloned()
                .ok_or(ApiError::NotFound)?;
            if let Some(y) = yubikey_required {
                p.yubikey_required = y;
            }
            if let Some(age) = otp_max_age {
                p.yubikey_otp_max_age = Some(age);
            }
            if let Some(ips) = ip_restrictions {
                p.ip_restrictions = ips;
            }
            let json = privilege_json(tx.model(), &p);
            tx.put(p)?;
            Ok::<_, ApiError>(json)
        })
        .await?;
    Ok(Json(json).into_response())
}

/// `DELETE /privileges/{id}`: revoke.
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(seg): Path<String>,
) -> Result<Response, ApiError> {
    let id = {
        let model = state.db.read();
        let p = find_privilege(&model, &caller, &seg)?;
        let giving_up_own = p.user_id == caller.user_id && users::acts_fully(&model, &caller);
        if !giving_up_own {
            may_grant(&model, &caller, p.target, p.level)?;
        }
        p.id
    };
    let by = caller.username.clone();
    let revoked = state
        .db
        .write(move |tx| {
            let model = tx.model();
            let p = model.privileges.get(&id.0).ok_or(ApiError::NotFound)?;
            let is_operator = |q: &Privilege| {
                q.level == Level::ClusterSu
                    && q.api_key_id.is_none()
                    && model.user(q.user_id).is_some()
            };
            if is_operator(p) && model.privileges.values().filter(|q| is_operator(q)).count() == 1
            {
                return Err(ApiError::refused(
                    "The last cluster_su privilege cannot be revoked: nobody could administer the cluster",
                ));
            }
            let json = privilege_json(model, p);
            tx.delete::<Privilege>(id.0)?;
            Ok::<_, ApiError>(json)
        })
        .await?;
    tracing::info!(%by, privilege = %revoked, "privilege revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}
