//! Storage pools: a directory per pool on a mounted filesystem, each of
//! one grade (sata, ssd, archive…). A disc is `<pool>/<id>.raw`, a sparse
//! file created without preallocation, with a small `<id>.json` beside it
//! recording the last order applied (so a restarted agent serves its
//! discs again at once, before the brain reconnects) and the last template
//! copy finished (so a restart never re-images a disc).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bigv_spine::resource::{DiscSpec, PoolFacts};
use serde::{Deserialize, Serialize};

use crate::nbd::Export;

pub const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's name, as in `storage_pool` (e.g. `sata1`).
    pub name: String,
    /// The grade discs in it are sold as (`disc.GRADE.ID`).
    pub grade: String,
    /// The directory holding its discs.
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool {pool:?}: directory {path}")]
    Directory {
        pool: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unreadable disc record")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("template {image:?}: no such image {path}")]
    NoImage { image: String, path: PathBuf },
    #[error("template {image:?}: image is {image_size} bytes, larger than the disc ({disc_size})")]
    ImageTooBig {
        image: String,
        image_size: u64,
        disc_size: u64,
    },
    #[error("template {image:?}: an image name is letters, digits, '.', '-' or '_'")]
    BadImageName { image: String },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PoolError {
    let path = path.to_owned();
    move |source| PoolError::Io { op, path, source }
}

/// What `<id>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscRecord {
    /// `disc.GRADE.ID`.
    pub name: String,
    pub spec: DiscSpec,
}

#[derive(Debug, Clone)]
pub struct Pools {
    pools: BTreeMap<String, PoolConfig>,
}

impl Pools {
    /// Checks every pool directory exists (creating it if missing).
    pub fn open(configs: Vec<PoolConfig>) -> Result<Pools, PoolError> {
        let mut pools = BTreeMap::new();
        for c in configs {
            std::fs::create_dir_all(&c.path).map_err(|source| PoolError::Directory {
                pool: c.name.clone(),
                path: c.path.clone(),
                source,
            })?;
            pools.insert(c.name.clone(), c);
        }
        Ok(Pools { pools })
    }

    pub fn get(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }

    pub fn disc_path(&self, pool: &str, id: &str) -> Option<PathBuf> {
        self.get(pool).map(|p| p.path.join(format!("{id}.raw")))
    }

    /// Every disc record in every pool: (pool name, record).
    pub fn scan(&self) -> Result<Vec<(String, DiscRecord)>, PoolError> {
        let mut out = vec![];
        for (name, pool) in &self.pools {
            let entries = std::fs::read_dir(&pool.path).map_err(io("listing", &pool.path))?;
            for entry in entries {
                let path = entry.map_err(io("listing", &pool.path))?.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let text = std::fs::read(&path).map_err(io("reading", &path))?;
                    let record = serde_json::from_slice(&text)
                        .map_err(|source| PoolError::Record { path, source })?;
                    out.push((name.clone(), record));
                }
            }
        }
        Ok(out)
    }

    /// Space per pool from statvfs, and the sum of disc sizes in each.
    pub fn facts(&self, disc_sizes: &[(String, u64)]) -> BTreeMap<String, PoolFacts> {
        self.pools
            .iter()
            .map(|(name, pool)| {
                let (size, free) = match nix::sys::statvfs::statvfs(&pool.path) {
                    Ok(s) => {
                        let frsize = s.fragment_size();
                        (
                            s.blocks() * frsize / MIB,
                            s.blocks_available() * frsize / MIB,
                        )
                    }
                    Err(e) => {
                        tracing::warn!(pool = name, error = %e, "statvfs failed");
                        (0, 0)
                    }
                };
                let allocated = disc_sizes
                    .iter()
                    .filter(|(p, _)| p == name)
                    .map(|(_, s)| *s)
                    .sum();
                let facts = PoolFacts {
                    grade: pool.grade.clone(),
                    size,
                    free,
                    allocated,
                };
                (name.clone(), facts)
            })
            .collect()
    }
}

/// Creates a sparse disc of `size` bytes; fails if it exists.
pub fn create_disc(path: &Path, size: u64) -> Result<(), PoolError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("creating", path))?;
    file.set_len(size).map_err(io("sizing", path))?;
    file.sync_all().map_err(io("syncing", path))?;
    sync_parent(path)
}

/// Writes the record atomically (temp file, fsync, rename, fsync dir).
pub fn write_record(disc_path: &Path, record: &DiscRecord) -> Result<(), PoolError> {
    let path = disc_path.with_extension("json");
    let tmp = disc_path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(record).expect("a disc record serialises");
    let mut f = File::create(&tmp).map_err(io("writing", &tmp))?;
    f.write_all(&text).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
    sync_parent(&path)
}

/// Deletes a disc and its record (either may already be gone).
pub fn remove_disc(disc_path: &Path) -> Result<(), PoolError> {
    for path in [disc_path.to_owned(), disc_path.with_extension("json")] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &path)(e)),
        }
    }
    sync_parent(disc_path)
}

fn sync_parent(path: &Path) -> Result<(), PoolError> {
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing directory", dir))?;
    }
    Ok(())
}

/// Where template `image` lives, refusing names that could escape.
pub fn image_path(images: &Path, image: &str) -> Result<PathBuf, PoolError> {
    let ok = !image.is_empty()
        && !image.starts_with('.')
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !ok {
        return Err(PoolError::BadImageName {
            image: image.into(),
        });
    }
    Ok(images.join(format!("{image}.raw")))
}

/// Overwrites the whole disc with the image, preserving sparseness: the
/// disc is emptied (one hole), then only the image's allocated extents
/// are copied. Returns the bytes copied.
pub fn copy_template(export: &Export, images: &Path, image: &str) -> Result<u64, PoolError> {
    let src_path = image_path(images, image)?;
    let src = Export::open(image, &src_path, true).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PoolError::NoImage {
            image: image.into(),
            path: src_path.clone(),
        },
        _ => io("opening", &src_path)(e),
    })?;
    let disc_size = export.size();
    if src.size() > disc_size {
        return Err(PoolError::ImageTooBig {
            image: image.into(),
            image_size: src.size(),
            disc_size,
        });
    }
    let dst = export.path();
    export
        .write_zeroes(0, disc_size, false, false)
        .map_err(|e| io("emptying", dst)(std::io::Error::other(e)))?;
    let ranges = src
        .data_ranges(0, src.size())
        .map_err(io("mapping", &src_path))?;
    let mut buf = vec![0u8; 4 << 20];
    let mut copied = 0;
    for (start, len) in ranges {
        let mut off = start;
        while off < start + len {
            let n = (start + len - off).min(buf.len() as u64) as usize;
            src.file()
                .read_exact_at(&mut buf[..n], off)
                .map_err(io("reading", &src_path))?;
            export
                .file()
                .write_all_at(&buf[..n], off)
                .map_err(io("writing", dst))?;
            off += n as u64;
            copied += n as u64;
        }
    }
    export
        .flush()
        .map_err(|e| io("syncing", dst)(std::io::Error::other(e)))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_copy_is_sparse_and_overwrites_everything() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let img = images.join("debian.raw");
        let f = File::create(&img).unwrap();
        f.set_len(8 * MIB).unwrap();
        f.write_all_at(&[7u8; 65536], 3 * MIB).unwrap();

        let disc = dir.path().join("1.raw");
        create_disc(&disc, 16 * MIB).unwrap();
        let export = Export::open("d", &disc, false).unwrap();
        export.write(10 * MIB, &[9u8; 4096], false).unwrap();
        let copied = copy_template(&export, &images, "debian").unwrap();
        assert_eq!(copied, 65536);
        let mut buf = vec![0u8; 65536];
        export.read(3 * MIB, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 7));
        export.read(10 * MIB, &mut buf[..4096]).unwrap();
        assert!(buf[..4096].iter().all(|b| *b == 0), "old data is gone");
        assert_eq!(export.allocated_bytes().unwrap(), 65536);

        let e = copy_template(&export, &images, "../etc/passwd").unwrap_err();
        assert!(matches!(e, PoolError::BadImageName { .. }), "{e}");
        let e = copy_template(&export, &images, "nope").unwrap_err();
        assert!(e.to_string().contains("no such image"), "{e}");
        f.set_len(32 * MIB).unwrap();
        let e = copy_template(&export, &images, "debian").unwrap_err();
        assert!(e.to_string().contains("larger than the disc"), "{e}");
    }

    #[test]
    fn records_scan_and_facts() {
        let dir = tempfile::tempdir().unwrap();
        let pools = Pools::open(vec![PoolConfig {
            name: "sata1".into(),
            grade: "sata".into(),
            path: dir.path().join("sata1"),
        }])
        .unwrap();
        let path = pools.disc_path("sata1", "42").unwrap();
        create_disc(&path, 100 * MIB).unwrap();
        assert!(create_disc(&path, MIB).is_err(), "never clobbers a disc");
        let record = DiscRecord {
            name: "disc.sata.42".into(),
            spec: DiscSpec {
                size: 100,
                storage_pool: "sata1".into(),
                ..Default::default()
            },
        };
        write_record(&path, &record).unwrap();
        let found = pools.scan().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.name, "disc.sata.42");
        let facts = pools.facts(&[("sata1".into(), 100)]);
        let f = &facts["sata1"];
        assert_eq!((f.grade.as_str(), f.allocated), ("sata", 100));
        assert!(f.size > 0 && f.free <= f.size);
        remove_disc(&path).unwrap();
        assert!(pools.scan().unwrap().is_empty());
        assert!(!path.exists());
    }
}
