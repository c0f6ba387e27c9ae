//! The builder on a small fake kernel tree and fake binaries (fast tier):
//! the same inputs give byte-identical outputs, the archives hold what the
//! node needs (and no shell), and the manifest describes the artefacts.

use std::io::Read;
use std::path::{Path, PathBuf};

use bigv_image::{Inputs, Kernel, Recipe};
use sha2::{Digest, Sha256};

const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/unused.ko:
";

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A kernel folder shaped like fetch-kernel.sh's, and a binaries folder.
fn fixture(dir: &Path) -> (Kernel, PathBuf) {
    let k = dir.join("kernel");
    let m = k.join("lib/modules/6.1.0-99-amd64");
    for line in DEP.lines() {
        let path = line.split(':').next().unwrap();
        write(&m.join(path), format!("module {path}").as_bytes());
    }
    write(&m.join("modules.dep"), DEP.as_bytes());
    write(
        &m.join("modules.softdep"),
        b"softdep ext4 pre: crypto-crc32c\n",
    );
    write(
        &m.join("modules.alias"),
        b"alias crypto-crc32c crc32c_generic\n",
    );
    write(&k.join("vmlinuz"), b"not really a kernel");
    write(&k.join("version"), b"6.1.0-99-amd64\n");
    write(
        &k.join("package"),
        b"linux-image-6.1.0-99-amd64_6.1.999-1_amd64.deb\n",
    );
    let b = dir.join("bin");
    write(&b.join("bigv-init"), b"\x7fELF init");
    write(&b.join("bigv-tail"), b"\x7fELF tail");
    (Kernel::open(&k).unwrap(), b)
}

fn recipe(dir: &Path) -> Recipe {
    // A dynamically linked host program stands in for qemu, so the ldd
    // closure is exercised for real.
    let fw = dir.join("fw/bios.bin");
    write(&fw, b"firmware");
    let text = format!(
        r#"
        [base]
        modules = ["virtio_net", "ext4"]
        agents = ["bigv-tail:bigv-tail"]
        programs = ["/bin/true"]
        [head]
        modules = ["kvm-amd"]
        programs = ["/bin/false"]
        files = ["{}"]
        "#,
        fw.display()
    );
    let path = dir.join("image.toml");
    write(&path, text.as_bytes());
    Recipe::load(&path).unwrap()
}

/// (path, contents) of every entry in a gzipped newc archive, via the
/// host's cpio so our writer is checked by an independent reader.
fn listing(gz: &[u8]) -> Vec<String> {
    let mut raw = Vec::new();
    flate2_decode(gz, &mut raw);
    let mut child = std::process::Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cpio (tools/setup-host.sh installs it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&raw).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn flate2_decode(gz: &[u8], out: &mut Vec<u8>) {
    let mut child = std::process::Command::new("gzip")
        .args(["-dc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = gz.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&data).unwrap();
    });
    child.stdout.take().unwrap().read_to_end(out).unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn same_inputs_same_bytes_and_the_right_contents() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, binaries) = fixture(dir.path());
    let recipe = recipe(dir.path());
    let inputs = Inputs {
        version: "2026.12.1".into(),
        kernel,
        binaries,
    };
    let a = bigv_image::build(&recipe, &inputs, &dir.path().join("a")).unwrap();
    // Touch the inputs' mtimes: they must not matter.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let init = inputs.binaries.join("bigv-init");
    std::fs::write(&init, std::fs::read(&init).unwrap()).unwrap();
    let b = bigv_image::build(&recipe, &inputs, &dir.path().join("b")).unwrap();
    for f in ["vmlinuz", "initrd", "initrd-head", "manifest.json"] {
        let x = std::fs::read(a.out.join(f)).unwrap();
        let y = std::fs::read(b.out.join(f)).unwrap();
        assert!(x == y, "{f} differs between two builds of the same inputs");
    }

    // The manifest describes the files on disc.
    let m: bigv_image::Manifest =
        serde_json::from_slice(&std::fs::read(a.out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m, a.manifest);
    assert_eq!(m.version, "2026.12.1");
    assert_eq!(m.kernel.version, "6.1.0-99-amd64");
    for (name, art) in &m.files {
        let bytes = std::fs::read(a.out.join(name)).unwrap();
        assert_eq!(art.size, bytes.len() as u64, "{name}");
        assert_eq!(art.sha256, hex::encode(Sha256::digest(&bytes)), "{name}");
    }
    assert_eq!(
        m.modules["base"],
        [
            "virtio",
            "virtio_net",
            "crc32c_generic",
            "jbd2",
            "crc16",
            "ext4"
        ]
    );
    assert_eq!(m.modules["head"], ["irqbypass", "kvm", "kvm_amd"]);
    assert_eq!(m.agents, ["bigv-tail"]);

    let base = listing(&std::fs::read(a.out.join("initrd")).unwrap());
    for want in [
        "init",
        "bin/bigv-tail",
        "bin/true",
        "etc/bigv/version",
        "etc/bigv/modules.d/base",
        "lib/modules/6.1.0-99-amd64/modules.dep",
        "lib/modules/6.1.0-99-amd64/kernel/fs/ext4/ext4.ko",
        "lib/modules/6.1.0-99-amd64/kernel/crypto/crc32c_generic.ko",
    ] {
        assert!(
            base.iter().any(|e| e == want),
            "initrd lacks {want}: {base:?}"
        );
    }
    assert!(
        !base
            .iter()
            .any(|e| e.contains("unused") || e.contains("kvm"))
    );
    assert!(
        !base
            .iter()
            .any(|e| e.ends_with("/sh") || e.contains("busybox"))
    );

    let head = listing(&std::fs::read(a.out.join("initrd-head")).unwrap());
    for want in [
        "bin/false",
        "etc/bigv/modules.d/head",
        "lib/modules/6.1.0-99-amd64/kernel/arch/x86/kvm/kvm-amd.ko",
    ] {
        assert!(
            head.iter().any(|e| e == want),
            "initrd-head lacks {want}: {head:?}"
        );
    }
    // /bin/true's libc came along (ldd closure) in the base archive, and
    // is not repeated in the head's.
    assert!(base.iter().any(|e| e.contains("libc.so")), "{base:?}");
    assert!(!head.iter().any(|e| e.contains("libc.so")), "{head:?}");
    assert!(!head.iter().any(|e| e.ends_with("ext4.ko")));
}

#[test]
fn the_head_modules_dep_covers_base_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, binaries) = fixture(dir.path());
    let recipe = recipe(dir.path());
    let inputs = Inputs {
        version: "v".into(),
        kernel,
        binaries,
    };
    let (head, _) = bigv_image::head_archive(&recipe, &inputs).unwrap();
    let Some(bigv_initramfs::Entry::File { data, .. }) =
        head.get("lib/modules/6.1.0-99-amd64/modules.dep")
    else {
        panic!("no modules.dep in the head archive")
    };
    let dep = String::from_utf8(data.clone()).unwrap();
    // It replaces the base one when the kernel unpacks initrd-head second.
    assert!(dep.contains("kernel/fs/ext4/ext4.ko:"), "{dep}");
    assert!(dep.contains("kernel/arch/x86/kvm/kvm-amd.ko:"), "{dep}");
    assert!(!dep.contains("unused"));
}

#[test]
fn recipe_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, binaries) = fixture(dir.path());
    let mut recipe = recipe(dir.path());
    recipe.base.modules.push("zfs".into());
    let inputs = Inputs {
        version: "v".into(),
        kernel,
        binaries,
    };
    let e = bigv_image::build(&recipe, &inputs, &dir.path().join("out")).unwrap_err();
    assert!(format!("{e:#}").contains("\"zfs\""), "{e:#}");
    recipe.base.modules.pop();
    recipe.base.agents = vec!["bigv-tail".into()];
    assert!(
        recipe
            .agents()
            .unwrap_err()
            .to_string()
            .contains("crate:binary")
    );
}
