//! The boot HTTP server: per-node iPXE scripts and image files.
//!
//! - `GET /boot/{mac}/boot.ipxe`: the script for that node, from
//!   [`BootPolicy::node_boot`]; 404 if the policy has none.
//! - `GET|HEAD /images/{version}/{file}`: a file of an image version, read
//!   from `images_root/{version}/{file}` (names checked, symlinks may not
//!   leave the root), with single-range `Range` requests answered 206.
//!
//! - `GET|HEAD /templates/{file}`: an OS template (`NAME.raw`) from
//!   `templates_root`, the same way, for tails that copy templates onto
//!   new discs and have no copy of their own ([`templates_router`]).
//!
//! The brain mounts [`router`] on a listener on the boot LAN.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::fsroot::{self, PathError};
use crate::{BootPolicy, MacAddr, ipxe};

/// What the HTTP handlers share.
#[derive(Clone)]
struct AppState {
    policy: Arc<dyn BootPolicy>,
    http_base: Arc<str>,
    images_root: Arc<PathBuf>,
}

/// The boot HTTP routes. `http_base` is the URL clients reach this server
/// at (it is written into scripts); `images_root` holds one folder per
/// image version.
pub fn router(policy: Arc<dyn BootPolicy>, http_base: &str, images_root: PathBuf) -> Router {
    Router::new()
        .route("/boot/{mac}/boot.ipxe", get(script))
        .route("/images/{version}/{file}", get(image))
        .with_state(AppState {
            policy,
            http_base: http_base.into(),
            images_root: Arc::new(images_root),
        })
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

async fn script(State(st): State<AppState>, Path(mac): Path<String>) -> Response {
    let mac: MacAddr = match mac.parse() {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let Some(boot) = st.policy.node_boot(mac) else {
        tracing::info!(%mac, "no boot script for this node");
        return text(StatusCode::NOT_FOUND, format!("no boot script for {mac}\n"));
    };
    match ipxe::render(&st.http_base, mac, &boot) {
        Ok(s) => {
            tracing::info!(%mac, role = %boot.role, version = %boot.image_version, "served iPXE script");
            text(StatusCode::OK, s)
        }
        Err(e) => {
            tracing::error!(%mac, error = %e, "cannot render iPXE script");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the boot script\n",
            )
        }
    }
}

/// A byte range to serve, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) Range header: the whole file, 200.
    Full,
    /// `first..=last`, 206.
    Part { first: u64, last: u64 },
    /// Out of bounds: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header for a file of `len` bytes. Only one
/// `bytes=` range is honoured; anything else is ignored (full file), which
/// RFC 9110 §14.2 allows.
pub fn parse_range(value: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), num(a), num(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    first: len.saturating_sub(n),
                    last: len - 1,
                }
            }
        }
        (false, Some(first), last) if b.is_empty() || last.is_some() => {
            if first >= len {
                return RangeRequest::Unsatisfiable;
            }
            let last = last.unwrap_or(u64::MAX).min(len - 1);
            if last < first {
                return RangeRequest::Full;
            }
            RangeRequest::Part { first, last }
        }
        _ => RangeRequest::Full,
    }
}

async fn image(
    State(st): State<AppState>,
    Path((version, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !ipxe::is_safe_name(&version) || !ipxe::is_safe_name(&file) {
        return text(StatusCode::BAD_REQUEST, "bad image version or file name\n");
    }
    serve_file(
        st.images_root.clone(),
        format!("{version}/{file}"),
        &headers,
    )
    .await
}

/// The OS template routes: `GET|HEAD /templates/{file}` from `root`.
pub fn templates_router(root: PathBuf) -> Router {
    Router::new()
        .route("/templates/{file}", get(template))
        .with_state(Arc::new(root))
}

async fn template(
    State(root): State<Arc<PathBuf>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !ipxe::is_safe_name(&file) {
        return text(StatusCode::BAD_REQUEST, "bad template file name\n");
    }
    serve_file(root, file, &headers).await
}

/// Serves `root/rel` (names checked by the caller; symlinks may not leave
/// the root), honouring a single `Range`.
async fn serve_file(root: Arc<PathBuf>, rel: String, headers: &HeaderMap) -> Response {
    let resolved = {
        let rel = rel.clone();
        tokio::task::spawn_blocking(move || fsroot::resolve(&root, &rel)).await
    };
    let path = match resolved {
        Ok(Ok(p)) => p,
        Ok(Err(PathError::NotFound { .. } | PathError::NotAFile { .. })) => {
            return text(StatusCode::NOT_FOUND, format!("{rel} not found\n"));
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::ErrorChain(&e), "image file refused");
            return text(StatusCode::FORBIDDEN, format!("{rel} refused\n"));
        }
        Err(e) => {
            tracing::error!(error = %e, "resolving an image file panicked");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    let mut f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "opening image file");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot open file\n");
        }
    };
    let len = match f.metadata().await {
        Ok(m) => m.len(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "reading image file metadata");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n");
        }
    };
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    let (status, first, count) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Part { first, last } => {
            (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
        }
        RangeRequest::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    if first > 0
        && let Err(e) = f.seek(SeekFrom::Start(first)).await
    {
        tracing::error!(path = %path.display(), error = %e, "seeking image file");
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n");
    }
    tracing::info!(file = %rel, ?range, "serving image file");
    let mut resp = Response::new(Body::from_stream(ReaderStream::new(f.take(count))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        let v = format!("bytes {first}-{}/{len}", first + count - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&v).expect("ASCII"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            Part { first: 0, last: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Part {
                first: 90,
                last: 99
            }
        );
        assert_eq!(
            parse_range(Some("bytes=90-500"), 100),
            Part {
                first: 90,
                last: 99
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Part {
                first: 90,
                last: 99
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-500"), 100),
            Part { first: 0, last: 99 }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=+1-2"), 100), Full);
        assert_eq!(parse_range(Some("bytes=a-b"), 100), Full);
    }
}
