//! `bigv debug METHOD PATH [BODY]`: a raw request to the brain, handy
//! for trying the API. The reply's body goes to stdout and its status to
//! stderr; a failure status gives the matching exit code.

use reqwest::Method;
use serde_json::Value;

use super::Ctx;
use crate::cli::DebugArgs;
use crate::client::status_error;
use crate::error::{CliError, Result};
use crate::output::note;

pub fn debug(ctx: &Ctx, a: DebugArgs) -> Result<()> {
    let method = match a.method.to_ascii_uppercase().as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "DELETE" => Method::DELETE,
        other => {
            return Err(CliError::usage(format!(
                "{other:?} is not a method: use GET, POST, PUT or DELETE"
            )));
        }
    };
    if !a.path.starts_with('/') {
        return Err(CliError::usage(format!(
            "{:?} is not a path: it starts with /, e.g. /accounts",
            a.path
        )));
    }
    let body: Option<Value> = a
        .body
        .as_deref()
        .map(|b| {
            serde_json::from_str(b)
                .map_err(|e| CliError::usage(format!("the body is not JSON: {e}")))
        })
        .transpose()?;
    let reply = ctx
        .client()?
        .raw(method, &a.path, body.as_ref(), !a.no_auth)?;
    note(format!("{}", reply.status));
    match serde_json::from_str::<Value>(&reply.body) {
        Ok(v) => ctx.out.json(&v),
        Err(_) if reply.body.is_empty() => {}
        Err(_) => println!("{}", reply.body),
    }
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(status_error(reply.status, &reply.body, &a.path))
    }
}
