//! Which kernel modules to load, in which order: the closure of a list of
//! wanted modules over `modules.dep` (hard dependencies) and
//! `modules.softdep` (`pre:` soft dependencies, e.g. ext4 wants crc32c),
//! ordered so every module comes after what it needs.
//!
//! The image builder uses the same code to pick the files that go into
//! the initrd and writes a `modules.dep`/`modules.softdep` pair for just
//! those (softdep targets already resolved from aliases to module names),
//! so init computes the identical order at boot.
//!
//! Module names are normalised as the kernel does: `-` becomes `_`
//! (`crc32c-intel.ko` is the module `crc32c_intel`).

use std::collections::{BTreeMap, BTreeSet};

/// One module from `modules.dep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// Relative to `/lib/modules/<version>/`, as written in `modules.dep`.
    pub path: String,
    /// Hard dependencies, by name.
    pub deps: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModulesError {
    #[error("modules.dep line {line}: {why}")]
    BadDep { line: usize, why: &'static str },
    #[error("module {name:?} is not in modules.dep")]
    Unknown { name: String },
    #[error("modules {cycle:?} depend on each other")]
    Cycle { cycle: Vec<String> },
}

/// `modules.dep` (+ soft dependencies and aliases) of one kernel.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    modules: BTreeMap<String, Module>,
    /// name → softdep `pre:` targets (names or aliases).
    soft_pre: BTreeMap<String, Vec<String>>,
    /// alias → module names (exact aliases only; globs are for devices).
    aliases: BTreeMap<String, Vec<String>>,
}

/// `kernel/fs/ext4/ext4.ko` → `ext4`; `crc32c-intel.ko.xz` → `crc32c_intel`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalise(stem)
}

pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleIndex {
    /// Parses the kernel's `modules.dep`, `modules.softdep` and
    /// `modules.alias` (either of the last two may be empty).
    pub fn parse(dep: &str, softdep: &str, alias: &str) -> Result<ModuleIndex, ModulesError> {
        let mut modules = BTreeMap::new();
        for (i, line) in dep.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (path, deps) = line.split_once(':').ok_or(ModulesError::BadDep {
                line: i + 1,
                why: "no ':'",
            })?;
            if !path.contains(".ko") {
                return Err(ModulesError::BadDep {
                    line: i + 1,
                    why: "not a .ko path",
                });
            }
            let name = module_name(path);
            modules.insert(
                name.clone(),
                Module {
                    name,
                    path: path.to_owned(),
                    deps: deps.split_whitespace().map(module_name).collect(),
                },
            );
        }
        let mut soft_pre: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(name) = words.next() else { continue };
            let mut pre = false;
            for w in words {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    _ if pre => soft_pre
                        .entry(normalise(name))
                        .or_default()
                        .push(normalise(w)),
                    _ => {}
                }
            }
        }
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (words.next(), words.next(), words.next())
                && !a.contains(['*', '?', '['])
            {
                aliases.entry(normalise(a)).or_default().push(normalise(m));
            }
        }
        Ok(ModuleIndex {
            modules,
            soft_pre,
            aliases,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Module> {
        self.modules.get(&normalise(name))
    }

    /// A module name, or the modules an alias stands for (only those in
    /// the index), in a fixed order.
    fn resolve(&self, name: &str) -> Vec<&str> {
        let name = normalise(name);
        if let Some(m) = self.modules.get(&name) {
            return vec![m.name.as_str()];
        }
        self.aliases
            .get(&name)
            .into_iter()
            .flatten()
            .filter_map(|m| self.modules.get(m).map(|m| m.name.as_str()))
            .collect()
    }

    /// The resolved `pre:` soft dependencies of `name`.
    pub fn soft_pre(&self, name: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for target in self.soft_pre.get(&normalise(name)).into_iter().flatten() {
            for m in self.resolve(target) {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// The closure of `wanted` in load order. A wanted module that is not
    /// in the index is an error; a soft dependency that is not is skipped
    /// (that is what "soft" means).
    pub fn load_order<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Vec<&Module>, ModulesError> {
        let mut done = BTreeSet::new();
        let mut out = Vec::new();
        for w in wanted {
            let name = normalise(w.as_ref());
            if !self.modules.contains_key(&name) {
                return Err(ModulesError::Unknown { name });
            }
            self.visit(&name, &mut Vec::new(), &mut done, &mut out)?;
        }
        Ok(out)
    }

    fn visit<'a>(
        &'a self,
        name: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<&'a Module>,
    ) -> Result<(), ModulesError> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            let mut cycle = path.clone();
            cycle.push(name.to_owned());
            return Err(ModulesError::Cycle { cycle });
        }
        let Some(module) = self.modules.get(name) else {
            return Err(ModulesError::Unknown { name: name.into() });
        };
        path.push(name.to_owned());
        for soft in self.soft_pre(name) {
            // A soft dependency that itself needs `name` is not a reason
            // to fail; the kernel's modprobe would just skip it too.
            if !path.iter().any(|p| p == soft) {
                self.visit(soft, path, done, out)?;
            }
        }
        // modules.dep lists the deepest dependency last; visiting in
        // reverse keeps the kernel's own order where it is unambiguous.
        for dep in module.deps.iter().rev() {
            self.visit(dep, path, done, out)?;
        }
        path.pop();
        done.insert(name.to_owned());
        out.push(module);
        Ok(())
    }

    /// A `modules.dep` for just `modules` (paths unchanged).
    pub fn dep_file(modules: &[&Module]) -> String {
        let mut sorted: Vec<&&Module> = modules.iter().collect();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        let mut s = String::new();
        for m in sorted {
            s.push_str(&m.path);
            s.push(':');
            for d in &m.deps {
                if let Some(dm) = modules.iter().find(|x| &x.name == d) {
                    s.push(' ');
                    s.push_str(&dm.path);
                }
            }
            s.push('\n');
        }
        s
    }

    /// A `modules.softdep` for just `modules`, with the `pre:` targets
    /// resolved to module names that are among them.
    pub fn softdep_file(&self, modules: &[&Module]) -> String {
        let mut s = String::new();
        let mut names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        for name in &names {
            let pre: Vec<&str> = self
                .soft_pre(name)
                .into_iter()
                .filter(|p| names.contains(p))
                .collect();
            if !pre.is_empty() {
                s.push_str(&format!("softdep {name} pre: {}\n", pre.join(" ")));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Debian 6.1's depmod writes them.
    const DEP: &str = "\
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/crypto/crc32c_generic.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/crypto/ccp/ccp.ko:
kernel/virt/lib/irqbypass.ko:
";
    const SOFTDEP: &str = "# comment\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\nsoftdep missing pre: nothing post: virtio\n";
    const ALIAS: &str = "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v00001AF4d* virtio_pci\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(DEP, SOFTDEP, ALIAS).unwrap()
    }

    fn names(list: &[&Module]) -> Vec<String> {
        list.iter().map(|m| m.name.clone()).collect()
    }

    fn assert_before(order: &[String], a: &str, b: &str) {
        let ia = order
            .iter()
            .position(|x| x == a)
            .unwrap_or_else(|| panic!("{a} missing"));
        let ib = order
            .iter()
            .position(|x| x == b)
            .unwrap_or_else(|| panic!("{b} missing"));
        assert!(ia < ib, "{a} must load before {b}: {order:?}");
    }

    #[test]
    fn every_module_comes_after_what_it_needs() {
        let ix = index();
        let order = names(&ix.load_order(&["ext4", "virtio_net", "kvm-amd"]).unwrap());
        assert_eq!(order.len(), 15, "{order:?}");
        for (a, b) in [
            ("crc16", "ext4"),
            ("jbd2", "ext4"),
            ("mbcache", "ext4"),
            ("crc32c_intel", "jbd2"),
            ("crc32c_generic", "jbd2"),
            ("failover", "net_failover"),
            ("net_failover", "virtio_net"),
            ("virtio_ring", "virtio_net"),
            ("irqbypass", "kvm"),
            ("kvm", "kvm_amd"),
            ("ccp", "kvm_amd"),
        ] {
            assert_before(&order, a, b);
        }
        // No module twice.
        let unique: BTreeSet<_> = order.iter().collect();
        assert_eq!(unique.len(), order.len());
    }

    #[test]
    fn unknown_wanted_module_is_an_error_naming_it() {
        let e = index().load_order(&["ext4", "zfs"]).unwrap_err();
        assert_eq!(e.to_string(), "module \"zfs\" is not in modules.dep");
    }

    #[test]
    fn cycles_are_reported() {
        let ix = ModuleIndex::parse("a.ko: b.ko\nb.ko: a.ko\n", "", "").unwrap();
        assert!(matches!(
            ix.load_order(&["a"]),
            Err(ModulesError::Cycle { .. })
        ));
    }

    #[test]
    fn filtered_files_give_the_same_order_without_aliases() {
        let ix = index();
        let order = ix.load_order(&["ext4", "virtio_net"]).unwrap();
        let dep = ModuleIndex::dep_file(&order);
        let soft = ix.softdep_file(&order);
        assert!(
            soft.contains("softdep ext4 pre: crc32c_intel crc32c_generic"),
            "{soft}"
        );
        let small = ModuleIndex::parse(&dep, &soft, "").unwrap();
        assert_eq!(
            names(&small.load_order(&["ext4", "virtio_net"]).unwrap()),
            names(&order)
        );
        assert!(!dep.contains("kvm"));
    }

    #[test]
    fn bad_dep_lines_are_refused() {
        assert!(ModuleIndex::parse("no colon here\n", "", "").is_err());
        assert!(ModuleIndex::parse("foo.txt:\n", "", "").is_err());
        assert_eq!(module_name("kernel/a/crc32c-intel.ko.xz"), "crc32c_intel");
    }
}
