//! `bigv-test-guest-image --init INIT --kernel DIR --out disc.raw`: builds
//! the test guest's bootable disc image. `qemu-tests/guest/build.sh` does
//! the whole job (static init, kernel, image).

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Build the BigV test guest's bootable raw disc image")]
struct Cli {
    /// The static /init binary (bigv-test-guest-init).
    #[arg(long)]
    init: PathBuf,
    /// The directory tools/fetch-kernel.sh prints.
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Image size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    bigv_test_guest::image::build(&bigv_test_guest::image::ImageConfig {
        init: cli.init,
        kernel_dir: cli.kernel,
        out: cli.out.clone(),
        size: cli.size_mib << 20,
    })?;
    println!("{}", cli.out.display());
    Ok(())
}
