//! The archives we write, checked with Debian's GNU cpio: it must list and
//! extract them to exactly the tree we put in.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use bigv_initramfs::{Archive, Entry, Options};
use proptest::prelude::*;

/// What we compare: path → (kind/mode/contents).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        data: Vec<u8>,
        mtime: i64,
    },
    Symlink {
        target: String,
    },
}

fn expected(a: &Archive, mtime: u32) -> BTreeMap<String, Seen> {
    a.entries()
        .map(|(p, e)| {
            let seen = match e {
                Entry::Dir { mode } => Seen::Dir { mode: *mode },
                Entry::File { mode, data } => Seen::File {
                    mode: *mode,
                    data: data.clone(),
                    mtime: i64::from(mtime),
                },
                Entry::Symlink { target } => Seen::Symlink {
                    target: target.clone(),
                },
            };
            (p, seen)
        })
        .collect()
}

fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Seen>) {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names {
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let host = root.join(&path);
        let meta = std::fs::symlink_metadata(&host).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} owner");
        let seen = if meta.is_dir() {
            walk(root, &path, out);
            Seen::Dir { mode }
        } else if meta.is_file() {
            Seen::File {
                mode,
                data: std::fs::read(&host).unwrap(),
                mtime: meta.mtime(),
            }
        } else {
            Seen::Symlink {
                target: std::fs::read_link(&host)
                    .unwrap()
                    .into_os_string()
                    .into_string()
                    .unwrap(),
            }
        };
        out.insert(path, seen);
    }
}

fn cpio(args: &[&str], dir: &Path, input: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("cpio")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("GNU cpio must be installed (apt-get install cpio; tools/setup-host.sh does it)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Extracts with `cpio -idm` and returns the tree found on disc.
fn extract(bytes: &[u8]) -> BTreeMap<String, Seen> {
    let dir = tempfile::tempdir().unwrap();
    cpio(
        &["-idm", "--quiet", "--no-absolute-filenames"],
        dir.path(),
        bytes,
    );
    let mut out = BTreeMap::new();
    walk(dir.path(), "", &mut out);
    out
}

fn sample() -> Archive {
    let mut a = Archive::new();
    a.file("init", 0o755, b"\x7fELF not really".to_vec())
        .unwrap();
    a.dir("etc", 0o755).unwrap();
    a.file("etc/hostname", 0o644, b"node\n".to_vec()).unwrap();
    a.file("etc/empty", 0o600, Vec::new()).unwrap();
    a.dir("run", 0o755).unwrap();
    a.dir("tmp", 0o1777).unwrap();
    a.symlink("sbin/init", "/init").unwrap();
    a.symlink("lib64", "lib").unwrap();
    a.file("lib/modules/6.1.0/kernel/nbd.ko", 0o644, vec![7u8; 4097])
        .unwrap();
    a.file("setuid", 0o4755, b"x".to_vec()).unwrap();
    a
}

#[test]
fn building_twice_gives_identical_bytes() {
    let opts = Options::default();
    let one = sample();
    // Same tree, other insertion order.
    let mut two = Archive::new();
    two.file("setuid", 0o4755, b"x".to_vec()).unwrap();
    two.file("lib/modules/6.1.0/kernel/nbd.ko", 0o644, vec![7u8; 4097])
        .unwrap();
    two.symlink("lib64", "lib").unwrap();
    two.symlink("sbin/init", "/init").unwrap();
    two.dir("tmp", 0o1777).unwrap();
    two.dir("run", 0o755).unwrap();
    two.file("etc/empty", 0o600, Vec::new()).unwrap();
    two.file("etc/hostname", 0o644, b"node\n".to_vec()).unwrap();
    two.file("init", 0o755, b"\x7fELF not really".to_vec())
        .unwrap();
    assert_eq!(one.to_newc(&opts).unwrap(), two.to_newc(&opts).unwrap());
    let gz1 = one.to_gzip(&opts).unwrap();
    assert_eq!(gz1, two.to_gzip(&opts).unwrap());
    // Fixed gzip header: magic, deflate, no flags (no name), mtime 0, OS 255.
    assert_eq!(&gz1[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&gz1[4..8], &[0, 0, 0, 0]);
    assert_eq!(gz1[9], 255);
    // The mtime option changes the bytes and nothing else.
    let later = Options::with_source_date_epoch("1700000000").unwrap();
    assert_ne!(one.to_newc(&opts).unwrap(), one.to_newc(&later).unwrap());
}

#[test]
fn a_host_tree_gives_identical_bytes_whatever_its_times_and_inodes() {
    let build = |stamp: i64| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/agent"), b"agent").unwrap();
        std::fs::set_permissions(root.join("bin/agent"), PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("bin/agent", root.join("init")).unwrap();
        // Different mtimes and (new files) different inode numbers per build.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(stamp as u64);
        std::fs::File::options()
            .write(true)
            .open(root.join("bin/agent"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        let mut a = Archive::new();
        a.add_tree(root, "").unwrap();
        a.to_gzip(&Options::default()).unwrap()
    };
    assert_eq!(build(1_000_000), build(2_000_000));
}

#[test]
fn gnu_cpio_extracts_exactly_our_tree() {
    let a = sample();
    let opts = Options::with_source_date_epoch("1700000000").unwrap();
    let bytes = a.to_newc(&opts).unwrap();
    assert_eq!(extract(&bytes), expected(&a, opts.mtime));

    // The listing is in our order: every directory before its contents.
    let listing = cpio(&["-t", "--quiet"], Path::new("."), &bytes);
    let names: Vec<&str> = listing.lines().collect();
    let ours: Vec<String> = a.entries().map(|(p, _)| p).collect();
    assert_eq!(names, ours);
    for (i, name) in names.iter().enumerate() {
        if let Some((parent, _)) = name.rsplit_once('/') {
            assert!(names[..i].contains(&parent), "{name} before {parent}");
        }
    }
}

#[test]
fn concatenated_archives_extract_as_one_tree() {
    // The node boots a base initrd plus the head extras; the kernel unpacks
    // both in turn. GNU cpio reads one archive per invocation, so feed each.
    let mut base = Archive::new();
    base.file("init", 0o755, b"init".to_vec()).unwrap();
    let mut extra = Archive::new();
    extra.file("usr/bin/qemu", 0o755, b"qemu".to_vec()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for a in [&base, &extra] {
        let bytes = a.to_newc(&Options::default()).unwrap();
        cpio(&["-idm", "--quiet"], dir.path(), &bytes);
    }
    let mut out = BTreeMap::new();
    walk(dir.path(), "", &mut out);
    assert_eq!(out.len(), 4, "{out:?}");
}

/// An arbitrary small tree: names from a small alphabet so that collisions,
/// prefixes (`a`, `a.b`, `a/b`) and deep paths all occur.
fn arb_archive() -> impl Strategy<Value = Archive> {
    let name = prop::sample::select(vec!["a", "b", "a.b", "a-", "Z", "long_name_0123456789"]);
    let path = prop::collection::vec(name, 1..4).prop_map(|c| c.join("/"));
    let entry = prop_oneof![
        (0u32..0o1000).prop_map(|mode| Entry::Dir { mode: mode | 0o700 }),
        (0u32..0o1000, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(mode, data)| {
            Entry::File {
                mode: mode | 0o600,
                data,
            }
        }),
        "[a-z/]{1,12}".prop_map(|target| Entry::Symlink { target }),
    ];
    prop::collection::vec((path, entry), 0..24).prop_map(|items| {
        let mut a = Archive::new();
        for (path, entry) in items {
            // Conflicting additions are refused by the builder; skip them.
            let _ = match entry {
                Entry::Dir { mode } => a.dir(&path, mode),
                Entry::File { mode, data } => a.file(&path, mode, data),
                Entry::Symlink { target } => a.symlink(&path, &target),
            };
        }
        a
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_trees_round_trip_through_gnu_cpio(a in arb_archive(), mtime in 0u32..2_000_000_000) {
        let opts = Options { mtime, ..Options::default() };
        let bytes = a.to_newc(&opts).unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        let listing = cpio(&["-t", "--quiet"], Path::new("."), &bytes);
        let listed: Vec<&str> = listing.lines().collect();
        let ours: Vec<String> = a.entries().map(|(p, _)| p).collect();
        prop_assert_eq!(listed, ours);
        prop_assert_eq!(extract(&bytes), expected(&a, mtime));
    }
}
