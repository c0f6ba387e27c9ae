//! The brain's HTTP API as this client uses it: requests with the bearer
//! token, logging in (and again when a session has run out), and every
//! failure turned into a one-line [`CliError`] with the exit code of
//! bigv-cli.md §6.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::Duration;

use crate::tls::Trust;
use reqwest::Method;
use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{Config, Profile, Source};
use crate::error::{CliError, Exit, Result};
use crate::types::Definitions;

const USER_AGENT: &str = concat!("bigv-cli/", env!("CARGO_PKG_VERSION"));

/// How to get a new session token when there is none or it ran out.
#[derive(Debug, Clone)]
struct Login {
    user: Option<String>,
    password: Option<String>,
    validity: u64,
    /// Stdin and stderr are terminals, so we may ask.
    interactive: bool,
}

#[derive(Debug)]
struct AuthState {
    token: Option<String>,
    /// Where the token came from: one given by flag or environment is
    /// used as is; one from the profile is replaced when it runs out.
    token_source: Source,
    login: Login,
    /// Where new tokens are kept.
    profile: Profile,
}

pub struct Client {
    http: Http,
    endpoint: String,
    auth_endpoint: String,
    show_requests: bool,
    auth: RefCell<AuthState>,
}

/// A reply the caller asked to see whatever its status (`bigv debug`).
pub struct RawReply {
    pub status: StatusCode,
    pub body: String,
}

/// The URL without its trailing slash; a bare host means https.
fn base(url: &str, what: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_owned())
    } else if url.contains("://") || url.is_empty() {
        Err(CliError::usage(format!(
            "{what} {url:?} is not an http(s) URL: it should look like https://brain.example:8443"
        )))
    } else {
        Ok(format!("https://{url}"))
    }
}

impl Client {
    pub fn new(config: &Config, show_requests: bool) -> Result<Client> {
        let endpoint = base(config.endpoint(), "the endpoint")?;
        let auth_endpoint = base(config.auth_endpoint(), "the auth endpoint")?;
        let mut http = Http::builder()
            .user_agent(USER_AGENT)
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10));
        if endpoint.starts_with("https://") || auth_endpoint.starts_with("https://") {
            let trust = Trust::from_settings(
                config.tls_fingerprint.value.as_deref(),
                config.ca_cert.value.as_deref(),
            )?;
            http = http.tls_backend_preconfigured(trust.client_config()?);
        }
        let http = http
            .build()
            .map_err(|e| CliError::new(Exit::Bug, format!("cannot set up HTTP: {e}")))?;
        let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        Ok(Client {
            http,
            endpoint,
            auth_endpoint,
            show_requests,
            auth: RefCell::new(AuthState {
                token: config.token.value.clone(),
                token_source: config.token.source,
                login: Login {
                    user: config.user.value.clone(),
                    password: config.password.value.clone(),
                    validity: config.validity,
                    interactive,
                },
                profile: config.profile.clone(),
            }),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The token requests carry, if any yet.
    pub fn token(&self) -> Option<String> {
        self.auth.borrow().token.clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    fn send(&self, req: RequestBuilder, method: &Method, url: &str, to: &str) -> Result<Response> {
        if self.show_requests {
            eprintln!("> {method} {url}");
        }
        let resp = req.send().map_err(|e| {
            let exit = if to == "auth" {
                Exit::AuthUnreachable
            } else {
                Exit::ApiUnreachable
            };
            CliError::new(
                exit,
                format!("cannot reach the BigV {to} at {url}: {}", cause(&e)),
            )
        })?;
        if self.show_requests {
            eprintln!("< {}", resp.status());
        }
        Ok(resp)
    }

    // ---- logging in -------------------------------------------------

    /// `POST /session`: a new token for `user`.
    pub fn create_session(&self, user: &str, password: &str, validity: u64) -> Result<String> {
        let url = format!("{}/session", self.auth_endpoint);
        let body = serde_json::json!({
            "username": user,
            "password": password,
            "validity": validity.to_string(),
        });
        let req = self
            .http
            .post(&url)
            .header("Accept", "text/plain")
            .json(&body);
        let resp = self.send(req, &Method::POST, &url, "auth")?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        match status {
            s if s.is_success() => {
                let token = text.trim().to_owned();
                if token.is_empty() || token.contains(char::is_whitespace) {
                    Err(CliError::new(
                        Exit::AuthBadResponse,
                        format!(
                            "the auth endpoint {url} answered with something that is not a token"
                        ),
                    ))
                } else {
                    Ok(token)
                }
            }
            StatusCode::UNAUTHORIZED if text.contains("Yubikey") || text.contains("yubikey") => {
                Err(CliError::credentials(format!(
                    "cannot log in as {user}: {}",
                    text.trim()
                )))
            }
            StatusCode::UNAUTHORIZED => Err(CliError::credentials(format!(
                "cannot log in as {user}: bad username or password"
            ))),
            StatusCode::BAD_REQUEST => Err(CliError::new(
                Exit::BadCredentialChars,
                format!("cannot log in as {user}: {}", text.trim()),
            )),
            s if s.is_server_error() => Err(CliError::new(
                Exit::AuthInternal,
                format!("the auth endpoint failed ({s}): {}", text.trim()),
            )),
            s => Err(CliError::new(
                Exit::AuthBadResponse,
                format!("the auth endpoint answered {s}: {}", text.trim()),
            )),
        }
    }

    /// Logs in with what we know (asking on a terminal for what we
    /// don't), keeps the token in the profile, and returns it.
    fn login_again(&self, why: &str) -> Result<String> {
        let login = self.auth.borrow().login.clone();
        let can_ask = login.interactive;
        let user = match login.user {
            Some(u) => u,
            None if can_ask => prompt_line("User: ")?,
            None => {
                return Err(CliError::credentials(format!(
                    "{why}: run `bigv login`, or set BIGV_USER and BIGV_PASS (or BIGV_TOKEN)"
                )));
            }
        };
        let password = match login.password {
            Some(p) => p,
            None if can_ask => {
                eprintln!("{why}: please log in to BigV as {user}");
                prompt_password("Password: ")?
            }
            None => {
                return Err(CliError::credentials(format!(
                    "{why}: run `bigv login`, or set BIGV_PASS to log in as {user} again"
                )));
            }
        };
        let token = self.create_session(&user, &password, login.validity)?;
        let mut auth = self.auth.borrow_mut();
        auth.profile.set("token", &token)?;
        auth.profile.set("user", &user)?;
        auth.token = Some(token.clone());
        auth.token_source = Source::File;
        auth.login.user = Some(user);
        Ok(token)
    }

    fn current_token(&self) -> Result<String> {
        if let Some(t) = self.token() {
            return Ok(t);
        }
        self.login_again("not logged in")
    }

    // ---- requests -----------------------------------------------------

    fn authed(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Response> {
        self.authed_with(method, path, |req| {
            Ok(match body {
                Some(b) => req.json(b),
                None => req,
            })
        })
    }

    /// [`Client::authed`] with the body attached by `attach` (called again
    /// for the retry after a fresh login).
    fn authed_with(
        &self,
        method: Method,
        path: &str,
        attach: impl Fn(RequestBuilder) -> Result<RequestBuilder>,
    ) -> Result<Response> {
        let url = self.url(path);
        let build = |token: &str| {
            attach(
                self.http
                    .request(method.clone(), &url)
                    .header("Accept", "application/json")
                    .bearer_auth(token),
            )
        };
        let token = self.current_token()?;
        let resp = self.send(build(&token)?, &method, &url, "API")?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let source = self.auth.borrow().token_source;
        if matches!(source, Source::Flag | Source::Env) {
            return Err(CliError::credentials(
                "the brain refused the token given with --token or BIGV_TOKEN (expired, revoked or mistyped)",
            ));
        }
        let token = self.login_again("your session has expired")?;
        let resp = self.send(build(&token)?, &method, &url, "API")?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(CliError::credentials(
                "the brain refused a brand-new session token; check the endpoint and auth endpoint",
            ));
        }
        Ok(resp)
    }

    /// A request whose reply must be a success; `what` names the object
    /// for messages ("server web1.default.alice").
    fn call(&self, method: Method, path: &str, body: Option<&Value>, what: &str) -> Result<String> {
        let resp = self.authed(method, path, body)?;
        let status = resp.status();
        let text = resp.text().map_err(|e| {
            CliError::new(
                Exit::ApiInternal,
                format!("reading the brain's reply failed: {e}"),
            )
        })?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(status_error(status, &text, what))
        }
    }

    fn parse<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
        serde_json::from_str(text).map_err(|e| {
            CliError::new(
                Exit::ApiInternal,
                format!("the brain's reply about {what} could not be read: {e}"),
            )
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        let text = self.call(Method::GET, path, None, what)?;
        Self::parse(&text, what)
    }

    pub fn get_value(&self, path: &str, what: &str) -> Result<Value> {
        self.get(path, what)
    }

    /// POST; the reply's JSON, or null when it had no body.
    pub fn post(&self, path: &str, body: &Value, what: &str) -> Result<Value> {
        let text = self.call(Method::POST, path, Some(body), what)?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Self::parse(&text, what)
    }

    pub fn put(&self, path: &str, body: &Value, what: &str) -> Result<Value> {
        let text = self.call(Method::PUT, path, Some(body), what)?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Self::parse(&text, what)
    }

    /// PUT a file's bytes, streamed from disc (an OS template can be
    /// large: no request timeout); the reply's JSON.
    pub fn put_file(&self, path: &str, file: &std::path::Path, what: &str) -> Result<Value> {
        let resp = self.authed_with(Method::PUT, path, |req| {
            let f = std::fs::File::open(file)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
            Ok(req
                .header("Content-Type", "application/octet-stream")
                .timeout(Duration::from_secs(24 * 3600))
                .body(reqwest::blocking::Body::from(f)))
        })?;
        let status = resp.status();
        let text = resp.text().map_err(|e| {
            CliError::new(
                Exit::ApiInternal,
                format!("reading the brain's reply failed: {e}"),
            )
        })?;
        if !status.is_success() {
            return Err(status_error(status, &text, what));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Self::parse(&text, what)
    }

    pub fn delete(&self, path: &str, what: &str) -> Result<()> {
        self.call(Method::DELETE, path, None, what).map(|_| ())
    }

    /// `GET /definitions`, which needs no login.
    pub fn definitions(&self) -> Result<(Value, Definitions)> {
        let url = self.url("/definitions");
        let req = self.http.get(&url).header("Accept", "application/json");
        let resp = self.send(req, &Method::GET, &url, "API")?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        if !status.is_success() {
            return Err(status_error(status, &text, "the definitions"));
        }
        let value: Value = Self::parse(&text, "the definitions")?;
        let defs = Definitions::from_value(&value);
        Ok((value, defs))
    }

    /// Any request, with its reply whatever the status (`bigv debug`).
    pub fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        authenticate: bool,
    ) -> Result<RawReply> {
        let resp = if authenticate {
            self.authed(method, path, body)?
        } else {
            let url = self.url(path);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            self.send(req, &method, &url, "API")?
        };
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        Ok(RawReply { status, body })
    }
}

/// The innermost cause of a transport error ("Connection refused").
fn cause(e: &dyn std::error::Error) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = inner.to_string();
    if text.is_empty() { e.to_string() } else { text }
}

/// A failed reply as a one-line error with its exit code.
pub fn status_error(status: StatusCode, body: &str, what: &str) -> CliError {
    let body = body.trim();
    match status {
        StatusCode::BAD_REQUEST => CliError::new(Exit::BadRequest, describe_invalid(body)),
        StatusCode::UNAUTHORIZED => CliError::credentials("the brain refused our credentials"),
        StatusCode::FORBIDDEN => CliError::new(
            Exit::Forbidden,
            format!("permission denied: you may not do that to {what}"),
        ),
        StatusCode::NOT_FOUND => CliError::not_found(format!("{what} was not found")),
        StatusCode::SERVICE_UNAVAILABLE => CliError::new(
            Exit::ApiUnreachable,
            format!("the brain is temporarily unavailable: {body}"),
        ),
        s if s.is_server_error() => CliError::new(
            Exit::ApiInternal,
            format!("the brain failed ({s}) working on {what}: {body}"),
        ),
        s => CliError::new(
            Exit::Unknown,
            format!("the brain answered {s} about {what}: {body}"),
        ),
    }
}

/// A 400 body as `field: message; field: message`. JSON bodies map
/// attributes to a list of messages (or one string), and per-disc
/// problems come as a list of such maps under `discs`; anything else is
/// shown as it is.
pub fn describe_invalid(body: &str) -> String {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(body) else {
        return if body.is_empty() {
            "the brain refused the request (400) without saying why".into()
        } else {
            body.to_owned()
        };
    };
    let mut parts = vec![];
    fn messages(v: &Value) -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
            other => vec![other.to_string()],
        }
    }
    for (field, value) in &map {
        let field = field.strip_prefix("virtual_machine.").unwrap_or(field);
        match value {
            Value::Array(items) if items.iter().any(Value::is_object) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Object(inner) = item {
                        for (f, v) in inner {
                            for m in messages(v) {
                                parts.push(format!("{field}[{i}].{f}: {m}"));
                            }
                        }
                    }
                }
            }
            v => {
                for m in messages(v) {
                    parts.push(format!("{field}: {m}"));
                }
            }
        }
    }
    if parts.is_empty() {
        "the brain refused the request (400) without saying why".into()
    } else {
        parts.join("; ")
    }
}

/// Reads one line from stdin after printing `prompt` on stderr.
pub fn prompt_line(prompt: &str) -> Result<String> {
    use std::io::Write;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let n = std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("cannot read the answer: {e}")))?;
    if !std::io::stdin().is_terminal() {
        // Nothing echoed the answer: end the prompt's line ourselves.
        eprintln!();
    }
    if n == 0 {
        return Err(CliError::new(
            Exit::Declined,
            "no answer given (end of input)",
        ));
    }
    Ok(line.trim().to_owned())
}

/// Reads a password without echo (on a terminal).
pub fn prompt_password(prompt: &str) -> Result<String> {
    rpassword::prompt_password(prompt)
        .map_err(|e| CliError::credentials(format!("cannot read the password: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_read_as_field_colon_message() {
        assert_eq!(
            describe_invalid(r#"{"memory":["must be greater than or equal to 256"]}"#),
            "memory: must be greater than or equal to 256"
        );
        assert_eq!(
            describe_invalid(
                r#"{"virtual_machine.name":["can't be blank"],"discs":[{},{"size":["is too big"]}]}"#
            ),
            "discs[1].size: is too big; name: can't be blank"
        );
        assert_eq!(
            describe_invalid(r#"{"interval_seconds":"Missing interval_seconds parameter"}"#),
            "interval_seconds: Missing interval_seconds parameter"
        );
        assert_eq!(
            describe_invalid("web1 is already deleted"),
            "web1 is already deleted"
        );
    }

    #[test]
    fn statuses_map_to_the_exit_codes() {
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, "", "server x").code(),
            156
        );
        assert_eq!(
            status_error(StatusCode::FORBIDDEN, "", "server x").code(),
            155
        );
        assert_eq!(status_error(StatusCode::BAD_REQUEST, "{}", "x").code(), 157);
        assert_eq!(
            status_error(StatusCode::SERVICE_UNAVAILABLE, "", "x").code(),
            150
        );
        assert_eq!(
            status_error(StatusCode::INTERNAL_SERVER_ERROR, "", "x").code(),
            152
        );
        assert_eq!(
            status_error(
                StatusCode::NOT_FOUND,
                "Not found",
                "server web9.default.alice"
            )
            .message,
            "server web9.default.alice was not found"
        );
    }

    #[test]
    fn endpoints_are_http_or_https_and_https_is_assumed() {
        assert_eq!(base("http://b:8080/", "e").unwrap(), "http://b:8080");
        assert_eq!(base("https://b", "e").unwrap(), "https://b");
        assert_eq!(base("b:8443", "e").unwrap(), "https://b:8443");
        let e = base("ftp://b", "the endpoint").unwrap_err();
        assert!(e.message.contains("the endpoint"), "{}", e.message);
        assert!(base("", "e").is_err());
    }
}
