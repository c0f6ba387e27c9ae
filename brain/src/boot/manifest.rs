//! Reading a node image's `manifest.json`.
//!
//! The image builder (`image/`) writes the manifest; the brain only needs
//! the version and each file's SHA-256 (and size, when given). To stay
//! independent of the builder's exact layout, the file list may come in
//! any of these shapes (first match wins):
//!
//! - `"files"` / `"artefacts"` / `"artifacts"` as an object:
//!   `{"vmlinuz": "<hex>"}` or `{"vmlinuz": {"sha256": "<hex>", "size": N}}`;
//! - the same keys as an array: `[{"name": "vmlinuz", "sha256": "<hex>", "size": N}]`
//!   (`file` or `path` instead of `name` also work);
//! - `"sha256"` as an object `{"vmlinuz": "<hex>"}`.
//!
//! Everything else in the manifest (kernel version, module list…) is kept
//! as is and ignored.

use std::collections::BTreeMap;

use serde_json::Value;

/// One file the manifest vouches for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ManifestFile {
    pub sha256: [u8; 32],
    pub size: Option<u64>,
}

/// What the brain reads from a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    /// `kernel_version`, if the manifest names it (shown to operators).
    pub kernel_version: Option<String>,
    pub files: BTreeMap<String, ManifestFile>,
}

/// Why a manifest is refused; each names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.json is not JSON: {0}")]
    NotJson(String),
    #[error("manifest.json is not a JSON object")]
    NotAnObject,
    #[error("manifest.json has no \"version\" string")]
    NoVersion,
    #[error("manifest version {0:?} must be 1-64 of [A-Za-z0-9._-], not starting with '.'")]
    BadVersion(String),
    #[error(
        "manifest.json lists no files (expected \"files\", \"artefacts\", \"artifacts\" or \"sha256\")"
    )]
    NoFiles,
    #[error("manifest file name {0:?} must be 1-64 of [A-Za-z0-9._-], not starting with '.'")]
    BadFileName(String),
    #[error("manifest entry {0:?} has no sha256")]
    NoHash(String),
    #[error("manifest entry {name:?} has sha256 {value:?}: not 64 hex digits")]
    BadHash { name: String, value: String },
    #[error("manifest entry {0:?} has a size that is not a whole number")]
    BadSize(String),
    #[error("manifest lists {0:?} twice")]
    Duplicate(String),
}

fn hash(name: &str, v: &Value) -> Result<[u8; 32], ManifestError> {
    let s = v
        .as_str()
        .ok_or_else(|| ManifestError::NoHash(name.into()))?;
    let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| ManifestError::BadHash {
        name: name.into(),
        value: s.into(),
    })?;
    Ok(out)
}

fn entry(name: &str, v: &Value) -> Result<ManifestFile, ManifestError> {
    if !bigv_pxe::ipxe::is_safe_name(name) {
        return Err(ManifestError::BadFileName(name.into()));
    }
    match v {
        Value::String(_) => Ok(ManifestFile {
            sha256: hash(name, v)?,
            size: None,
        }),
        Value::Object(o) => {
            let sha256 = hash(
                name,
                o.get("sha256")
                    .ok_or_else(|| ManifestError::NoHash(name.into()))?,
            )?;
            let size = match o.get("size") {
                None | Some(Value::Null) => None,
                Some(s) => Some(
                    s.as_u64()
                        .ok_or_else(|| ManifestError::BadSize(name.into()))?,
                ),
            };
            Ok(ManifestFile { sha256, size })
        }
        _ => Err(ManifestError::NoHash(name.into())),
    }
}

/// Parses a manifest.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    let o = v.as_object().ok_or(ManifestError::NotAnObject)?;
    let version = o
        .get("version")
        .and_then(Value::as_str)
        .ok_or(ManifestError::NoVersion)?
        .to_string();
    if !bigv_pxe::ipxe::is_safe_name(&version) {
        return Err(ManifestError::BadVersion(version));
    }
    let kernel_version = o
        .get("kernel_version")
        .and_then(Value::as_str)
        .map(str::to_string);
    let list = ["files", "artefacts", "artifacts", "sha256"]
        .iter()
        .find_map(|k| o.get(*k).filter(|v| v.is_object() || v.is_array()))
        .ok_or(ManifestError::NoFiles)?;
    let mut files = BTreeMap::new();
    let mut add = |name: String, f: ManifestFile| {
        if files.insert(name.clone(), f).is_some() {
            Err(ManifestError::Duplicate(name))
        } else {
            Ok(())
        }
    };
    match list {
        Value::Object(m) => {
            for (name, v) in m {
                add(name.clone(), entry(name, v)?)?;
            }
        }
        Value::Array(a) => {
            for item in a {
                let name = ["name", "file", "path"]
                    .iter()
                    .find_map(|k| item.get(*k).and_then(Value::as_str))
                    .ok_or_else(|| ManifestError::BadFileName(item.to_string()))?;
                add(name.to_string(), entry(name, item)?)?;
            }
        }
        _ => return Err(ManifestError::NoFiles),
    }
    if files.is_empty() {
        return Err(ManifestError::NoFiles);
    }
    Ok(Manifest {
        version,
        kernel_version,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn every_shape_reads_the_same() {
        let shapes = [
            format!(r#"{{"version":"v1","files":{{"vmlinuz":"{H}"}}}}"#),
            format!(r#"{{"version":"v1","files":{{"vmlinuz":{{"sha256":"{H}"}}}}}}"#),
            format!(r#"{{"version":"v1","artefacts":[{{"name":"vmlinuz","sha256":"{H}"}}]}}"#),
            format!(
                r#"{{"version":"v1","artifacts":[{{"path":"vmlinuz","sha256":"sha256:{H}"}}]}}"#
            ),
            format!(r#"{{"version":"v1","sha256":{{"vmlinuz":"{H}"}}}}"#),
        ];
        for s in shapes {
            let m = parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(m.version, "v1");
            assert_eq!(m.files.len(), 1);
            assert_eq!(hex::encode(m.files["vmlinuz"].sha256), H);
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases = [
            ("[]", ManifestError::NotAnObject),
            ("{}", ManifestError::NoVersion),
            (
                r#"{"version":"../x","files":{}}"#,
                ManifestError::BadVersion("../x".into()),
            ),
            (r#"{"version":"v"}"#, ManifestError::NoFiles),
            (r#"{"version":"v","files":{}}"#, ManifestError::NoFiles),
            (
                r#"{"version":"v","files":{"a/b":"00"}}"#,
                ManifestError::BadFileName("a/b".into()),
            ),
            (
                r#"{"version":"v","files":{"k":"zz"}}"#,
                ManifestError::BadHash {
                    name: "k".into(),
                    value: "zz".into(),
                },
            ),
            (
                r#"{"version":"v","files":{"k":{"size":3}}}"#,
                ManifestError::NoHash("k".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input.as_bytes()).unwrap_err(), want, "{input}");
        }
        assert!(matches!(parse(b"{"), Err(ManifestError::NotJson(_))));
    }

    proptest! {
        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        /// Arbitrary JSON values never panic it either, and whatever it
        /// accepts has a safe version and safe file names.
        #[test]
        fn accepted_names_are_safe(
            version in "[ -~]{0,12}",
            names in proptest::collection::vec("[ -~]{0,10}", 0..4),
            hashes in proptest::collection::vec("[0-9a-fA-Fxz:]{0,70}", 0..4),
        ) {
            let files: serde_json::Map<String, Value> = names
                .iter()
                .zip(hashes.iter())
                .map(|(n, h)| (n.clone(), Value::String(h.clone())))
                .collect();
            let doc = serde_json::json!({"version": version, "files": files});
            if let Ok(m) = parse(doc.to_string().as_bytes()) {
                prop_assert!(bigv_pxe::ipxe::is_safe_name(&m.version));
                for name in m.files.keys() {
                    prop_assert!(bigv_pxe::ipxe::is_safe_name(name));
                }
            }
        }
    }
}
