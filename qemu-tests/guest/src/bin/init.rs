//! `/init` of the test guest (PID 1, static). See the crate docs for what
//! it prints; everything goes to ttyS0 so the head's serial log sees it.
//! PID 1 must never exit (the kernel would panic), so every failure is
//! printed and the program carries on.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bigv_test_guest::{cidata, layout, lines, pattern};

type Console = Arc<Mutex<File>>;

static TICKS: AtomicU64 = AtomicU64::new(0);
static CAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    CAD.store(true, Ordering::SeqCst);
}

/// Ctrl-alt-delete on the guest's keyboard reaches PID 1 as SIGINT (not
/// a reboot); each press is reported on the console, so a test can see
/// that keys sent through qemu arrived, and starts a disc check (write
/// and verify the pattern again, like the `disc` command): scenarios on
/// PXE-booted heads cannot type on the serial console, but can send keys
/// through the API.
fn watch_ctrl_alt_del(con: Console, boot_id: String) {
    // SAFETY: RB_DISABLE_CAD takes no pointer; the handler only stores
    // to an atomic.
    unsafe {
        libc::reboot(libc::RB_DISABLE_CAD);
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if CAD.swap(false, Ordering::SeqCst) {
            say(&con, lines::CTRL_ALT_DEL);
            let (con, id) = (con.clone(), boot_id.clone());
            std::thread::spawn(move || disc_check(con, id));
        }
    }
}
static DISC: Mutex<String> = Mutex::new(String::new());
/// What the cloud-init seed drive delivered, once found.
static SEED: Mutex<Option<cidata::Seed>> = Mutex::new(None);

fn say(con: &Console, line: &str) {
    if let Ok(mut f) = con.lock() {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

fn mount(src: &str, target: &str, fstype: &str) -> std::io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f) = (
        CString::new(src)?,
        CString::new(target)?,
        CString::new(fstype)?,
    );
    // SAFETY: valid NUL-terminated strings, no data argument.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn open_console() -> File {
    for path in ["/dev/ttyS0", "/dev/console"] {
        if let Ok(f) = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(path)
        {
            // No echo: commands typed by a test stay out of the log.
            // SAFETY: termios is plain data; fd is open.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(f.as_raw_fd(), &mut t) == 0 {
                    t.c_lflag &= !(libc::ECHO | libc::ECHONL);
                    libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t);
                }
            }
            return f;
        }
    }
    // Nothing to talk to: keep the kernel alive anyway.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn load_modules(con: &Console) {
    let list = std::fs::read_to_string("/etc/modules").unwrap_or_default();
    let mut failed = Vec::new();
    for path in list.lines().filter(|l| !l.is_empty()) {
        let r = File::open(path).and_then(|f| {
            let empty = CString::default();
            // SAFETY: finit_module with an open fd and empty params.
            let r =
                unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), empty.as_ptr(), 0) };
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            // No such hardware (e.g. ahci on a virtio-only machine) is fine.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => failed.push(format!("{path}: {e}")),
        }
    }
    if failed.is_empty() {
        say(con, "BIGV-GUEST MODULES loaded");
    } else {
        say(
            con,
            &format!("BIGV-GUEST MODULES failed: {}", failed.join("; ")),
        );
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn ticker(con: Console) {
    let start = Instant::now();
    for n in 1u64.. {
        let next = start + Duration::from_secs(n);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        TICKS.store(n, Ordering::Relaxed);
        say(&con, &format!("{}{n} uptime={}", lines::TICK, uptime()));
    }
}

fn set_disc(state: String) {
    if let Ok(mut d) = DISC.lock() {
        *d = state;
    }
}

/// Waits for the first disc, then writes and verifies the pattern in its
/// data region (found from the partition table).
fn disc_check(con: Console, boot_id: String) {
    set_disc("waiting".into());
    let deadline = Instant::now() + Duration::from_secs(60);
    let dev = loop {
        if let Some(d) = ["/dev/vda", "/dev/sda"]
            .into_iter()
            .find(|d| std::path::Path::new(d).exists())
        {
            break d;
        }
        if Instant::now() > deadline {
            set_disc("none".into());
            say(&con, &format!("{}no disc appeared", lines::DISC_FAIL));
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    match write_and_verify(dev, &boot_id) {
        Ok((offset, previous)) => {
            set_disc(format!("ok:{dev}"));
            say(
                &con,
                &format!(
                    "{}dev={dev} offset={offset} bytes={} previous={previous} disc_bytes={}",
                    lines::DISC_OK,
                    pattern::BLOCKS * pattern::BLOCK as u64,
                    disc_bytes(dev)
                ),
            );
        }
        Err(e) => {
            set_disc(format!("fail:{dev}"));
            say(&con, &format!("{}dev={dev} {e}", lines::DISC_FAIL));
        }
    }
}

/// The disc's size as the guest sees it (0 if it cannot tell).
fn disc_bytes(dev: &str) -> u64 {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(dev)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .unwrap_or(0)
}

/// MemTotal in MiB (what the guest's kernel got; a little under the VM's
/// memory), 0 if unreadable.
fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

fn write_and_verify(dev: &str, boot_id: &str) -> Result<(u64, String), String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("open: {e}"))?;
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0)
        .map_err(|e| format!("read mbr: {e}"))?;
    let (offset, len) = layout::data_region(&mbr).ok_or("no data partition (type 0xda)")?;
    let bytes = pattern::BLOCKS * pattern::BLOCK as u64;
    if len < bytes {
        return Err(format!("data region is only {len} bytes"));
    }
    let mut first = vec![0u8; pattern::BLOCK];
    f.read_exact_at(&mut first, offset)
        .map_err(|e| format!("read: {e}"))?;
    let previous = pattern::header(&first)
        .map(|(id, _)| id)
        .unwrap_or_else(|| "none".into());
    let mut all = Vec::with_capacity(bytes as usize);
    for i in 0..pattern::BLOCKS {
        all.extend(pattern::block(boot_id, i));
    }
    f.write_all_at(&all, offset)
        .map_err(|e| format!("write: {e}"))?;
    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    // Drop the page cache so the read-back comes from the device.
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    // SAFETY: ioctl without argument on an open block device.
    unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0) };
    let mut back = vec![0u8; bytes as usize];
    f.read_exact_at(&mut back, offset)
        .map_err(|e| format!("read back: {e}"))?;
    if !pattern::verify(boot_id, 0, &back) {
        return Err("read back differs from what was written".into());
    }
    Ok((offset, previous))
}

/// The first block device whose FAT label is `CIDATA`, read whole.
fn find_seed() -> Option<(String, Result<cidata::Seed, String>)> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
        .collect();
    names.sort();
    for name in names {
        let dev = format!("/dev/{name}");
        let Ok(f) = File::open(&dev) else { continue };
        // 2048 bytes: one block of a CD drive, four of a disc.
        let mut head = vec![0u8; 2048];
        if f.read_exact_at(&mut head, 0).is_err()
            || cidata::label(&head).as_deref() != Some(cidata::LABEL)
        {
            continue;
        }
        let size = disc_bytes(&dev);
        if size == 0 || size > 16 << 20 {
            return Some((dev, Err(format!("{size} bytes is no seed drive"))));
        }
        let mut image = vec![0u8; size as usize];
        if let Err(e) = f.read_exact_at(&mut image, 0) {
            return Some((dev, Err(format!("reading: {e}"))));
        }
        return Some((dev, cidata::read_image(image)));
    }
    None
}

/// Looks for the seed drive for a while after boot, prints what it
/// delivered, and runs (records) the first-boot script once per instance.
fn cidata_check(con: Console) {
    // As long as the disc check waits for its disc: TCG boots are slow.
    let deadline = Instant::now() + Duration::from_secs(60);
    let found = loop {
        if let Some(found) = find_seed() {
            break found;
        }
        if Instant::now() > deadline {
            say(&con, &format!("{}none", lines::CIDATA));
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    match found {
        (dev, Err(e)) => say(&con, &format!("{}unreadable dev={dev} {e}", lines::CIDATA)),
        (dev, Ok(seed)) => {
            say(&con, &format!("{} dev={dev}", cidata::status_line(&seed)));
            let line = firstboot(&seed, &dev);
            say(&con, &format!("{}{line}", lines::FIRSTBOOT));
            if let Ok(mut s) = SEED.lock() {
                *s = Some(seed);
            }
        }
    }
}

/// "Runs" the first-boot script (this guest has no shell: it records
/// the instance in the last sector of its first disc's data region), or
/// says it already ran for this instance.
fn firstboot(seed: &cidata::Seed, seed_dev: &str) -> String {
    let Some(script) = &seed.firstboot else {
        return "none".into();
    };
    let id = &seed.instance_id;
    let Some(dev) = ["/dev/vda", "/dev/sda"]
        .into_iter()
        .find(|d| *d != seed_dev && std::path::Path::new(d).exists())
    else {
        return format!("failed instance={id} no disc to remember it on");
    };
    let r = (|| {
        let f = OpenOptions::new().read(true).write(true).open(dev)?;
        let mut mbr = [0u8; 512];
        f.read_exact_at(&mut mbr, 0)?;
        let (offset, len) = layout::data_region(&mbr)
            .filter(|(_, len)| *len >= pattern::BLOCKS * pattern::BLOCK as u64 + 512)
            .ok_or_else(|| std::io::Error::other("no data region with room"))?;
        let at = offset + len - 512;
        let mut sector = [0u8; 512];
        f.read_exact_at(&mut sector, at)?;
        if cidata::marked_instance(&sector).as_deref() == Some(id) {
            return Ok(false);
        }
        f.write_all_at(&cidata::marker(id), at)?;
        f.sync_all()?;
        Ok::<_, std::io::Error>(true)
    })();
    match r {
        Ok(true) => format!("ran instance={id} sha256={}", cidata::short_sha256(script)),
        Ok(false) => format!("already ran instance={id}"),
        Err(e) => format!("failed instance={id} {dev}: {e}"),
    }
}

/// `login root PASSWORD`, checked against the delivered hash.
fn login(rest: &str) -> bool {
    let (user, password) = rest.split_once(' ').unwrap_or((rest, ""));
    let hash = SEED
        .lock()
        .ok()
        .and_then(|s| s.as_ref()?.password_hash.clone());
    user == "root" && hash.is_some_and(|h| cidata::password_ok(&h, password))
}

fn power_off(con: &Console, why: &str, cmd: libc::c_int) {
    say(con, why);
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(cmd);
    }
}

/// Watches every input device named "Power Button" for KEY_POWER, so
/// qemu's `system_powerdown` (ACPI) turns the guest off.
fn power_buttons(con: Console) {
    // The button driver registers its devices shortly after loading.
    std::thread::sleep(Duration::from_secs(1));
    let Ok(dir) = std::fs::read_dir("/sys/class/input") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("event") {
            continue;
        }
        let dev_name =
            std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if dev_name.trim() != "Power Button" {
            continue;
        }
        let Ok(mut f) = File::open(format!("/dev/input/{name}")) else {
            continue;
        };
        let con = con.clone();
        std::thread::spawn(move || {
            // struct input_event on x86_64: timeval (16), type u16, code u16, value i32.
            let mut ev = [0u8; 24];
            while f.read_exact(&mut ev).is_ok() {
                let kind = u16::from_le_bytes([ev[16], ev[17]]);
                let code = u16::from_le_bytes([ev[18], ev[19]]);
                let value = i32::from_le_bytes([ev[20], ev[21], ev[22], ev[23]]);
                if kind == 1 && code == 116 && value == 1 {
                    power_off(
                        &con,
                        &format!("{}: powering off", lines::POWER_BUTTON),
                        libc::RB_POWER_OFF,
                    );
                }
            }
        });
    }
}

/// busybox udhcpc's script: configures the lease and prints it.
const DHCP_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "$router"
    echo "LEASE ip=$ip mask=$mask router=$router hostname=$hostname domain=$domain"
    ;;
esac
"#;

/// With a NIC, asks for its address by DHCP as a distribution would at
/// boot (busybox udhcpc; a few tries, then gives up), configures it and
/// says what it got (`lines::NET`).
fn dhcp_at_boot(con: Console) {
    if !std::path::Path::new("/sys/class/net/eth0").exists() {
        return;
    }
    let _ = std::fs::write("/bigv-dhcp.sh", DHCP_SCRIPT);
    let _ = std::fs::set_permissions(
        "/bigv-dhcp.sh",
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let out = std::process::Command::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            "ip link set eth0 up && udhcpc -i eth0 -n -q -f -t 6 -T 3 -s /bigv-dhcp.sh 2>&1",
        ])
        .env("PATH", "/bin")
        .stdin(std::process::Stdio::null())
        .output();
    let lease = out.ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("LEASE ").map(str::to_owned))
    });
    match lease {
        Some(l) => say(&con, &format!("{}lease {l}", lines::NET)),
        None => say(&con, &format!("{}no lease", lines::NET)),
    }
}

static SH_COMMANDS: AtomicU64 = AtomicU64::new(0);

/// Runs one `sh` command with busybox's shell, its output and status on
/// the console (`lines::SH_*`). Output lines are printed as they come, so
/// a long-running command (a writer loop) is seen while it runs.
fn shell(con: Console, n: u64, command: &str) {
    let child = std::process::Command::new("/bin/busybox")
        .args(["sh", "-c", &format!("exec 2>&1; {command}")])
        .env("PATH", "/bin")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            say(&con, &format!("{}{n}: /bin/busybox: {e}", lines::SH_OUT));
            say(&con, &format!("{}{n} status=127", lines::SH_EXIT));
            return;
        }
    };
    if let Some(out) = child.stdout.take() {
        let mut reader = BufReader::new(out);
        let mut line = Vec::new();
        // Until every writer (the shell and what it started) closed it.
        while reader.read_until(b'\n', &mut line).is_ok_and(|got| got > 0) {
            let text = String::from_utf8_lossy(&line);
            say(
                &con,
                &format!(
                    "{}{n}: {}",
                    lines::SH_OUT,
                    text.trim_end_matches(['\n', '\r'])
                ),
            );
            line.clear();
        }
    }
    let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
    say(&con, &format!("{}{n} status={code}", lines::SH_EXIT));
}

fn commands(con: Console, input: File, boot_id: &str) {
    let mut reader = BufReader::new(input);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Ok(_) => {}
        }
        match line.trim() {
            "" => {}
            "status" => {
                let disc = DISC.lock().map(|d| d.clone()).unwrap_or_default();
                say(
                    &con,
                    &format!(
                        "{}boot_id={boot_id} uptime={} ticks={} disc={disc}",
                        lines::STATUS,
                        uptime(),
                        TICKS.load(Ordering::Relaxed)
                    ),
                );
            }
            // Writes and verifies the pattern again (a disc check on demand).
            "disc" => {
                let (con, id) = (con.clone(), boot_id.to_owned());
                std::thread::spawn(move || disc_check(con, id));
            }
            "poweroff" => power_off(&con, "BIGV-GUEST POWEROFF", libc::RB_POWER_OFF),
            cmd if cmd.starts_with("login ") => {
                let ok = login(&cmd["login ".len()..]);
                say(
                    &con,
                    if ok {
                        lines::LOGIN_OK
                    } else {
                        lines::LOGIN_FAILED
                    },
                );
            }
            "reboot" => power_off(&con, "BIGV-GUEST REBOOT", libc::RB_AUTOBOOT),
            cmd if cmd.starts_with("sh ") => {
                let n = SH_COMMANDS.fetch_add(1, Ordering::Relaxed) + 1;
                let command = cmd["sh ".len()..].to_owned();
                say(&con, &format!("{}{n} {command}", lines::SH_START));
                let con = con.clone();
                std::thread::spawn(move || shell(con, n, &command));
            }
            other => say(&con, &format!("UNKNOWN {other}")),
        }
    }
}

fn main() {
    let _ = mount("proc", "/proc", "proc");
    let _ = mount("sysfs", "/sys", "sysfs");
    let _ = mount("devtmpfs", "/dev", "devtmpfs");
    let tty = open_console();
    let input = tty.try_clone().unwrap_or_else(|_| open_console());
    let con: Console = Arc::new(Mutex::new(tty));
    say(&con, "BIGV-GUEST USERSPACE");
    load_modules(&con);
    // busybox's applets as /bin/<name> links, for the `sh` command.
    let _ = std::process::Command::new("/bin/busybox")
        .args(["--install", "-s", "/bin"])
        .status();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    say(
        &con,
        &format!(
            "{}{boot_id} uptime={} mem_mib={}",
            lines::BOOT,
            uptime(),
            mem_total_mib()
        ),
    );
    {
        let con = con.clone();
        std::thread::spawn(move || ticker(con));
    }
    {
        let (con, id) = (con.clone(), boot_id.clone());
        std::thread::spawn(move || disc_check(con, id));
    }
    {
        let con = con.clone();
        std::thread::spawn(move || power_buttons(con));
    }
    {
        let con = con.clone();
        std::thread::spawn(move || cidata_check(con));
    }
    {
        let con = con.clone();
        std::thread::spawn(move || dhcp_at_boot(con));
    }
    {
        let (con, id) = (con.clone(), boot_id.clone());
        std::thread::spawn(move || watch_ctrl_alt_del(con, id));
    }
    commands(con, input, &boot_id);
}
