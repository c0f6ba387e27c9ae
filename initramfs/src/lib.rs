//! Reproducible initramfs archives: a newc ("070701") cpio writer plus a
//! gzip wrapper with a fixed header.
//!
//! The same entries always give the same bytes, whatever order they were
//! added in and whatever the host's clock, owners or inode numbers say:
//!
//! - entries are sorted by path, component by component, so every directory
//!   comes before its contents (the kernel's unpacker creates files with
//!   `open(O_CREAT)` and needs the parent to exist);
//! - missing parent directories are added (mode 0755);
//! - inode numbers are assigned 1, 2, 3, … in that order;
//! - owner and group are 0, every mtime is the same ([`Options::mtime`],
//!   0 or `SOURCE_DATE_EPOCH`);
//! - regular files have `nlink` 1: the kernel treats a regular file with
//!   `nlink >= 2` as a hard link candidate and matches it against earlier
//!   entries by inode number, which we never want;
//! - the gzip member has mtime 0, no file name and OS byte 255 ("unknown").
//!
//! Supported entry types are directories, regular files and symlinks; device
//! nodes are not needed (PID 1 mounts devtmpfs).
//!
//! Several archives may be concatenated (the kernel unpacks each in turn),
//! which is how a node gets a base `initrd` plus the head's extras.
//!
//! ```
//! use bigv_initramfs::{Archive, Options};
//! let mut a = Archive::new();
//! a.file("init", 0o755, b"#!/bin/true\n".to_vec()).unwrap();
//! a.symlink("sbin/init", "/init").unwrap();
//! let gz = a.to_gzip(&Options::default()).unwrap();
//! assert_eq!(gz, a.to_gzip(&Options::default()).unwrap());
//! ```

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const TRAILER: &str = "TRAILER!!!";
/// The kernel's `PATH_MAX`; longer names cannot be created.
const MAX_PATH: usize = 4095;

/// What went wrong while building or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Archive paths are relative, `/`-separated, with no empty, `.` or `..`
    /// component and no NUL byte.
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("invalid mode {mode:#o} for {path:?}: only permission bits (0o7777) may be given")]
    InvalidMode { path: String, mode: u32 },
    #[error("invalid symlink target {target:?} for {path:?}: must be non-empty without NUL")]
    InvalidSymlinkTarget { path: String, target: String },
    #[error("{path:?} is already in the archive")]
    Duplicate { path: String },
    #[error("cannot add {path:?}: its parent {parent:?} is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("cannot replace directory {path:?}, which has contents, by a non-directory")]
    DirectoryNotEmpty { path: String },
    #[error("{path:?} is {size} bytes; newc limits a file to 4 GiB - 1")]
    FileTooLarge { path: String, size: u64 },
    #[error("mtime {value} does not fit newc's 32-bit field")]
    MtimeOutOfRange { value: u64 },
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds")]
    BadSourceDateEpoch { value: String },
    #[error("host path {path:?} is not UTF-8")]
    NonUtf8HostPath { path: PathBuf },
    #[error("host path {path:?} is neither a regular file, a directory nor a symlink")]
    UnsupportedFileType { path: PathBuf },
    #[error("reading {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the archive")]
    Write(#[source] io::Error),
}

/// How an archive is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The mtime of every entry (seconds since the epoch).
    pub mtime: u32,
    /// gzip level, 0–9. Part of the reproducibility contract: the same level
    /// (and the same flate2/miniz_oxide version) gives the same bytes.
    pub gzip_level: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mtime: 0,
            gzip_level: 9,
        }
    }
}

impl Options {
    /// Defaults, with `mtime` taken from `SOURCE_DATE_EPOCH` when it is set
    /// (<https://reproducible-builds.org/specs/source-date-epoch/>).
    pub fn from_env() -> Result<Options, Error> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => Options::with_source_date_epoch(&v),
            Err(_) => Ok(Options::default()),
        }
    }

    /// Defaults with `mtime` parsed from a `SOURCE_DATE_EPOCH` value.
    pub fn with_source_date_epoch(value: &str) -> Result<Options, Error> {
        let secs: u64 = value
            .trim()
            .parse()
            .map_err(|_| Error::BadSourceDateEpoch {
                value: value.to_string(),
            })?;
        let mtime = u32::try_from(secs).map_err(|_| Error::MtimeOutOfRange { value: secs })?;
        Ok(Options {
            mtime,
            ..Options::default()
        })
    }
}

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its permission bits.
    Dir { mode: u32 },
    /// A regular file with its permission bits and contents.
    File { mode: u32, data: Vec<u8> },
    /// A symbolic link (mode 0777) pointing at `target`.
    Symlink { target: String },
}

/// An in-memory file tree that serialises to newc cpio reproducibly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    /// Keyed by path components: `Vec<String>` ordering puts a directory
    /// directly before its contents (`a`, `a/b`, `a.b`).
    entries: BTreeMap<Vec<String>, Entry>,
}

fn split_path(path: &str) -> Result<Vec<String>, Error> {
    let bad = |reason| Error::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.len() > MAX_PATH {
        return Err(bad("longer than PATH_MAX"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute; archive paths are relative to the root"));
    }
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if path == TRAILER {
        return Err(bad("reserved for the newc trailer"));
    }
    path.split('/')
        .map(|c| match c {
            "" => Err(bad("empty component")),
            "." | ".." => Err(bad("`.` or `..` component")),
            c => Ok(c.to_string()),
        })
        .collect()
}

fn check_mode(path: &str, mode: u32) -> Result<u32, Error> {
    if mode & !0o7777 != 0 {
        return Err(Error::InvalidMode {
            path: path.to_string(),
            mode,
        });
    }
    Ok(mode)
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds a directory, or sets the mode of one already there.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Archive, Error> {
        let mode = check_mode(path, mode)?;
        self.insert(path, Entry::Dir { mode })
    }

    /// Adds a regular file.
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Archive, Error> {
        let mode = check_mode(path, mode)?;
        let data = data.into();
        if u32::try_from(data.len()).is_err() {
            return Err(Error::FileTooLarge {
                path: path.to_string(),
                size: data.len() as u64,
            });
        }
        self.insert(path, Entry::File { mode, data })
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Archive, Error> {
        if target.is_empty() || target.contains('\0') || target.len() > MAX_PATH {
            return Err(Error::InvalidSymlinkTarget {
                path: path.to_string(),
                target: target.to_string(),
            });
        }
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<&mut Archive, Error> {
        let key = split_path(path)?;
        // Parents: must be directories; create missing ones.
        for n in 1..key.len() {
            let parent = &key[..n];
            match self.entries.get(parent) {
                Some(Entry::Dir { .. }) => {}
                Some(_) => {
                    return Err(Error::ParentNotDirectory {
                        path: path.to_string(),
                        parent: parent.join("/"),
                    });
                }
                None => {
                    self.entries
                        .insert(parent.to_vec(), Entry::Dir { mode: 0o755 });
                }
            }
        }
        match (self.entries.get(&key), &entry) {
            (None, _) => {}
            // Re-adding a directory (e.g. merging two trees) sets its mode.
            (Some(Entry::Dir { .. }), Entry::Dir { .. }) => {}
            (Some(Entry::Dir { .. }), _) if self.has_children(&key) => {
                return Err(Error::DirectoryNotEmpty {
                    path: path.to_string(),
                });
            }
            (Some(_), _) => {
                return Err(Error::Duplicate {
                    path: path.to_string(),
                });
            }
        }
        self.entries.insert(key, entry);
        Ok(self)
    }

    fn has_children(&self, key: &[String]) -> bool {
        self.entries
            .range::<[String], _>((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| k.starts_with(key))
    }

    /// Copies a host directory tree under `dest` (`""` for the archive
    /// root). Regular files, directories and symlinks are taken with their
    /// permission bits; owners, times and inode numbers are not. Anything
    /// else (devices, sockets, fifos) is refused.
    pub fn add_tree(&mut self, host_dir: &Path, dest: &str) -> Result<&mut Archive, Error> {
        let mut names: Vec<_> = std::fs::read_dir(host_dir)
            .map_err(|source| Error::Read {
                path: host_dir.to_path_buf(),
                source,
            })?
            .map(|e| {
                e.map(|e| e.file_name()).map_err(|source| Error::Read {
                    path: host_dir.to_path_buf(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let host = host_dir.join(&name);
            let name = name
                .to_str()
                .ok_or_else(|| Error::NonUtf8HostPath { path: host.clone() })?;
            let path = if dest.is_empty() {
                name.to_string()
            } else {
                format!("{dest}/{name}")
            };
            let read_err = |source| Error::Read {
                path: host.clone(),
                source,
            };
            let meta = std::fs::symlink_metadata(&host).map_err(read_err)?;
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.dir(&path, mode)?;
                self.add_tree(&host, &path)?;
            } else if ft.is_file() {
                let data = std::fs::read(&host).map_err(read_err)?;
                self.file(&path, mode, data)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&host).map_err(read_err)?;
                let target = target
                    .to_str()
                    .ok_or_else(|| Error::NonUtf8HostPath { path: host.clone() })?;
                self.symlink(&path, target)?;
            } else {
                return Err(Error::UnsupportedFileType { path: host });
            }
        }
        Ok(self)
    }

    /// Looks an entry up by archive path.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        let key = split_path(path).ok()?;
        self.entries.get(&key)
    }

    /// Every entry in archive order (directories before their contents).
    pub fn entries(&self) -> impl Iterator<Item = (String, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.join("/"), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the archive as newc cpio, trailer included.
    pub fn write_newc<W: Write>(&self, mut w: W, opts: &Options) -> Result<W, Error> {
        let mut ino: u32 = 0;
        for (path, entry) in self.entries() {
            ino += 1;
            let (mode, nlink, data): (u32, u32, &[u8]) = match entry {
                Entry::Dir { mode } => (S_IFDIR | mode, 2, &[]),
                Entry::File { mode, data } => (S_IFREG | mode, 1, data),
                Entry::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes()),
            };
            write_entry(&mut w, ino, mode, nlink, opts.mtime, &path, data).map_err(Error::Write)?;
        }
        write_entry(&mut w, 0, 0, 1, 0, TRAILER, &[]).map_err(Error::Write)?;
        Ok(w)
    }

    /// The newc cpio bytes.
    pub fn to_newc(&self, opts: &Options) -> Result<Vec<u8>, Error> {
        self.write_newc(Vec::new(), opts)
    }

    /// The gzip-compressed newc cpio bytes, with a fixed gzip header.
    pub fn to_gzip(&self, opts: &Options) -> Result<Vec<u8>, Error> {
        let gz = GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(Vec::new(), Compression::new(opts.gzip_level.min(9)));
        let gz = self.write_newc(gz, opts)?;
        gz.finish().map_err(Error::Write)
    }
}

fn pad4<W: Write>(w: &mut W, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])
}

fn write_entry<W: Write>(
    w: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    // Lengths were checked when entries were added.
    let filesize = u32::try_from(data.len()).map_err(io::Error::other)?;
    let namesize = u32::try_from(name.len() + 1).map_err(io::Error::other)?;
    let header = format!(
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{filesize:08X}\
         {devmajor:08X}{devminor:08X}{rdevmajor:08X}{rdevminor:08X}{namesize:08X}{check:08X}",
        uid = 0,
        gid = 0,
        devmajor = 0,
        devminor = 0,
        rdevmajor = 0,
        rdevminor = 0,
        check = 0,
    );
    debug_assert_eq!(header.len(), 110);
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, header.len() + name.len() + 1)?;
    w.write_all(data)?;
    pad4(w, data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes_of_a_tiny_archive() {
        let mut a = Archive::new();
        a.file("d/f", 0o644, b"hi".to_vec()).unwrap();
        let bytes = a.to_newc(&Options::default()).unwrap();
        // Fields: magic ino mode uid gid nlink mtime filesize devmajor
        // devminor rdevmajor rdevminor namesize check, then name, NUL, pad.
        let expected: &[u8] = concat!(
            // "d": dir 0755, nlink 2; 110 + 2 bytes of name = 112, no pad.
            "070701",
            "00000001",
            "000041ED",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "d\0",
            // "d/f": file 0644, nlink 1, 2 bytes; 110 + 4 = 114 → 2 pad; data 2 → 2 pad.
            "070701",
            "00000002",
            "000081A4",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000004",
            "00000000",
            "d/f\0",
            "\0\0",
            "hi",
            "\0\0",
            // trailer: 110 + 11 = 121 → 3 pad.
            "070701",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "0000000B",
            "00000000",
            "TRAILER!!!\0",
            "\0\0\0",
        )
        .as_bytes();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn paths_are_validated() {
        let mut a = Archive::new();
        for bad in ["", "/init", "a//b", "a/", "./a", "a/../b", "a\0b", TRAILER] {
            assert!(
                matches!(a.file(bad, 0o644, vec![]), Err(Error::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            a.file("x", 0o100644, vec![]),
            Err(Error::InvalidMode { .. })
        ));
        assert!(matches!(
            a.symlink("l", ""),
            Err(Error::InvalidSymlinkTarget { .. })
        ));
    }

    #[test]
    fn conflicts_are_refused_and_parents_created() {
        let mut a = Archive::new();
        a.file("bin/init", 0o755, vec![1]).unwrap();
        assert_eq!(a.get("bin"), Some(&Entry::Dir { mode: 0o755 }));
        assert!(matches!(
            a.file("bin/init", 0o755, vec![2]),
            Err(Error::Duplicate { .. })
        ));
        assert!(matches!(
            a.file("bin/init/x", 0o755, vec![]),
            Err(Error::ParentNotDirectory { .. })
        ));
        assert!(matches!(
            a.symlink("bin", "/usr/bin"),
            Err(Error::DirectoryNotEmpty { .. })
        ));
        // Re-adding a directory sets its mode.
        a.dir("bin", 0o700).unwrap();
        assert_eq!(a.get("bin"), Some(&Entry::Dir { mode: 0o700 }));
        // Even an empty directory is not silently replaced.
        a.dir("e", 0o755).unwrap();
        assert!(matches!(
            a.symlink("e", "bin"),
            Err(Error::Duplicate { .. })
        ));
    }

    #[test]
    fn order_puts_directories_before_contents() {
        let mut a = Archive::new();
        a.file("a.b", 0o644, vec![]).unwrap();
        a.file("a/b", 0o644, vec![]).unwrap();
        a.file("a-", 0o644, vec![]).unwrap();
        let names: Vec<_> = a.entries().map(|(p, _)| p).collect();
        assert_eq!(names, ["a", "a/b", "a-", "a.b"]);
    }

    #[test]
    fn source_date_epoch() {
        assert_eq!(
            Options::with_source_date_epoch("1700000000").unwrap().mtime,
            1_700_000_000
        );
        assert!(matches!(
            Options::with_source_date_epoch("yesterday"),
            Err(Error::BadSourceDateEpoch { .. })
        ));
        assert!(matches!(
            Options::with_source_date_epoch("99999999999"),
            Err(Error::MtimeOutOfRange { .. })
        ));
    }
}
