//! The node image builder (image/README.md, docs/boot.md "Image").
//!
//! Inputs: a recipe (`image/image.toml`), Debian's kernel as unpacked by
//! `tools/fetch-kernel.sh`, our static binaries, and (for heads) qemu and
//! its firmware from the host. Outputs in one folder: `vmlinuz`, `initrd`,
//! `initrd-head` and `manifest.json`. The same inputs give the same bytes:
//! archives come from `bigv-initramfs` (sorted, fixed owners and mtimes,
//! gzip with a fixed header) and the manifest is written in a fixed order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use bigv_init::modules::{Module, ModuleIndex};
use bigv_initramfs::{Archive, Options};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Size limits from issue 7: a base initrd everybody downloads, and the
/// head's extras.
pub const BASE_LIMIT: u64 = 16 << 20;
pub const HEAD_LIMIT: u64 = 48 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub base: BaseRecipe,
    pub head: HeadRecipe,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRecipe {
    pub modules: Vec<String>,
    /// `crate:binary`.
    pub agents: Vec<String>,
    /// Host programs copied with their `ldd` closure (mke2fs for tails'
    /// blank data discs).
    #[serde(default)]
    pub programs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadRecipe {
    pub modules: Vec<String>,
    pub programs: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
}

impl Recipe {
    pub fn load(path: &Path) -> anyhow::Result<Recipe> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}", path.display()))
    }

    /// The agents as (crate, binary).
    pub fn agents(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.base
            .agents
            .iter()
            .map(|a| match a.split_once(':') {
                Some((c, b)) if !c.is_empty() && !b.is_empty() && !b.contains('/') => {
                    Ok((c.to_owned(), b.to_owned()))
                }
                _ => bail!("base.agents: {a:?} is not crate:binary"),
            })
            .collect()
    }
}

/// The kernel folder `tools/fetch-kernel.sh` prints.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub version: String,
    pub package: String,
}

impl Kernel {
    pub fn open(dir: &Path) -> anyhow::Result<Kernel> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .map(|s| s.trim().to_owned())
                .with_context(|| {
                    format!("reading {}/{f} (run tools/fetch-kernel.sh)", dir.display())
                })
        };
        Ok(Kernel {
            dir: dir.to_owned(),
            version: read("version")?,
            package: read("package")?,
        })
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.version)
    }

    pub fn index(&self) -> anyhow::Result<ModuleIndex> {
        let d = self.modules_dir();
        let read = |f: &str| {
            std::fs::read_to_string(d.join(f))
                .with_context(|| format!("reading {}/{f}", d.display()))
        };
        Ok(ModuleIndex::parse(
            &read("modules.dep")?,
            &read("modules.softdep").unwrap_or_default(),
            &read("modules.alias").unwrap_or_default(),
        )?)
    }
}

/// Everything a build reads besides the recipe.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub version: String,
    pub kernel: Kernel,
    /// Holds `bigv-init` and every agent binary (static).
    pub binaries: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artefact {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub version: String,
    pub kernel: KernelInfo,
    /// In load order.
    pub modules: BTreeMap<String, Vec<String>>,
    pub agents: Vec<String>,
    /// `vmlinuz`, `initrd`, `initrd-head`.
    pub files: BTreeMap<String, Artefact>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelInfo {
    pub version: String,
    pub package: String,
}

fn artefact(bytes: &[u8]) -> Artefact {
    Artefact {
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Adds `modules` (in load order) plus `modules.dep`/`modules.softdep`
/// for `all` (every module the node may have after this archive) and the
/// list file `etc/bigv/modules.d/<list>`.
fn add_modules(
    a: &mut Archive,
    kernel: &Kernel,
    index: &ModuleIndex,
    wanted: &[String],
    modules: &[&Module],
    all: &[&Module],
    list: &str,
) -> anyhow::Result<()> {
    let kdir = kernel.modules_dir();
    let dest = format!("lib/modules/{}", kernel.version);
    for m in modules {
        a.file(
            &format!("{dest}/{}", m.path),
            0o644,
            read(&kdir.join(&m.path))?,
        )?;
    }
    a.file(
        &format!("{dest}/modules.dep"),
        0o644,
        ModuleIndex::dep_file(all).into_bytes(),
    )?;
    a.file(
        &format!("{dest}/modules.softdep"),
        0o644,
        index.softdep_file(all).into_bytes(),
    )?;
    let mut text = String::from("# Loaded by bigv-init at boot, with their dependencies.\n");
    for w in wanted {
        text.push_str(w);
        text.push('\n');
    }
    a.file(
        &format!("etc/bigv/modules.d/{list}"),
        0o644,
        text.into_bytes(),
    )?;
    Ok(())
}

/// The base archive: `/init`, the agents, the base modules, the version.
pub fn base_archive(recipe: &Recipe, inputs: &Inputs) -> anyhow::Result<(Archive, Vec<String>)> {
    let index = inputs.kernel.index()?;
    let order = index.load_order(&recipe.base.modules)?;
    let mut a = Archive::new();
    a.file("init", 0o755, read(&inputs.binaries.join("bigv-init"))?)?;
    for (_, bin) in recipe.agents()? {
        a.file(
            &format!("bin/{bin}"),
            0o755,
            read(&inputs.binaries.join(&bin))?,
        )?;
    }
    let files = host_files(&recipe.base.programs, &[])?;
    add_host_files(&mut a, &files, &recipe.base.programs, &BTreeSet::new())?;
    for d in ["dev", "proc", "sys", "run", "tmp", "var", "etc"] {
        a.dir(d, 0o755)?;
    }
    a.file(
        "etc/bigv/version",
        0o644,
        format!("{}\n", inputs.version).into_bytes(),
    )?;
    add_modules(
        &mut a,
        &inputs.kernel,
        &index,
        &recipe.base.modules,
        &order,
        &order,
        "base",
    )?;
    Ok((a, order.iter().map(|m| m.name.clone()).collect()))
}

/// The shared libraries `ldd` lists for `program`, as absolute paths.
pub fn ldd(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd (from libc-bin)")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x…)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => bail!("ldd {}: {}", program.display(), line.trim()),
            _ => {}
        }
    }
    Ok(libs)
}

/// Host programs with their `ldd` closure, and host files (a shared
/// object's libraries too).
fn host_files(programs: &[PathBuf], plain: &[PathBuf]) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    for p in programs {
        files.insert(p.clone());
        files.extend(ldd(p)?);
    }
    for f in plain {
        files.insert(f.clone());
        if f.extension().is_some_and(|e| e == "so") {
            files.extend(ldd(f)?);
        }
    }
    Ok(files)
}

/// Copies `files` to the same paths, except those in `skip` (already in
/// the base archive, which a head unpacks first).
fn add_host_files(
    a: &mut Archive,
    files: &BTreeSet<PathBuf>,
    programs: &[PathBuf],
    skip: &BTreeSet<PathBuf>,
) -> anyhow::Result<()> {
    for f in files.difference(skip) {
        let rel = f
            .to_str()
            .and_then(|s| s.strip_prefix('/'))
            .with_context(|| format!("{}: not an absolute UTF-8 path", f.display()))?;
        let mode = if programs.contains(f) || rel.contains(".so") {
            0o755
        } else {
            0o644
        };
        a.file(rel, mode, read(f)?)?;
    }
    Ok(())
}

/// The head archive: head modules (with a complete modules.dep that
/// replaces the base one when the kernel unpacks this archive second),
/// qemu, its libraries and firmware.
pub fn head_archive(recipe: &Recipe, inputs: &Inputs) -> anyhow::Result<(Archive, Vec<String>)> {
    let index = inputs.kernel.index()?;
    let base: BTreeSet<String> = index
        .load_order(&recipe.base.modules)?
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let mut all_wanted = recipe.base.modules.clone();
    all_wanted.extend(recipe.head.modules.iter().cloned());
    let all = index.load_order(&all_wanted)?;
    let extra: Vec<&Module> = all
        .iter()
        .copied()
        .filter(|m| !base.contains(&m.name))
        .collect();
    let mut a = Archive::new();
    add_modules(
        &mut a,
        &inputs.kernel,
        &index,
        &recipe.head.modules,
        &extra,
        &all,
        "head",
    )?;
    let base_files = host_files(&recipe.base.programs, &[])?;
    let files = host_files(&recipe.head.programs, &recipe.head.files)?;
    add_host_files(&mut a, &files, &recipe.head.programs, &base_files)?;
    Ok((a, extra.iter().map(|m| m.name.clone()).collect::<Vec<_>>()))
}

/// What [`build`] made.
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest: Manifest,
    pub out: PathBuf,
}

/// Writes `vmlinuz`, `initrd`, `initrd-head` and `manifest.json` to `out`.
pub fn build(recipe: &Recipe, inputs: &Inputs, out: &Path) -> anyhow::Result<Built> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let opts = Options::from_env()?;
    let vmlinuz = read(&inputs.kernel.dir.join("vmlinuz"))?;
    let (base, base_modules) = base_archive(recipe, inputs)?;
    let initrd = base.to_gzip(&opts)?;
    let (head, head_modules) = head_archive(recipe, inputs)?;
    let initrd_head = head.to_gzip(&opts)?;
    if initrd.len() as u64 > BASE_LIMIT {
        bail!(
            "initrd is {} bytes compressed, over the {} MiB budget",
            initrd.len(),
            BASE_LIMIT >> 20
        );
    }
    if initrd_head.len() as u64 > HEAD_LIMIT {
        bail!(
            "initrd-head is {} bytes compressed, over the {} MiB budget",
            initrd_head.len(),
            HEAD_LIMIT >> 20
        );
    }
    let mut files = BTreeMap::new();
    for (name, bytes) in [
        ("vmlinuz", &vmlinuz),
        ("initrd", &initrd),
        ("initrd-head", &initrd_head),
    ] {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        files.insert(name.to_owned(), artefact(bytes));
    }
    let manifest = Manifest {
        version: inputs.version.clone(),
        kernel: KernelInfo {
            version: inputs.kernel.version.clone(),
            package: inputs.kernel.package.clone(),
        },
        modules: BTreeMap::from([
            ("base".to_owned(), base_modules),
            ("head".to_owned(), head_modules),
        ]),
        agents: recipe.agents()?.into_iter().map(|(_, b)| b).collect(),
        files,
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    std::fs::write(out.join("manifest.json"), json).context("writing manifest.json")?;
    Ok(Built {
        manifest,
        out: out.to_owned(),
    })
}

/// The workspace root (this crate lives in `<root>/image`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `tools/fetch-kernel.sh` and returns the folder it prints.
pub fn fetch_kernel() -> anyhow::Result<PathBuf> {
    let script = workspace_root().join("tools/fetch-kernel.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed", script.display());
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Builds `bigv-init` and the agents as static binaries (glibc with
/// crt-static; deps.md §3) into `target_dir`, returning the folder that
/// holds them.
pub fn build_static(recipe: &Recipe, target_dir: &Path) -> anyhow::Result<PathBuf> {
    const TARGET: &str = "x86_64-unknown-linux-gnu";
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(["-p", "bigv-init"])
        .env("CARGO_TARGET_DIR", target_dir)
        // `--target` keeps these flags away from build scripts and proc
        // macros; the getrandom cfg makes it use the syscall, not a
        // /dev/urandom fallback (deps.md, the getrandom trap).
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"",
        );
    for (krate, _) in recipe.agents()? {
        cmd.args(["-p", &krate]);
    }
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("static build failed ({status})");
    }
    Ok(target_dir.join(TARGET).join("release"))
}
