//! A tail's storage as the brain hands it over at boot: the pools and data
//! discs registered with its machine become `bigv.pool=NAME:GRADE:/DIR`
//! and `bigv.disc=DEV:/DIR[:format]` on its kernel command line (init
//! mounts the discs, formatting a blank one only with `:format`, and the
//! tail agent serves the pools). Values are checked here with init's rules
//! (nodeos/init/src/cmdline.rs), a little stricter, so that a mistake is a
//! 400 naming the field when the operator registers the machine, never a
//! node that refuses its command line at boot.

use bigv_pxe::ipxe::is_safe_name;

use crate::model::Machine;

/// `/` then path segments of safe names: no `..`, nothing the script or
/// the command line would treat specially.
fn dir_ok(dir: &str) -> bool {
    dir.len() > 1
        && dir.len() <= 128
        && dir
            .strip_prefix('/')
            .is_some_and(|rest| rest.split('/').all(is_safe_name))
}

/// `NAME:GRADE:/DIR`, e.g. `sata1:sata:/srv/sata1`.
pub fn check_pool(pool: &str) -> Result<(), String> {
    let mut parts = pool.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(grade), Some(dir))
            if is_safe_name(name) && is_safe_name(grade) && dir_ok(dir) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{pool:?} must be NAME:GRADE:/DIR, e.g. sata1:sata:/srv/sata1"
        )),
    }
}

/// `DEV:/DIR[:format]`, e.g. `vdb:/srv/sata1:format`.
pub fn check_disc(disc: &str) -> Result<(), String> {
    let parts: Vec<&str> = disc.split(':').collect();
    let dev_ok =
        |d: &str| !d.is_empty() && d.len() <= 32 && d.bytes().all(|b| b.is_ascii_alphanumeric());
    match parts.as_slice() {
        [dev, dir] | [dev, dir, "format"] if dev_ok(dev) && dir_ok(dir) => Ok(()),
        _ => Err(format!(
            "{disc:?} must be DEV:/DIR or DEV:/DIR:format, e.g. vdb:/srv/sata1:format"
        )),
    }
}

/// A machine's pools: each well formed, no name or directory twice.
pub fn check_pools(pools: &[String]) -> Result<(), String> {
    unique(pools, check_pool, |parts| [parts[0], parts[2]])
}

/// A machine's discs: each well formed, no device or directory twice.
pub fn check_discs(discs: &[String]) -> Result<(), String> {
    unique(discs, check_disc, |parts| [parts[0], parts[1]])
}

/// Checks each value, then that the two parts `keys` picks out (name or
/// device, directory) are each used once; the message names the first
/// problem.
fn unique(
    values: &[String],
    check: fn(&str) -> Result<(), String>,
    keys: for<'a> fn(&[&'a str]) -> [&'a str; 2],
) -> Result<(), String> {
    let mut seen: Vec<(usize, &str)> = vec![];
    for v in values {
        check(v)?;
        let parts: Vec<&str> = v.splitn(3, ':').collect();
        for (i, k) in keys(&parts).into_iter().enumerate() {
            if seen.contains(&(i, k)) {
                return Err(format!("{k:?} is used twice"));
            }
            seen.push((i, k));
        }
    }
    Ok(())
}

/// The kernel arguments for `machine`'s storage, pools first.
pub fn kernel_args(machine: &Machine) -> Vec<String> {
    let pools = machine.pools.iter().map(|p| format!("bigv.pool={p}"));
    let discs = machine.discs.iter().map(|d| format!("bigv.disc={d}"));
    pools.chain(discs).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_discs_are_checked_with_init_rules() {
        assert!(check_pool("sata1:sata:/srv/sata1").is_ok());
        assert!(check_pool("scratch:ram:/run/bigv/pools/scratch").is_ok());
        for bad in [
            "sata1:sata",
            "sata1:sata:srv",
            "sata1::/srv",
            ":sata:/srv",
            "sata1:sata:/srv/../etc",
            "sata1:sata:/",
            "sata 1:sata:/srv",
            "sata1:sata:/srv/$x",
        ] {
            assert!(check_pool(bad).is_err(), "{bad}");
        }
        assert!(check_disc("vdb:/srv/sata1").is_ok());
        assert!(check_disc("nvme0n1:/srv/ssd:format").is_ok());
        for bad in [
            "vdb",
            "vdb:/srv:wipe",
            "../sda:/srv",
            "vdb:srv",
            "vdb:/srv:format:x",
            "sd-b:/srv",
        ] {
            assert!(check_disc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_devices_and_directories_are_used_once() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(check_pools(&v(&["a:sata:/srv/a", "b:ssd:/srv/b"])).is_ok());
        assert!(check_pools(&v(&["a:sata:/srv/a", "a:ssd:/srv/b"])).is_err());
        assert!(check_pools(&v(&["a:sata:/srv/a", "b:ssd:/srv/a"])).is_err());
        assert!(check_discs(&v(&["vdb:/srv/a:format", "vdc:/srv/b"])).is_ok());
        assert!(check_discs(&v(&["vdb:/srv/a", "vdb:/srv/b"])).is_err());
        assert!(check_discs(&v(&["vdb:/srv/a:format", "vdc:/srv/a"])).is_err());
        assert!(check_discs(&v(&["vdb:/srv/a:format", "nope"])).is_err());
    }
}
