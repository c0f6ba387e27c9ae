//! Which kernel modules go into the guest's initramfs, in load order,
//! resolved from the kernel's `modules.dep`.

use std::collections::BTreeMap;

/// Drivers the guest loads: virtio disc and balloon (virtio profile), IDE/
/// SATA discs and CD drives (compatibility profile; the cloud-init seed
/// drive is a CD there), and the ACPI power button with evdev so
/// `system_powerdown` reaches `/init`, and the virtio NIC (networking
/// tests configure it with busybox's `ip` through the `sh` command).
pub const WANTED: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_balloon",
    "ata_piix",
    "ahci",
    "sd_mod",
    "sr_mod",
    "button",
    "evdev",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModulesError {
    #[error("module {0} is not in modules.dep")]
    Missing(String),
}

/// `modules.dep` as module name → (path, dependencies' paths).
pub fn parse_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let name = module_name(path);
            Some((
                name,
                (
                    path.trim().to_owned(),
                    deps.split_whitespace().map(str::to_owned).collect(),
                ),
            ))
        })
        .collect()
}

/// `kernel/drivers/block/virtio_blk.ko` → `virtio_blk` (`-` and `_` are
/// the same to the kernel; we keep the file's spelling).
pub fn module_name(path: &str) -> String {
    let file = path.trim().rsplit('/').next().unwrap_or_default();
    file.split(".ko").next().unwrap_or_default().to_owned()
}

/// The paths to load, dependencies first, each once.
pub fn load_order(dep: &str, wanted: &[&str]) -> Result<Vec<String>, ModulesError> {
    let table = parse_dep(dep);
    let by_path: BTreeMap<&str, &Vec<String>> =
        table.values().map(|(p, d)| (p.as_str(), d)).collect();
    let mut order: Vec<String> = Vec::new();
    for want in wanted {
        let (path, deps) = table
            .get(*want)
            .or_else(|| table.get(&want.replace('_', "-")))
            .ok_or_else(|| ModulesError::Missing((*want).to_owned()))?;
        // modules.dep lists the full closure, innermost last.
        for p in deps.iter().rev().chain(std::iter::once(path)) {
            if !order.contains(p) {
                // A dependency's own closure is part of ours already;
                // by_path is only consulted to reject a dangling entry.
                if p != path && !by_path.contains_key(p.as_str()) {
                    return Err(ModulesError::Missing(p.clone()));
                }
                order.push(p.clone());
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/input/evdev.ko:
";

    #[test]
    fn dependencies_come_first_and_once() {
        let order = load_order(DEP, &["virtio_pci", "virtio_blk", "evdev"]).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            ["virtio_ring", "virtio", "virtio_pci", "virtio_blk", "evdev"]
        );
        assert_eq!(
            load_order(DEP, &["nope"]),
            Err(ModulesError::Missing("nope".into()))
        );
    }
}
