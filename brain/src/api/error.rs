//! The API's closed set of errors (bigv-api.md §1.1). Internal detail goes
//! to the log, never into a response.

use std::collections::BTreeMap;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::model::DbError;

#[derive(Debug)]
pub enum ApiError {
    /// 400 with `{"field": ["specific message", ...]}`.
    Invalid(BTreeMap<String, Vec<String>>),
    /// 400 with a body already shaped, for errors that nest (vm_create's
    /// per-disc `{"discs":[{},{"size":["..."]}]}`).
    InvalidShaped(serde_json::Map<String, serde_json::Value>),
    /// 400 with a plain-text reason (a refused action, e.g. a failed DELETE).
    Refused(String),
    /// 401; the text is what the clients match on.
    Unauthenticated(&'static str),
    /// 403: the caller can see the object but may not do this to it.
    Forbidden,
    /// 404: unknown, or not visible to the caller.
    NotFound,
    /// 503: a dependency (the store, a node) is unavailable; retry later.
    Unavailable(String),
    /// 500; the detail is logged, not sent.
    Internal(String),
}

impl ApiError {
    /// A 400 naming one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid(BTreeMap::from([(field.to_owned(), vec![message.into()])]))
    }

    pub fn refused(reason: impl Into<String>) -> Self {
        ApiError::Refused(reason.into())
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Internal(error_chain(&e))
    }
}

/// `outer: inner: innermost`, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Invalid(fields) => {
                (StatusCode::BAD_REQUEST, axum::Json(fields)).into_response()
            }
            ApiError::InvalidShaped(body) => {
                (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
            }
            ApiError::Refused(reason) => text(StatusCode::BAD_REQUEST, reason),
            ApiError::Unauthenticated(message) => {
                text(StatusCode::UNAUTHORIZED, message.to_owned())
            }
            ApiError::Forbidden => text(
                StatusCode::FORBIDDEN,
                "You do not have permission to do that".into(),
            ),
            ApiError::NotFound => text(StatusCode::NOT_FOUND, "Not found".into()),
            ApiError::Unavailable(reason) => {
                tracing::warn!(%reason, "request could not be served now");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable; try again".into(),
                )
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error serving a request");
                text(StatusCode::INTERNAL_SERVER_ERROR, "Internal error".into())
            }
        }
    }
}
