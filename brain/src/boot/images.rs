//! Node images: the kernel and initrds heads and tails network-boot,
//! stored by version in `<data dir>/node-images/<version>/` next to their
//! `manifest.json`. (Customer OS images, `/admin/images`, are something
//! else: template discs on the tails.)
//!
//! An image gets there only through [`add`], which checks every file
//! against the manifest's SHA-256 (and size), copies into a hidden
//! temporary folder, checks the copy again and renames it into place, so a
//! half-copied or tampered image is never served. [`add`] does not touch
//! the store, so `bigv-brain image add` works while the brain runs; the
//! running brain notices the new folder on its next scan.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use super::manifest::{self, Manifest, ManifestError};

/// The folder under the data dir.
pub const DIR: &str = "node-images";
pub const MANIFEST: &str = "manifest.json";
/// The files every node image must carry.
pub const REQUIRED: [&str; 3] = ["vmlinuz", "initrd", "initrd-head"];
/// The head-only initrd (qemu and its firmware).
pub const HEAD_INITRD: &str = "initrd-head";

/// A stored, verified node image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeImage {
    pub version: String,
    pub kernel_version: Option<String>,
    /// File name → (sha256 hex, size in bytes).
    pub files: BTreeMap<String, ImageFile>,
    /// Unix seconds the image was added (its folder's mtime).
    pub added_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageFile {
    pub sha256: String,
    pub size: u64,
}

/// Why an image is refused; every variant names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {action}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: bad manifest")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("incomplete image in {dir}: the manifest does not list {file}")]
    NotListed { dir: PathBuf, file: &'static str },
    #[error("incomplete image in {dir}: {file} is missing")]
    Missing { dir: PathBuf, file: String },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is {actual} bytes; the manifest says {expected}")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path} has sha256 {actual}; the manifest says {expected}")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("folder {dir} holds image version {found}, not {expected}")]
    WrongFolder {
        dir: PathBuf,
        expected: String,
        found: String,
    },
    #[error("node image {version} is already stored in {dir}")]
    Exists { version: String, dir: PathBuf },
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io {
        path,
        action,
        source,
    }
}

fn sha256_file(path: &Path) -> Result<(String, u64), ImageError> {
    let mut f = File::open(path).map_err(io_err(path, "opening"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path, "reading"))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), len))
}

/// Checks the image in `dir` against its manifest: the required files are
/// listed, every listed file is a regular file of the right size and hash.
pub fn verify(dir: &Path) -> Result<(Manifest, BTreeMap<String, ImageFile>), ImageError> {
    let mpath = dir.join(MANIFEST);
    let bytes = std::fs::read(&mpath).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::Missing {
                dir: dir.to_path_buf(),
                file: MANIFEST.into(),
            }
        } else {
            io_err(&mpath, "reading")(e)
        }
    })?;
    let m = manifest::parse(&bytes).map_err(|source| ImageError::Manifest {
        path: mpath.clone(),
        source,
    })?;
    for file in REQUIRED {
        if !m.files.contains_key(file) {
            return Err(ImageError::NotListed {
                dir: dir.to_path_buf(),
                file,
            });
        }
    }
    let mut files = BTreeMap::new();
    for (name, want) in &m.files {
        let path = dir.join(name);
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::Missing {
                    dir: dir.to_path_buf(),
                    file: name.clone(),
                });
            }
            Err(e) => return Err(io_err(&path, "reading metadata of")(e)),
        };
        if !meta.is_file() {
            return Err(ImageError::NotAFile { path });
        }
        if let Some(expected) = want.size
            && expected != meta.len()
        {
            return Err(ImageError::SizeMismatch {
                path,
                expected,
                actual: meta.len(),
            });
        }
        let (actual, size) = sha256_file(&path)?;
        let expected = hex::encode(want.sha256);
        if actual != expected {
            return Err(ImageError::HashMismatch {
                path,
                expected,
                actual,
            });
        }
        files.insert(
            name.clone(),
            ImageFile {
                sha256: actual,
                size,
            },
        );
    }
    Ok((m, files))
}

fn added_at(dir: &Path) -> u64 {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir, "syncing"))
}

/// Verifies the image in `src` and stores it under `data_dir`. Refuses a
/// version already stored.
pub fn add(data_dir: &Path, src: &Path) -> Result<NodeImage, ImageError> {
    let (m, _) = verify(src)?;
    let root = data_dir.join(DIR);
    std::fs::create_dir_all(&root).map_err(io_err(&root, "creating"))?;
    let dest = root.join(&m.version);
    if dest.exists() {
        return Err(ImageError::Exists {
            version: m.version,
            dir: dest,
        });
    }
    let tmp = root.join(format!(".adding-{}-{}", m.version, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io_err(&tmp, "creating"))?;
    let copied = (|| {
        for name in m.files.keys().map(String::as_str).chain([MANIFEST]) {
            let (from, to) = (src.join(name), tmp.join(name));
            std::fs::copy(&from, &to).map_err(io_err(&from, "copying"))?;
            File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&to, "syncing"))?;
        }
        // The copy is what will be served: check it, not just the source.
        let (again, files) = verify(&tmp)?;
        if again.version != m.version {
            return Err(ImageError::WrongFolder {
                dir: src.to_path_buf(),
                expected: m.version.clone(),
                found: again.version,
            });
        }
        sync_dir(&tmp)?;
        Ok(files)
    })();
    let files = match copied {
        Ok(files) => files,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, &dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io_err(&dest, "renaming into place")(e));
    }
    sync_dir(&root)?;
    tracing::info!(version = %m.version, dir = %dest.display(), "node image added");
    Ok(NodeImage {
        version: m.version,
        kernel_version: m.kernel_version,
        files,
        added_at: added_at(&dest),
    })
}

/// The stored images as the running brain knows them: a scan of the
/// folder, each version verified once when first seen.
pub struct NodeImageStore {
    root: PathBuf,
    cache: Mutex<BTreeMap<String, NodeImage>>,
    /// Folders that failed verification (warned about once).
    bad: Mutex<BTreeSet<String>>,
}

impl NodeImageStore {
    pub fn new(data_dir: &Path) -> NodeImageStore {
        NodeImageStore {
            root: data_dir.join(DIR),
            cache: Mutex::default(),
            bad: Mutex::default(),
        }
    }

    /// `<data dir>/node-images`, which the boot HTTP server serves.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Picks up added and removed folders (blocking: hashes new images).
    /// Returns whether anything changed.
    pub fn rescan(&self) -> bool {
        let mut seen = BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !e.path().is_dir() {
                    continue;
                }
                seen.insert(name);
            }
        }
        let known: BTreeSet<String> = self.lock().keys().cloned().collect();
        let mut changed = false;
        for gone in known.difference(&seen) {
            self.lock().remove(gone);
            changed = true;
        }
        for version in seen.difference(&known) {
            if self.bad.lock().expect("bad lock").contains(version) {
                continue;
            }
            let dir = self.root.join(version);
            let checked = verify(&dir).and_then(|(m, files)| {
                if m.version == *version {
                    Ok((m, files))
                } else {
                    Err(ImageError::WrongFolder {
                        dir: dir.clone(),
                        expected: version.clone(),
                        found: m.version,
                    })
                }
            });
            match checked {
                Ok((m, files)) => {
                    tracing::info!(%version, "node image found");
                    self.lock().insert(
                        version.clone(),
                        NodeImage {
                            version: version.clone(),
                            kernel_version: m.kernel_version,
                            files,
                            added_at: added_at(&dir),
                        },
                    );
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(%version, error = %bigv_pxe::ErrorChain(&e), "node image folder ignored");
                    self.bad.lock().expect("bad lock").insert(version.clone());
                }
            }
        }
        changed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NodeImage>> {
        self.cache.lock().expect("node image cache lock")
    }

    /// Oldest first.
    pub fn list(&self) -> Vec<NodeImage> {
        let mut v: Vec<NodeImage> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| (a.added_at, &a.version).cmp(&(b.added_at, &b.version)));
        v
    }

    pub fn get(&self, version: &str) -> Option<NodeImage> {
        self.lock().get(version).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image folder with the three files and a manifest vouching for them.
    pub fn make_image(dir: &Path, version: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let mut files = serde_json::Map::new();
        for (name, data) in [
            ("vmlinuz", &b"kernel"[..]),
            ("initrd", b"base"),
            ("initrd-head", b"qemu"),
        ] {
            std::fs::write(dir.join(name), data).unwrap();
            files.insert(
                name.into(),
                serde_json::json!({"sha256": hex::encode(Sha256::digest(data)), "size": data.len()}),
            );
        }
        let m =
            serde_json::json!({"version": version, "kernel_version": "6.1.0-test", "files": files});
        std::fs::write(dir.join(MANIFEST), m.to_string()).unwrap();
    }

    #[test]
    fn a_good_image_is_stored_and_found() {
        let (src, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        make_image(src.path(), "v1");
        let added = add(data.path(), src.path()).unwrap();
        assert_eq!(added.version, "v1");
        assert_eq!(added.files["initrd"].size, 4);
        let stored = data.path().join(DIR).join("v1");
        assert_eq!(std::fs::read(stored.join("vmlinuz")).unwrap(), b"kernel");
        let store = NodeImageStore::new(data.path());
        assert!(store.rescan());
        assert_eq!(store.get("v1").unwrap().files, added.files);
        assert_eq!(
            store.get("v1").unwrap().kernel_version.as_deref(),
            Some("6.1.0-test")
        );
        assert!(!store.rescan(), "nothing new");
        // Adding the same version again is refused.
        assert!(matches!(
            add(data.path(), src.path()),
            Err(ImageError::Exists { .. })
        ));
    }

    #[test]
    fn bad_or_incomplete_images_are_refused_and_leave_nothing() {
        let data = tempfile::tempdir().unwrap();
        type Break = fn(&Path);
        let cases: Vec<(Break, &str)> = vec![
            (
                |d| std::fs::write(d.join("initrd"), b"evil").unwrap(),
                "has sha256",
            ),
            (
                |d| std::fs::remove_file(d.join("initrd-head")).unwrap(),
                "initrd-head is missing",
            ),
            (
                |d| std::fs::remove_file(d.join(MANIFEST)).unwrap(),
                "manifest.json is missing",
            ),
            (
                |d| {
                    let m = std::fs::read_to_string(d.join(MANIFEST)).unwrap();
                    let mut v: serde_json::Value = serde_json::from_str(&m).unwrap();
                    v["files"].as_object_mut().unwrap().remove("vmlinuz");
                    std::fs::write(d.join(MANIFEST), v.to_string()).unwrap();
                },
                "does not list vmlinuz",
            ),
            (
                |d| {
                    let m = std::fs::read_to_string(d.join(MANIFEST)).unwrap();
                    let mut v: serde_json::Value = serde_json::from_str(&m).unwrap();
                    v["files"]["initrd"]["size"] = 5.into();
                    std::fs::write(d.join(MANIFEST), v.to_string()).unwrap();
                },
                "the manifest says 5",
            ),
            (
                |d| std::fs::write(d.join(MANIFEST), b"{").unwrap(),
                "bad manifest",
            ),
        ];
        for (i, (breaks, says)) in cases.into_iter().enumerate() {
            let src = tempfile::tempdir().unwrap();
            make_image(src.path(), &format!("v{i}"));
            breaks(src.path());
            let e = add(data.path(), src.path()).unwrap_err();
            let text = bigv_pxe::ErrorChain(&e).to_string();
            assert!(text.contains(says), "case {i}: {text:?} lacks {says:?}");
        }
        let store = NodeImageStore::new(data.path());
        store.rescan();
        assert!(store.list().is_empty());
        let left: Vec<_> = std::fs::read_dir(data.path().join(DIR))
            .map(|d| d.collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "leftovers: {left:?}");
    }

    #[test]
    fn a_folder_tampered_with_after_adding_is_not_served() {
        let (src, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        make_image(src.path(), "v1");
        add(data.path(), src.path()).unwrap();
        std::fs::write(data.path().join(DIR).join("v1").join("vmlinuz"), b"evil").unwrap();
        let store = NodeImageStore::new(data.path());
        store.rescan();
        assert!(store.get("v1").is_none());
    }
}
