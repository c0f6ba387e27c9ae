//! Init must never just die: the kernel panics when PID 1 exits. A fatal
//! error or a panic is printed on the console, and the node reboots after
//! 10 s (the brain's iPXE script then boots it afresh).

use std::cell::Cell;
use std::time::Duration;

pub const REBOOT_DELAY: Duration = Duration::from_secs(10);

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the panic hook silenced on this thread: for code that
/// contains its own panics (`catch_unwind` around a decoder).
pub fn quiet_panics<T>(f: impl FnOnce() -> T) -> T {
    let was = QUIET.with(|q| q.replace(true));
    let out = f();
    QUIET.with(|q| q.set(was));
    out
}

/// Any panic outside [`quiet_panics`], on any thread, prints and (as
/// PID 1) reboots; as a normal process (tests, `--check`) it only prints.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if QUIET.with(|q| q.get()) {
            return;
        }
        eprintln!("bigv-init: FATAL: {info}");
        if std::process::id() == 1 {
            reboot_after_delay();
        }
    }));
}

/// Prints the error and reboots after [`REBOOT_DELAY`]; outside PID 1 it
/// exits with status 1 instead.
pub fn fatal(error: &dyn std::fmt::Display) -> ! {
    eprintln!("bigv-init: FATAL: {error}");
    if std::process::id() == 1 {
        reboot_after_delay();
    }
    std::process::exit(1)
}

fn reboot_after_delay() -> ! {
    eprintln!("bigv-init: rebooting in {} s", REBOOT_DELAY.as_secs());
    std::thread::sleep(REBOOT_DELAY);
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on failure; there is nothing left to try.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
