//! The node image (`bigv-image`'s library, as `bigv-image build` uses it),
//! built once per set of inputs: its version is a hash of the static
//! binaries, the recipe and the kernel, and a folder already holding that
//! version is reused.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Builds (or finds) the image; returns its folder and version.
pub fn build_cached() -> (PathBuf, String) {
    build_variant(None)
}

/// The same image under another version, `<version>-next`, as a rolling
/// upgrade's target: the same binaries, a new version string (which init
/// reports on the spine, so the brain can tell the two apart).
pub fn build_next() -> (PathBuf, String) {
    build_suffixed("next")
}

/// The same image under version `<version>-<suffix>` (`[A-Za-z0-9._-]`):
/// a further upgrade target after [`build_next`], e.g. `v3`.
pub fn build_suffixed(suffix: &str) -> (PathBuf, String) {
    build_variant(Some(suffix))
}

fn build_variant(suffix: Option<&str>) -> (PathBuf, String) {
    let root = bigv_image::workspace_root();
    let recipe_path = root.join("image/image.toml");
    let recipe = bigv_image::Recipe::load(&recipe_path).expect("image/image.toml");
    let kernel_dir = bigv_image::fetch_kernel().expect("tools/fetch-kernel.sh");
    let kernel = bigv_image::Kernel::open(&kernel_dir).expect("the kernel folder");
    let target = crate::target_dir().join("static");
    // Cargo decides whether anything changed; this is quick when nothing did.
    let binaries = bigv_image::build_static(&recipe, &target).expect("static build");

    let mut h = Sha256::new();
    hash_file(&mut h, &recipe_path);
    hash_file(&mut h, &kernel_dir.join("vmlinuz"));
    h.update(kernel.package.as_bytes());
    hash_file(&mut h, &binaries.join("bigv-init"));
    for (_, bin) in recipe.agents().expect("the recipe's agents") {
        hash_file(&mut h, &binaries.join(bin));
    }
    let base = format!("qt-{}", &hex::encode(h.finalize())[..12]);
    let version = match suffix {
        Some(s) => format!("{base}-{s}"),
        None => base.clone(),
    };
    let out = crate::target_dir().join("qemu-tests").join(&version);
    if out.join("manifest.json").exists() {
        eprintln!("node image {version}: reusing {}", out.display());
        return (out, version);
    }
    // Older builds are stale now: keep only this build's variants (disc space).
    if let Ok(entries) = std::fs::read_dir(crate::target_dir().join("qemu-tests")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("qt-") && !name.starts_with(&base) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let inputs = bigv_image::Inputs {
        version: version.clone(),
        kernel,
        binaries,
    };
    let tmp = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    bigv_image::build(&recipe, &inputs, &tmp).expect("image build");
    std::fs::rename(&tmp, &out).expect("moving the image into place");
    eprintln!("node image {version}: built in {}", out.display());
    (out, version)
}

fn hash_file(h: &mut Sha256, path: &Path) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    h.update((data.len() as u64).to_le_bytes());
    h.update(&data);
}
