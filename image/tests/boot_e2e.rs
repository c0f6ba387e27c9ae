//! The real image booted in qemu (`-kernel vmlinuz -initrd initrd`, TCG)
//! as a tail, against a real brain on the host. Slow (it builds the image,
//! static binaries included, and boots a VM under TCG): runs only with
//! BIGV_SLOW_TESTS=1, and then a missing tool is a failure, not a skip.
//!
//! What it proves, in order:
//! 1. our init mounts, loads the modules (virtio_net among them), finds
//!    the boot NIC by `bigv.bootif`, and gets an address from slirp's DHCP
//!    server with its own client;
//! 2. it starts the tail agent with the settings from the command line;
//!    the agent reaches the brain's spine (guest 10.0.2.2:port → host
//!    127.0.0.1:port) over pinned TLS;
//! 3. the node shows up in the admin tails list as `pending`, with the
//!    image's own version; accepting it makes it `accepted` and online;
//! 4. its blank data disc (`bigv.disc=vda:/srv/pool1:format`) was
//!    formatted as ext4 and mounted, and the pool on it is in the brain;
//! 5. a spine reboot order makes the agent exit 10, init stops everything
//!    and calls reboot(2): qemu (`-no-reboot`) exits;
//! 6. booted again on the same disc, init mounts the existing filesystem
//!    without reformatting it (same ext4 UUID) and the node rejoins;
//! 7. booted as a head with `initrd` + `initrd-head` concatenated (as iPXE
//!    hands them over) on a CPU with SVM, init loads the head modules too
//!    (KVM from the second archive, through its modules.dep) and starts
//!    the head agent, which joins the spine from init's environment and
//!    shows up pending in the admin heads list with the image's version;
//!    with `bigv.trunk=eth0` the agent's start-up check makes a tap with
//!    its anti-spoofing filters (tun, sch_ingress, cls_bpf) and finds
//!    802.1Q on the node's own kernel;
//! 8. a tail whose blank disc is configured without `:format` leaves the
//!    disc untouched and its pool out; the agent, given no pool, exits
//!    with an error and init restarts it with growing delays.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bigv_brain::model::Settings;
use bigv_brain::{Brain, BrainConfig};
use bigv_spine::PowerAction;
use serde_json::Value;

const MAC: &str = "52:54:00:b1:67:01";
/// The head boot is another machine: a node keeps the role it joined with.
const HEAD_MAC: &str = "52:54:00:b1:67:02";
const VERSION: &str = "e2e-test";

struct Qemu {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    started: Instant,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    fn boot(image: &Path, cmdline: &str, disc: &Path) -> Qemu {
        Self::boot_with(&image.join("initrd"), cmdline, disc, image, &[], MAC)
    }

    fn boot_with(
        initrd: &Path,
        cmdline: &str,
        disc: &Path,
        image: &Path,
        extra: &[&str],
        mac: &str,
    ) -> Qemu {
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "768", "-smp", "1"])
            .args(extra)
            .args([
                "-nographic",
                "-nodefaults",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", cmdline])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disc.display()))
            .args(["-netdev", "user,id=n0"])
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (tools/setup-host.sh installs it)");
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let (l, started) = (log.clone(), Instant::now());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{:6.1}s guest] {line}", started.elapsed().as_secs_f64());
                l.lock().unwrap().push(line);
            }
        });
        Qemu {
            child,
            log,
            started,
        }
    }

    fn saw(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

fn saw_twice(log: &Mutex<Vec<String>>, needle: &str) -> bool {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
        >= 2
}

/// The ext4 superblock's UUID, if the disc holds ext4.
fn ext4_uuid(disc: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(disc).unwrap();
    (bytes.get(1080..1082) == Some(&[0x53, 0xef][..])).then(|| bytes[1128..1144].to_vec())
}

async fn until<T>(
    what: &str,
    secs: u64,
    qemu: &mut Qemu,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            eprintln!("[{:6.1}s] {what}", qemu.started.elapsed().as_secs_f64());
            return v;
        }
        assert!(!qemu.exited(), "qemu exited while waiting for {what}");
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn build_image(out: &Path) -> bigv_image::Manifest {
    let recipe =
        bigv_image::Recipe::load(&bigv_image::workspace_root().join("image/image.toml")).unwrap();
    let kernel =
        bigv_image::Kernel::open(&bigv_image::fetch_kernel().expect("fetch-kernel.sh")).unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| bigv_image::workspace_root().join("target"))
        .join("static");
    let binaries = bigv_image::build_static(&recipe, &target).expect("static build");
    let inputs = bigv_image::Inputs {
        version: VERSION.into(),
        kernel,
        binaries,
    };
    let built = bigv_image::build(&recipe, &inputs, out).expect("image build");
    for (name, a) in &built.manifest.files {
        eprintln!("{name}: {} bytes", a.size);
    }
    built.manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_image_boots_joins_the_spine_and_reboots_on_order() {
    if std::env::var("BIGV_SLOW_TESTS").as_deref() != Ok("1") {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED tail_image_boots_joins_the_spine_and_reboots_on_order: builds the node image and boots it in qemu (TCG); runs only with BIGV_SLOW_TESTS=1"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("image");
    let manifest = tokio::task::block_in_place(|| build_image(&image));

    // A brain on 127.0.0.1 that leaves new nodes pending.
    let mut config = BrainConfig::new(work.path().join("brain"));
    config.bootstrap = Some(("admin".into(), "correct-horse-battery".into()));
    config.initial_settings = Settings {
        admission: "manual".into(),
        ..Settings::default()
    };
    let brain = Brain::start(config).await.expect("brain starts");
    let token = bigv_brain::password::new_secret();
    {
        let session = bigv_brain::model::Session {
            token_sha256: bigv_brain::api::access::secret_hash(&token),
            username: "admin".into(),
            factors: vec!["password".into()],
            expires_at: brain.clock.now() + 3600,
            created_at: brain.clock.now(),
        };
        brain.db.write(move |tx| tx.put(session)).await.unwrap();
    }
    let http = reqwest::Client::new();
    let api = format!("http://{}", brain.api_addr);
    let tails = async || -> Vec<Value> {
        let r = http
            .get(format!("{api}/admin/tails"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json::<Value>()
            .await
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    };

    let disc = work.path().join("disc.raw");
    std::fs::File::create(&disc)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let cmdline = format!(
        "console=ttyS0,115200 panic=-1 bigv.role=tail bigv.version={VERSION} \
         bigv.spine=10.0.2.2:{} bigv.pin={} bigv.bootif={MAC} \
         bigv.disc=vda:/srv/pool1:format bigv.pool=pool1:sata:/srv/pool1",
        brain.spine_addr.port(),
        brain.fingerprint
    );
    let mut qemu = Qemu::boot(&image, &cmdline, &disc);

    let pending = until("the tail to appear, pending", 240, &mut qemu, async || {
        tails()
            .await
            .into_iter()
            .find(|t| t["uuid"] == MAC && t["online"] == true)
    })
    .await;
    assert_eq!(pending["admission"], "pending", "{pending}");
    assert_eq!(pending["image_version"], VERSION, "{pending}");
    assert!(
        qemu.saw("DHCP lease applied"),
        "init's own DHCP client got the address"
    );
    assert!(qemu.saw("kernel modules loaded"));
    assert!(qemu.saw("blank disc: formatting as ext4"));
    assert!(qemu.saw("data disc mounted"));
    let pools = pending["pools"].to_string();
    assert!(
        pools.contains("-pool1"),
        "the disc's pool reached the brain: {pools}"
    );

    let r = http
        .post(format!("{api}/admin/tails/{MAC}/accept"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "accept: {}", r.status());
    until(
        "the tail to be accepted and online",
        30,
        &mut qemu,
        async || {
            tails()
                .await
                .into_iter()
                .find(|t| t["uuid"] == MAC && t["admission"] == "accepted" && t["online"] == true)
        },
    )
    .await;

    // The brain orders a reboot: the agent acknowledges and exits 10, init
    // ends everything and calls reboot(2); with -no-reboot qemu exits.
    let node = brain.spine.node(MAC).expect("the tail is on the spine");
    node.power(PowerAction::Reboot)
        .await
        .expect("power order acknowledged");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !qemu.exited() {
        assert!(
            Instant::now() < deadline,
            "qemu did not exit after the reboot order"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(qemu.saw("the agent asked for a power action"));
    assert!(qemu.saw("bigv-init: Reboot"));
    drop(qemu);
    let uuid = ext4_uuid(&disc).expect("the data disc holds ext4 after the first boot");

    // Boot again on the same disc, :format still on the command line.
    let mut qemu = Qemu::boot(&image, &cmdline, &disc);
    until("the tail to rejoin", 240, &mut qemu, async || {
        tails()
            .await
            .into_iter()
            .find(|t| t["uuid"] == MAC && t["online"] == true)
    })
    .await;
    assert!(qemu.saw("data disc mounted"));
    assert!(
        !qemu.saw("formatting"),
        "an existing filesystem was reformatted"
    );
    drop(qemu);
    assert_eq!(ext4_uuid(&disc), Some(uuid), "the filesystem changed");

    // A blank disc without :format: refused, untouched; the agent has no
    // pool, exits, and is restarted.
    let blank = work.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let refuse_line = cmdline.replace("vda:/srv/pool1:format", "vda:/srv/pool1");
    let mut qemu = Qemu::boot(&image, &refuse_line, &blank);
    let restarts = qemu.log.clone();
    until(
        "init to restart the failing agent twice",
        240,
        &mut qemu,
        async || saw_twice(&restarts, "agent exited; restarting").then_some(()),
    )
    .await;
    assert!(qemu.saw("data disc left out"));
    let log = qemu.log.lock().unwrap().join("\n");
    assert!(
        log.contains("delay=1s") && log.contains("delay=2s"),
        "backoff grows:\n{log}"
    );
    drop(qemu);
    assert!(
        std::fs::read(&blank).unwrap().iter().all(|&b| b == 0),
        "a disc without :format was written to"
    );

    // A head: both archives, concatenated as the kernel receives them.
    let both = work.path().join("initrd+head");
    let mut bytes = std::fs::read(image.join("initrd")).unwrap();
    bytes.extend(std::fs::read(image.join("initrd-head")).unwrap());
    std::fs::write(&both, bytes).unwrap();
    let head_line = cmdline
        .replace("bigv.role=tail", "bigv.role=head")
        .replace(
            " bigv.disc=vda:/srv/pool1:format bigv.pool=pool1:sata:/srv/pool1",
            "",
        )
        .replace(MAC, HEAD_MAC)
        // VMs' NICs bridged on the boot NIC: the agent checks at start
        // that taps with their anti-spoofing filters work on this kernel.
        + " bigv.trunk=eth0";
    let mut qemu = Qemu::boot_with(
        &both,
        &head_line,
        &disc,
        &image,
        &["-cpu", "qemu64,+svm,+npt"],
        HEAD_MAC,
    );
    let heads = async || -> Vec<Value> {
        let r = http
            .get(format!("{api}/admin/heads"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json::<Value>()
            .await
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let head = until(
        "the head agent to join, pending",
        240,
        &mut qemu,
        async || {
            heads()
                .await
                .into_iter()
                .find(|h| h["uuid"] == HEAD_MAC && h["online"] == true)
        },
    )
    .await;
    assert_eq!(head["admission"], "pending", "{head}");
    assert_eq!(head["image_version"], VERSION, "{head}");
    let log = qemu.log.lock().unwrap().join("\n");
    let loaded: u32 = log
        .split("loaded=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a 'kernel modules loaded' line");
    assert!(
        loaded >= 30,
        "base and head modules load (got {loaded}):\n{log}"
    );
    // Everything but crc32c_intel (no SSE4.2 on qemu64); kvm_intel after
    // kvm_amd answers EEXIST ("vendor module already loaded").
    let total: usize = manifest.modules.values().map(Vec::len).sum();
    assert_eq!(loaded as usize, total - 1, "{log}");
    assert!(
        !log.contains("module=\"kvm_amd\""),
        "kvm_amd failed to load:\n{log}"
    );
    // The node's own kernel makes taps with the BPF filters and has 802.1Q.
    let net = log
        .lines()
        .find(|l| l.contains("VM networking"))
        .unwrap_or_else(|| panic!("no VM networking line:\n{log}"));
    assert!(
        net.contains("VM networking ready") && net.contains("vlans_8021q=true"),
        "{net}"
    );
    drop(qemu);
    brain.shutdown().await;
}
