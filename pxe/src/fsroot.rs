//! Resolving client-supplied names under a served directory without
//! escaping it: shared by the TFTP directory source and the HTTP image
//! files.

use std::io;
use std::path::{Path, PathBuf};

/// Why a name was not resolved to a file.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("path {path:?} refused: {reason}")]
    Refused { path: String, reason: &'static str },
    #[error("{path:?} not found")]
    NotFound { path: String },
    #[error("{path:?} resolves outside the served directory")]
    Escapes { path: String },
    #[error("{path:?} is not a regular file")]
    NotAFile { path: String },
    #[error("resolving {path:?}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Checks a relative `/`-separated name lexically: no leading `/`, no
/// empty, `.` or `..` component, no backslash or control character.
pub fn check_relative(path: &str) -> Result<(), PathError> {
    let refuse = |reason| {
        Err(PathError::Refused {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return refuse("empty");
    }
    if path.len() > 1024 {
        return refuse("too long");
    }
    if path.starts_with('/') {
        return refuse("absolute paths are not served");
    }
    if path.bytes().any(|b| b == b'\\' || b.is_ascii_control()) {
        return refuse("backslash or control character");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return refuse("empty, `.` or `..` component");
    }
    Ok(())
}

/// Resolves `path` under `root` to an existing regular file whose real
/// location (after following every symlink) is inside `root`. Symlinks
/// that stay inside the root are fine; ones that lead out are refused.
pub fn resolve(root: &Path, path: &str) -> Result<PathBuf, PathError> {
    check_relative(path)?;
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            PathError::NotFound {
                path: path.to_string(),
            }
        } else {
            PathError::Io {
                path: path.to_string(),
                source,
            }
        }
    };
    let root = root.canonicalize().map_err(io_err)?;
    let real = root.join(path).canonicalize().map_err(io_err)?;
    if !real.starts_with(&root) {
        return Err(PathError::Escapes {
            path: path.to_string(),
        });
    }
    if !real.metadata().map_err(io_err)?.is_file() {
        return Err(PathError::NotAFile {
            path: path.to_string(),
        });
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_refusals() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\..\\b",
            "a\0b",
            "a/",
        ] {
            assert!(
                matches!(check_relative(bad), Err(PathError::Refused { .. })),
                "{bad:?}"
            );
        }
        for good in ["undionly.kpxe", "a/b.c", "a..b", "..a"] {
            check_relative(good).unwrap();
        }
    }

    #[test]
    fn symlinks_may_not_leave_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("file"), b"f").unwrap();
        std::fs::create_dir(r.join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), r.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("outdir")).unwrap();
        std::os::unix::fs::symlink("file", r.join("in")).unwrap();
        assert_eq!(
            resolve(r, "in").unwrap(),
            r.canonicalize().unwrap().join("file")
        );
        assert!(matches!(resolve(r, "out"), Err(PathError::Escapes { .. })));
        assert!(matches!(
            resolve(r, "outdir/secret"),
            Err(PathError::Escapes { .. })
        ));
        assert!(matches!(resolve(r, "dir"), Err(PathError::NotAFile { .. })));
        assert!(matches!(
            resolve(r, "nope"),
            Err(PathError::NotFound { .. })
        ));
    }
}
