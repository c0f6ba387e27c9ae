//! `bigv-image build --out DIR [--version V]`: builds the node image
//! (image/README.md).

use std::path::PathBuf;

use anyhow::Context;
use bigv_image::{Inputs, Kernel, Recipe};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bigv-image", version, about = "Builds BigV's node image")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes vmlinuz, initrd, initrd-head and manifest.json to --out.
    Build {
        #[arg(long)]
        out: PathBuf,
        /// The image version (what the brain stores it under).
        #[arg(long, env = "BIGV_IMAGE_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
        /// The recipe; default image/image.toml in this workspace.
        #[arg(long)]
        recipe: Option<PathBuf>,
        /// A kernel folder as tools/fetch-kernel.sh makes; default: run it.
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// A folder with bigv-init and the agents already built static;
        /// default: build them.
        #[arg(long)]
        binaries: Option<PathBuf>,
        /// Target dir for the static build; default
        /// $CARGO_TARGET_DIR/static (or target/static).
        #[arg(long)]
        static_target_dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let Cmd::Build {
        out,
        version,
        recipe,
        kernel,
        binaries,
        static_target_dir,
    } = Cli::parse().command;
    let root = bigv_image::workspace_root();
    let recipe_path = recipe.unwrap_or_else(|| root.join("image/image.toml"));
    let recipe = Recipe::load(&recipe_path)?;
    let kernel_dir = match kernel {
        Some(k) => k,
        None => bigv_image::fetch_kernel()?,
    };
    let kernel = Kernel::open(&kernel_dir)?;
    let binaries = match binaries {
        Some(b) => b,
        None => {
            let target = static_target_dir.unwrap_or_else(|| {
                std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| root.join("target"))
                    .join("static")
            });
            bigv_image::build_static(&recipe, &target)?
        }
    };
    let version_ok = !version.is_empty()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    anyhow::ensure!(
        version_ok,
        "--version {version:?}: letters, digits, '.', '_', '+', '-' only"
    );
    let inputs = Inputs {
        version,
        kernel,
        binaries,
    };
    let built = bigv_image::build(&recipe, &inputs, &out)
        .with_context(|| format!("building the image into {}", out.display()))?;
    let m = &built.manifest;
    println!(
        "image {} (kernel {}, {}) in {}",
        m.version,
        m.kernel.version,
        m.kernel.package,
        out.display()
    );
    for (name, a) in &m.files {
        println!(
            "  {name:<12} {:>10} bytes  {:>6.2} MiB  sha256 {}",
            a.size,
            a.size as f64 / (1024.0 * 1024.0),
            a.sha256
        );
    }
    println!(
        "  modules: {} base, {} head; agents: {}",
        m.modules.get("base").map_or(0, Vec::len),
        m.modules.get("head").map_or(0, Vec::len),
        m.agents.join(", ")
    );
    Ok(())
}
