//! Fetching OS templates from the brain. A tail copies a template onto a
//! disc from `<images>/<image>.raw`; a network-booted tail starts with no
//! templates at all, so when that file is missing and the tail was given
//! a templates URL (init passes `bigv.templates=`, which the brain's boot
//! script carries), the file is first fetched from `URL/<image>.raw` — the
//! brain's boot HTTP server, which serves the templates uploaded with
//! `PUT /admin/images/{name}/content`.
//!
//! A deliberately small HTTP/1.1 client (one GET, `Connection: close`,
//! `Content-Length` required, no redirects, no TLS): the boot LAN is the
//! brain's own network, and it keeps the static binary small. All-zero
//! 64 KiB blocks are not written, so the copy is sparse. The file appears
//! under its name only once complete (written as `.NAME.raw.part`, then
//! renamed), so a broken download is fetched again next time.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Headers larger than this are refused.
const MAX_HEADER: usize = 16 * 1024;
/// Connecting and each read must make progress within this.
const STALL: Duration = Duration::from_secs(30);
const BLOCK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("templates URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("fetching {url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching {url}: {why}")]
    Http { url: String, why: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `http://host[:port]/path` → (`host:port`, host, path without a
/// trailing slash).
fn split_url(url: &str) -> Result<(String, String, String), FetchError> {
    let bad = |why| FetchError::BadUrl {
        url: url.into(),
        why,
    };
    let rest = url.strip_prefix("http://").ok_or(bad("not http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let has_port = match authority.rfind(':') {
        Some(i) => {
            !authority.ends_with(']') && authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    };
    let connect = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((
        connect,
        authority.to_owned(),
        path.trim_end_matches('/').to_owned(),
    ))
}

/// The status line and headers of a response (up to the blank line):
/// the body's length if the status is 200 and `Content-Length` is there.
fn parse_head(head: &[u8]) -> Result<u64, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("the server answered {status:?}"));
    }
    lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| "no Content-Length".to_string())
}

/// Fetches `BASE/<image>.raw` into `dest` (sparse); returns its size.
pub async fn fetch(base: &str, image: &str, dest: &Path) -> Result<u64, FetchError> {
    let (connect, host, path) = split_url(base)?;
    let url = format!("{}/{image}.raw", base.trim_end_matches('/'));
    let io = |source| FetchError::Io {
        url: url.clone(),
        source,
    };
    let stalled = || {
        io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no progress for {} s", STALL.as_secs()),
        ))
    };
    let mut conn = tokio::time::timeout(STALL, tokio::net::TcpStream::connect(&connect))
        .await
        .map_err(|_| stalled())?
        .map_err(io)?;
    let request =
        format!("GET {path}/{image}.raw HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.map_err(io)?;

    // Status line and headers.
    let mut head = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    let body_start = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_HEADER {
            return Err(FetchError::Http {
                url,
                why: "response headers too large".into(),
            });
        }
        let n = tokio::time::timeout(STALL, conn.read(&mut buf))
            .await
            .map_err(|_| stalled())?
            .map_err(io)?;
        if n == 0 {
            return Err(FetchError::Http {
                url,
                why: "connection closed before the headers ended".into(),
            });
        }
        head.extend_from_slice(&buf[..n]);
    };
    let length = parse_head(&head[..body_start]).map_err(|why| FetchError::Http {
        url: url.clone(),
        why,
    })?;

    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let part = dest.with_file_name(format!(".{file_name}.part"));
    let write = |source| FetchError::Write {
        path: part.clone(),
        source,
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    let file = std::fs::File::create(&part).map_err(write)?;
    let mut pending = head[body_start..].to_vec();
    let mut offset = 0u64;
    loop {
        // Write whole blocks (the last one may be short), skipping zeros.
        let whole = if offset + pending.len() as u64 >= length {
            pending.len()
        } else {
            pending.len() / BLOCK * BLOCK
        };
        for chunk in pending[..whole].chunks(BLOCK) {
            if chunk.iter().any(|&b| b != 0) {
                file.write_all_at(chunk, offset).map_err(write)?;
            }
            offset += chunk.len() as u64;
        }
        pending.drain(..whole);
        if offset > length {
            let _ = std::fs::remove_file(&part);
            return Err(FetchError::Http {
                url,
                why: format!("more than the {length} bytes announced"),
            });
        }
        if offset == length {
            break;
        }
        let n = tokio::time::timeout(STALL, conn.read(&mut buf))
            .await
            .map_err(|_| stalled())?
            .map_err(io)?;
        if n == 0 {
            let _ = std::fs::remove_file(&part);
            return Err(FetchError::Http {
                url,
                why: format!(
                    "the body ended after {} of {length} bytes",
                    offset + pending.len() as u64
                ),
            });
        }
        pending.extend_from_slice(&buf[..n]);
    }
    file.set_len(length).map_err(write)?;
    file.sync_all().map_err(write)?;
    drop(file);
    std::fs::rename(&part, dest).map_err(write)?;
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use tokio::io::AsyncWriteExt;

    /// Serves one response to every connection; returns the base URL and
    /// the requests it saw.
    async fn server(response: Vec<u8>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/templates/", l.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut req = vec![0u8; 4096];
                let n = c.read(&mut req).await.unwrap_or(0);
                s.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&req[..n]).into_owned());
                let _ = c.write_all(&response).await;
            }
        });
        (base, seen)
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[tokio::test]
    async fn fetches_the_template_sparsely_and_names_failures() {
        let dir = tempfile::tempdir().unwrap();
        // 1 MiB of zeros, a marked block, then zeros again (not block-aligned).
        let mut body = vec![0u8; 3 * 1024 * 1024 + 1000];
        body[1024 * 1024..1024 * 1024 + 5].copy_from_slice(b"BIGV!");
        let (base, seen) = server(ok(&body)).await;
        let dest = dir.path().join("images/bigv-test.raw");
        let n = fetch(&base, "bigv-test", &dest).await.unwrap();
        assert_eq!(n, body.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        // Only the marked block was written.
        assert!(std::fs::metadata(&dest).unwrap().blocks() * 512 <= 2 * BLOCK as u64);
        let req = seen.lock().unwrap()[0].clone();
        assert!(
            req.starts_with("GET /templates/bigv-test.raw HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nHost: 127.0.0.1:"), "{req}");

        let (base, _) =
            server(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
        let e = fetch(&base, "nosuch", &dir.path().join("nosuch.raw"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        assert!(!dir.path().join("nosuch.raw").exists());

        // A body cut short leaves nothing behind under the name.
        let mut short = ok(&body);
        short.truncate(short.len() - 10);
        let (base, _) = server(short).await;
        let dest = dir.path().join("short.raw");
        let e = fetch(&base, "short", &dest).await.unwrap_err();
        assert!(e.to_string().contains("ended after"), "{e}");
        assert!(!dest.exists());
        assert!(!dir.path().join(".short.raw.part").exists());

        assert!(matches!(
            fetch("ftp://x/", "a", &dest).await,
            Err(FetchError::BadUrl { .. })
        ));
    }

    proptest::proptest! {
        /// Whatever a server sends as its head, parsing it never panics,
        /// and a well-formed 200 with a length yields that length.
        #[test]
        fn any_response_head_is_parsed_or_refused(
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            length in proptest::num::u64::ANY,
            extra in "[A-Za-z-]{1,12}: [ -~]{0,20}",
        ) {
            let _ = parse_head(&junk);
            let head = format!("HTTP/1.1 200 OK\r\n{extra}\r\nContent-Length: {length}\r\n\r\n");
            // (`extra`'s name is at most 12 letters: never Content-Length.)
            proptest::prop_assert_eq!(parse_head(head.as_bytes()), Ok(length));
        }
    }

    #[test]
    fn response_heads_name_what_is_wrong() {
        assert_eq!(
            parse_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            Err("the server answered \"HTTP/1.1 404 Not Found\"".into())
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err("no Content-Length".into())
        );
        assert_eq!(
            parse_head(b"HTTP/1.0 200 OK\r\ncOnTeNt-LeNgTh:  42 \r\n"),
            Ok(42)
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://10.0.0.1:8080/templates/").unwrap(),
            (
                "10.0.0.1:8080".into(),
                "10.0.0.1:8080".into(),
                "/templates".into()
            )
        );
        assert_eq!(
            split_url("http://brain/t").unwrap(),
            ("brain:80".into(), "brain".into(), "/t".into())
        );
        assert_eq!(split_url("http://[fd00::1]/t").unwrap().0, "[fd00::1]:80");
    }
}
