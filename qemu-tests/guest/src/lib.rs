//! The BigV test guest: what its `/init` prints and writes, and how its
//! bootable disc image is laid out and built.
//!
//! The guest is Debian's kernel plus a small initramfs whose `/init` is
//! `src/bin/init.rs`. It prints `BIGV-GUEST BOOT id=<boot id>`, then
//! `TICK <n> uptime=<s>` every second on ttyS0, writes and verifies a data
//! pattern on its first disc, and answers `status`, `disc`, `poweroff`
//! and `reboot` typed on the serial console. With a cloud-init seed
//! drive attached it prints what it delivered (`cidata: …`), whether the
//! first-boot script ran for this instance (`firstboot: …`), and answers
//! `login root PASSWORD` with `login ok` or `login failed` ([`cidata`]).
//! `sh COMMAND LINE` runs the line with busybox's shell (busybox's
//! applets are on `PATH`, virtio_net is loaded: `ip`, `ping`, `nc`,
//! `udhcpc`) and prints `SH-START <n> <line>`, each output line as
//! `SH-OUT <n>: <line>` and `SH-EXIT <n> status=<code>`. With a NIC it
//! asks for its address by DHCP at boot, as a distribution would, and
//! prints the lease it configured (`BIGV-GUEST NET lease ip=…`). The disc layout is in
//! [`layout`]; the README has the whole story.

pub mod cidata;
pub mod image;
pub mod layout;
pub mod modules;
pub mod pattern;

/// Serial lines the guest prints, for tests to match on.
pub mod lines {
    /// `BIGV-GUEST BOOT id=<uuid>`: userspace is up.
    pub const BOOT: &str = "BIGV-GUEST BOOT id=";
    /// `TICK <n> uptime=<seconds>`, once a second.
    pub const TICK: &str = "TICK ";
    /// `DISC OK dev=<dev> ...` or `DISC FAIL ...`.
    pub const DISC_OK: &str = "DISC OK ";
    pub const DISC_FAIL: &str = "DISC FAIL ";
    /// The answer to `status`.
    pub const STATUS: &str = "STATUS ";
    /// Printed when the ACPI power button is pressed, before powering off.
    pub const POWER_BUTTON: &str = "BIGV-GUEST POWER BUTTON";
    /// Printed for each ctrl-alt-delete on the guest's keyboard.
    pub const CTRL_ALT_DEL: &str = "BIGV-GUEST CTRL-ALT-DEL";
    /// `cidata: instance-id=… hostname=… password=set|none keys=N
    /// firstboot=<sha256 prefix>|none`, or `cidata: none` without a seed.
    pub const CIDATA: &str = "cidata: ";
    /// `firstboot: ran instance=…`, `firstboot: already ran instance=…`
    /// or `firstboot: none`.
    pub const FIRSTBOOT: &str = "firstboot: ";
    /// The answers to `login root PASSWORD`.
    pub const LOGIN_OK: &str = "login ok";
    pub const LOGIN_FAILED: &str = "login failed";
    /// `BIGV-GUEST NET lease ip=… mask=… router=… hostname=… domain=…`: the
    /// lease its DHCP client got at boot and configured, or
    /// `BIGV-GUEST NET no lease`. Only with a NIC.
    pub const NET: &str = "BIGV-GUEST NET ";
    /// `SH-START <n> <command line>`: the `n`th `sh` command (from 1) runs.
    pub const SH_START: &str = "SH-START ";
    /// `SH-OUT <n>: <line>`: a line of its output (stdout and stderr).
    pub const SH_OUT: &str = "SH-OUT ";
    /// `SH-EXIT <n> status=<code>`: it ended (code -1: killed by a signal).
    pub const SH_EXIT: &str = "SH-EXIT ";

    /// The number of the `sh` command that ran `command`, from its
    /// `SH-START` line.
    pub fn sh_started(line: &str, command: &str) -> Option<u64> {
        let at = line.find(SH_START)?;
        let (n, rest) = line[at + SH_START.len()..].split_once(' ')?;
        (rest.trim_end() == command).then(|| n.parse().ok())?
    }

    /// The exit status in command `n`'s `SH-EXIT` line.
    pub fn sh_exit(line: &str, n: u64) -> Option<i32> {
        let at = line.find(SH_EXIT)?;
        let rest = line[at + SH_EXIT.len()..].strip_prefix(&format!("{n} status="))?;
        rest.trim_end().parse().ok()
    }

    /// Command `n`'s output line, if `line` is one.
    pub fn sh_out(line: &str, n: u64) -> Option<&str> {
        let at = line.find(SH_OUT)?;
        line[at + SH_OUT.len()..].strip_prefix(&format!("{n}: "))
    }

    /// A `key=value` word after `prefix` in `line` (`mem_mib` in a `BOOT`
    /// line, `previous` or `disc_bytes` in a `DISC OK` line).
    pub fn field<'a>(line: &'a str, prefix: &str, key: &str) -> Option<&'a str> {
        let at = line.find(prefix)?;
        line[at + prefix.len()..]
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// The fields of a `NET lease` line (`ip=… router=…`), `None` for
    /// another line; `Some("")` is not possible: `NET no lease` is `None`.
    pub fn net_lease(line: &str) -> Option<&str> {
        let at = line.find(NET)?;
        line[at + NET.len()..]
            .strip_prefix("lease ")
            .map(str::trim_end)
    }

    /// The boot id in a `BOOT` line.
    pub fn boot_id(line: &str) -> Option<&str> {
        let at = line.find(BOOT)?;
        line[at + BOOT.len()..].split_whitespace().next()
    }

    /// The `(n, uptime seconds)` of a `TICK` line.
    pub fn tick(line: &str) -> Option<(u64, f64)> {
        let at = line.find(TICK)?;
        let mut words = line[at + TICK.len()..].split_whitespace();
        let n = words.next()?.parse().ok()?;
        let uptime = words.next()?.strip_prefix("uptime=")?.parse().ok()?;
        Some((n, uptime))
    }
}

#[cfg(test)]
mod tests {
    use super::lines;

    #[test]
    fn parses_boot_and_tick_lines() {
        let boot = "\r[  2.1] BIGV-GUEST BOOT id=1b4e28ba-2fa1-11d2-883f-0016d3cca427\r";
        assert_eq!(
            lines::boot_id(boot),
            Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        );
        assert_eq!(lines::tick("TICK 12 uptime=14.52"), Some((12, 14.52)));
        assert_eq!(lines::tick("TICK x uptime=1"), None);
        assert_eq!(lines::boot_id("nothing here"), None);
        let boot = "x BIGV-GUEST BOOT id=abc uptime=2.1 mem_mib=215";
        assert_eq!(lines::field(boot, lines::BOOT, "mem_mib"), Some("215"));
        let disc = "DISC OK dev=/dev/vda offset=1 bytes=2 previous=abc disc_bytes=1073741824";
        assert_eq!(lines::field(disc, lines::DISC_OK, "previous"), Some("abc"));
        assert_eq!(
            lines::field(disc, lines::DISC_OK, "disc_bytes"),
            Some("1073741824")
        );
        assert_eq!(lines::field(disc, lines::DISC_OK, "nope"), None);
    }

    #[test]
    fn parses_sh_lines() {
        let cmd = "ip addr add 10.0.0.5/24 dev eth0";
        assert_eq!(
            lines::sh_started(&format!("\rSH-START 3 {cmd}\r"), cmd),
            Some(3)
        );
        assert_eq!(lines::sh_started("SH-START 3 ip link", cmd), None);
        assert_eq!(lines::sh_exit("SH-EXIT 3 status=0", 3), Some(0));
        assert_eq!(lines::sh_exit("SH-EXIT 3 status=1\r", 3), Some(1));
        assert_eq!(lines::sh_exit("SH-EXIT 13 status=0", 3), None);
        assert_eq!(
            lines::sh_out("SH-OUT 3: hello world", 3),
            Some("hello world")
        );
        assert_eq!(lines::sh_out("SH-OUT 33: hello", 3), None);
    }
}
