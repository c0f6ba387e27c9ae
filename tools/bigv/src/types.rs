//! The API's objects as this client reads them (bigv-api.md §3-§11).
//!
//! Only what the commands use is typed; every struct tolerates missing
//! and extra fields, so a newer brain does not break an older client.
//! `--json` prints the brain's own objects, never these.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

macro_rules! id_type {
    ($($name:ident),*) => {$(
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}

id_type!(
    AccountId,
    GroupId,
    VmId,
    DiscId,
    NicId,
    UserId,
    PrivilegeId,
    ApiKeyId,
    OperationId
);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub suspended: bool,
    pub groups: Vec<Group>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Group {
    pub id: GroupId,
    pub account_id: AccountId,
    pub name: String,
    pub virtual_machines: Vec<Vm>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Vm {
    pub id: VmId,
    pub name: String,
    pub group_id: GroupId,
    pub cores: u64,
    pub memory: u64,
    pub power_on: bool,
    pub autoreboot_on: bool,
    pub deleted: bool,
    pub cdrom_url: Option<String>,
    pub hardware_profile: Option<String>,
    pub hardware_profile_locked: bool,
    pub keymap: Option<String>,
    pub zone_name: Option<String>,
    pub head: Option<String>,
    pub management_address: Option<String>,
    pub hostname: Option<String>,
    pub discs: Vec<Disc>,
    pub network_interfaces: Vec<Nic>,
    pub last_imaged_with: Option<String>,
}

impl Vm {
    /// `web1.default`: the first two labels of the hostname.
    pub fn short_name(&self) -> String {
        match &self.hostname {
            Some(h) if !h.is_empty() => h.split('.').take(2).collect::<Vec<_>>().join("."),
            _ => self.name.clone(),
        }
    }

    pub fn state(&self) -> &'static str {
        if self.deleted {
            "deleted"
        } else if self.power_on {
            "powered on"
        } else {
            "powered off"
        }
    }

    /// Every IP of every NIC, primary ones first.
    pub fn ips(&self) -> Vec<String> {
        let mut ips: Vec<String> = vec![];
        for nic in &self.network_interfaces {
            ips.extend(nic.ips.iter().cloned());
        }
        for nic in &self.network_interfaces {
            ips.extend(nic.extra_ips.keys().cloned());
        }
        ips
    }

    pub fn total_disc_size(&self) -> u64 {
        self.discs.iter().map(|d| d.size).sum()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Disc {
    pub id: DiscId,
    pub label: String,
    pub size: u64,
    pub storage_grade: String,
    pub storage_pool: Option<String>,
    pub virtual_machine_id: VmId,
    pub iops_limit: Option<u64>,
    pub backup_count: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Nic {
    pub id: NicId,
    pub label: Option<String>,
    pub mac: Option<String>,
    pub vlan_num: Option<u64>,
    pub ips: Vec<String>,
    pub extra_ips: BTreeMap<String, Value>,
    pub virtual_machine_id: VmId,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: Option<String>,
    pub authorized_keys: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Privilege {
    pub id: PrivilegeId,
    pub username: Option<String>,
    pub level: String,
    pub account_id: Option<u64>,
    pub account_name: Option<String>,
    pub group_id: Option<u64>,
    pub group_name: Option<String>,
    pub virtual_machine_id: Option<u64>,
    pub virtual_machine_name: Option<String>,
    pub api_key_id: Option<u64>,
    pub password_required: bool,
    pub yubikey_required: bool,
    pub creating_username: Option<String>,
}

impl Privilege {
    /// What it is on: `web1.default.alice`, `default.alice`, `alice` or
    /// `the cluster`.
    pub fn target(&self) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "?".into());
        if let Some(vm) = &self.virtual_machine_name {
            format!("{vm}.{}.{}", opt(&self.group_name), opt(&self.account_name))
        } else if let Some(group) = &self.group_name {
            format!("{group}.{}", opt(&self.account_name))
        } else if let Some(account) = &self.account_name {
            account.clone()
        } else {
            "the cluster".into()
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub username: Option<String>,
    pub label: String,
    pub api_key: Option<String>,
    pub expires_at: Option<String>,
    pub privileges: Vec<Privilege>,
}

/// `GET /definitions`, gathered from its `[{"id":..,"data":..}]` list.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    pub distributions: Vec<String>,
    pub distribution_descriptions: BTreeMap<String, String>,
    pub storage_grades: Vec<String>,
    pub storage_grade_descriptions: BTreeMap<String, String>,
    pub zone_names: Vec<String>,
    pub hardware_profiles: Vec<String>,
    pub keymaps: Vec<String>,
}

impl Definitions {
    pub fn from_value(value: &Value) -> Definitions {
        let mut d = Definitions::default();
        let Some(items) = value.as_array() else {
            return d;
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let map = |v: &Value| -> BTreeMap<String, String> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default()
        };
        for item in items {
            let data = &item["data"];
            match item["id"].as_str().unwrap_or("") {
                "distributions" => d.distributions = strings(data),
                "distribution_descriptions" => d.distribution_descriptions = map(data),
                "storage_grades" => d.storage_grades = strings(data),
                "storage_grade_descriptions" => d.storage_grade_descriptions = map(data),
                "zone_names" => d.zone_names = strings(data),
                "hardware_profiles" => d.hardware_profiles = strings(data),
                "keymaps" => d.keymaps = strings(data),
                _ => {}
            }
        }
        d
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Head {
    pub id: u64,
    pub uuid: String,
    pub label: String,
    pub zone: Option<String>,
    pub cnc_address: Option<String>,
    pub total_memory: u64,
    pub free_memory: u64,
    pub usage_strategy: Option<String>,
    pub online: bool,
    pub admission: Option<String>,
    pub image_version: Option<String>,
    /// The version the brain booted it with, when it booted it.
    pub image_expected: Option<String>,
    /// It runs another version than it was booted with: out of service.
    pub image_mismatch: bool,
    pub used_cores: u64,
    pub virtual_machines_count: u64,
    pub virtual_machines: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Tail {
    pub id: u64,
    pub uuid: String,
    pub label: String,
    pub zone: Option<String>,
    pub cnc_address: Option<String>,
    pub online: bool,
    pub admission: Option<String>,
    pub usage_strategy: Option<String>,
    pub image_version: Option<String>,
    pub image_expected: Option<String>,
    pub image_mismatch: bool,
    pub pools: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pool {
    pub label: String,
    pub tail: Option<String>,
    pub zone: Option<String>,
    pub grade: String,
    pub size: u64,
    pub free_space: u64,
    pub ceiling: u64,
    pub alloc: u64,
    pub discs_count: u64,
    pub overcommit_ratio: Option<f64>,
    pub migration_concurrency: Option<u64>,
    pub usage_strategy: Option<String>,
    pub iops_limit: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IpRange {
    pub id: u64,
    pub spec: String,
    pub vlan_num: u64,
    pub zones: Vec<String>,
    pub available: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Vlan {
    pub id: u64,
    pub num: u64,
    pub usage_type: Option<String>,
    pub ip_ranges: Vec<IpRange>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Image {
    pub name: String,
    pub description: String,
    pub size: u64,
}

/// A node image: what heads and tails network-boot (`/admin/node_images`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeImage {
    pub version: String,
    pub kernel_version: Option<String>,
    pub files: std::collections::BTreeMap<String, NodeImageFile>,
    pub added_at: u64,
    pub target: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeImageFile {
    pub sha256: String,
    pub size: u64,
}

/// A machine on the boot LAN (`/admin/machines`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Machine {
    pub mac: String,
    pub role: String,
    pub registered: bool,
    /// registered, enrolling, pending or accepted.
    pub state: String,
    pub boot_address: Option<String>,
    pub address: Option<String>,
    pub booted_version: Option<String>,
    pub label: Option<String>,
    pub image_version: Option<String>,
    pub image_mismatch: bool,
    /// Tails: `NAME:GRADE:/DIR` and `DEV:/DIR[:format]`, from the next boot.
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub discs: Vec<String>,
}

/// A node's log line (`/admin/heads/{id}/logs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LogLine {
    pub at_ms: u64,
    pub level: String,
    pub source: String,
    pub message: String,
}

/// A long operation the brain carries out (`/admin/migration_jobs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Operation {
    pub id: OperationId,
    pub kind: String,
    pub description: String,
    pub state: String,
    pub phase: String,
    pub done: u64,
    pub total: u64,
    pub progress: u64,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub vm_id: Option<u64>,
    pub disc_id: Option<u64>,
    /// A live VM migration's final downtime (ms), once the source said.
    pub downtime_ms: Option<u64>,
}

impl Operation {
    pub fn finished(&self) -> bool {
        self.state != "running"
    }
}

/// A rolling upgrade (`/admin/upgrades/{id}`): an operation with its nodes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Upgrade {
    pub id: OperationId,
    pub description: String,
    pub state: String,
    pub phase: String,
    pub progress: u64,
    pub error: Option<String>,
    pub version: String,
    pub from_version: Option<String>,
    pub reboot_timeout_secs: u64,
    pub nodes: Vec<UpgradeNode>,
    pub current_node: Option<String>,
    pub nodes_done: u64,
    pub nodes_total: u64,
    pub created_at: String,
}

impl Upgrade {
    pub fn finished(&self) -> bool {
        self.state != "running"
    }
}

/// One node of an upgrade.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UpgradeNode {
    pub label: String,
    pub role: String,
    pub step: String,
    pub note: Option<String>,
    pub to_move: u64,
    pub evacuate_secs: Option<u64>,
    pub reboot_secs: Option<u64>,
    pub total_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_vm_decodes_from_the_api_shape_and_names_itself() {
        let vm: Vm = serde_json::from_value(json!({
            "id": 100, "name": "web1", "group_id": 11, "cores": 1, "memory": 1024,
            "power_on": true, "autoreboot_on": true, "deleted": false, "cdrom_url": null,
            "hostname": "web1.default.alice.uk0.bigv.io", "zone_name": "york",
            "discs": [{"id": 101, "label": "disc-1", "size": 25600, "storage_grade": "sata",
                       "storage_pool": "tail1-sata1", "virtual_machine_id": 100}],
            "network_interfaces": [{"id": 102, "label": null, "mac": "fe:ff:00:00:00:01",
                "vlan_num": 1, "ips": ["192.0.2.10", "2001:db8::10"],
                "extra_ips": {"192.0.2.99": "192.0.2.10"}, "virtual_machine_id": 100}],
            "some_new_field": [1, 2, 3]
        }))
        .unwrap();
        assert_eq!(vm.short_name(), "web1.default");
        assert_eq!(vm.state(), "powered on");
        assert_eq!(vm.ips(), ["192.0.2.10", "2001:db8::10", "192.0.2.99"]);
        assert_eq!(vm.total_disc_size(), 25600);
    }

    #[test]
    fn definitions_gather_their_lists() {
        let d = Definitions::from_value(&json!([
            {"id": "distributions", "data": ["bookworm"]},
            {"id": "storage_grades", "data": ["sata", "ssd"]},
            {"id": "distribution_descriptions", "data": {"bookworm": "Debian 12"}},
            {"id": "unknown", "data": 7}
        ]));
        assert_eq!(d.distributions, ["bookworm"]);
        assert_eq!(d.storage_grades, ["sata", "ssd"]);
        assert_eq!(d.distribution_descriptions["bookworm"], "Debian 12");
    }
}
