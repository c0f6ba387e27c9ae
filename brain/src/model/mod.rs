//! The brain's model of the cluster: typed records, their tables, and an
//! in-memory copy of all of them that readers share.
//!
//! Writes go through [`Db::mutate`]: the change is committed durably to the
//! store first and only then applied to the in-memory copy, so a reader
//! never sees state that a crash could lose, and a failed write changes
//! nothing anywhere.

mod db;
mod ids;
mod index;
mod records;

use std::collections::BTreeMap;

pub use db::{Db, DbError, Tx};
pub use ids::*;
pub use index::{AddressSet, Indexes, Placed, Runs, number as address_number};
pub use records::*;

use crate::store::{Schema, Table, TableInfo, TableKey};

/// A stored record type: its table, key and place in [`Model`].
pub trait Record: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + 'static {
    type Key: TableKey + Send;
    const TABLE: Table<Self::Key, Self>;
    fn key(&self) -> Self::Key;
    fn map(model: &mut Model) -> &mut BTreeMap<Self::Key, Self>;
}

macro_rules! records {
    ($($field:ident: $ty:ty, $table:literal, $key:ty, |$r:ident| $keyexpr:expr;)*) => {
        /// Every record, in memory. Maps are keyed like their tables.
        #[derive(Debug, Clone, Default)]
        pub struct Model {
            $(pub $field: BTreeMap<$key, $ty>,)*
            pub settings: Settings,
            /// Derived lookups (see `index.rs`); not stored.
            index: Indexes,
        }

        $(impl Record for $ty {
            type Key = $key;
            const TABLE: Table<$key, $ty> = Table::new($table);
            fn key(&self) -> $key {
                let $r = self;
                $keyexpr
            }
            fn map(model: &mut Model) -> &mut BTreeMap<$key, $ty> {
                &mut model.$field
            }
        })*

        const TABLES: &[TableInfo] = &[$(<$ty as Record>::TABLE.info(),)* SETTINGS.info()];

        impl Model {
            /// Loads every table.
            pub(crate) fn load(txn: &impl crate::store::Reader) -> Result<Model, crate::store::StoreError> {
                let mut model = Model {
                    $($field: txn.iter(<$ty as Record>::TABLE)?.into_iter().collect(),)*
                    settings: txn.get(SETTINGS, SETTINGS_KEY)?.unwrap_or_default(),
                    index: Indexes::default(),
                };
                model.reindex();
                Ok(model)
            }
        }
    };
}

records! {
    accounts: Account, "accounts", u64, |r| r.id.0;
    groups: Group, "groups", u64, |r| r.id.0;
    vms: Vm, "vms", u64, |r| r.id.0;
    discs: Disc, "discs", u64, |r| r.id.0;
    nics: Nic, "nics", u64, |r| r.id.0;
    ips: IpRecord, "ips", String, |r| r.address.clone();
    ip_ranges: IpRange, "ip_ranges", u64, |r| r.id.0;
    vlans: Vlan, "vlans", u64, |r| r.id.0;
    users: User, "users", u64, |r| r.id.0;
    privileges: Privilege, "privileges", u64, |r| r.id.0;
    api_keys: ApiKey, "api_keys", u64, |r| r.id.0;
    sessions: Session, "sessions", String, |r| r.token_sha256.clone();
    nodes: Node, "nodes", String, |r| r.node_id.clone();
    pools: Pool, "pools", String, |r| r.label.clone();
    images: Image, "images", String, |r| r.name.clone();
    affinity_groups: AntiAffinityGroup, "anti_affinity_groups", u64, |r| r.id.0;
    operations: Operation, "operations", u64, |r| r.id.0;
    machines: Machine, "machines", String, |r| r.mac.clone();
    backups: Backup, "backups", u64, |r| r.id;
    backup_schedules: BackupSchedule, "backup_schedules", u64, |r| r.id;
}

pub(crate) const SETTINGS: Table<String, Settings> = Table::new("settings");
pub(crate) const SETTINGS_KEY: &str = "cluster";

/// The store layout. Add a migration (never edit one) when a stored shape
/// changes incompatibly; the schema version is the number of migrations.
pub const SCHEMA: Schema = Schema::new(TABLES, &[]);

/// Lookups the API and reconciler share. Those a request makes per VM
/// (by name, a VM's discs and NICs) go through the indexes of `index.rs`:
/// at 20,000 VMs a scan per request made vm_create and GET grow with the
/// cluster. Rarer ones (accounts, users, groups) still scan.
impl Model {
    pub fn account(&self, id: AccountId) -> Option<&Account> {
        self.accounts.get(&id.0)
    }

    pub fn account_named(&self, name: &str) -> Option<&Account> {
        self.accounts.values().find(|a| a.name == name)
    }

    pub fn group(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(&id.0)
    }

    pub fn groups_of(&self, account: AccountId) -> impl Iterator<Item = &Group> {
        self.groups
            .values()
            .filter(move |g| g.account_id == account)
    }

    pub fn group_named(&self, account: AccountId, name: &str) -> Option<&Group> {
        self.groups_of(account).find(|g| g.name == name)
    }

    pub fn vm(&self, id: VmId) -> Option<&Vm> {
        self.vms.get(&id.0)
    }

    pub fn vms_in(&self, group: GroupId) -> impl Iterator<Item = &Vm> {
        self.vms.values().filter(move |v| v.group_id == group)
    }

    pub fn vm_named(&self, group: GroupId, name: &str) -> Option<&Vm> {
        self.vms_named(group, name).next()
    }

    /// The group's VM of that name that is not soft-deleted.
    pub fn vm_named_live(&self, group: GroupId, name: &str) -> Option<&Vm> {
        self.vms_named(group, name).find(|v| !v.deleted)
    }

    pub fn disc(&self, id: DiscId) -> Option<&Disc> {
        self.discs.get(&id.0)
    }

    /// A VM's discs in creation order (the first is the boot disc).
    pub fn discs_of(&self, vm: VmId) -> impl Iterator<Item = &Disc> {
        self.disc_ids_of(vm).filter_map(|id| self.disc(id))
    }

    pub fn nics_of(&self, vm: VmId) -> impl Iterator<Item = &Nic> {
        self.nic_ids_of(vm).filter_map(|id| self.nics.get(&id.0))
    }

    pub fn user(&self, id: UserId) -> Option<&User> {
        self.users.get(&id.0)
    }

    pub fn user_named(&self, username: &str) -> Option<&User> {
        self.users.values().find(|u| u.username == username)
    }

    /// The account a VM belongs to, through its group.
    pub fn account_of_vm(&self, vm: &Vm) -> Option<&Account> {
        self.group(vm.group_id)
            .and_then(|g| self.account(g.account_id))
    }

    /// `vm.group.account.<cluster domain>`.
    pub fn hostname(&self, vm: &Vm) -> String {
        let group = self.group(vm.group_id);
        let account = group.and_then(|g| self.account(g.account_id));
        format!(
            "{}.{}.{}.{}",
            vm.name,
            group.map_or("?", |g| g.name.as_str()),
            account.map_or("?", |a| a.name.as_str()),
            self.settings.cluster_domain
        )
    }

    /// A disc's backups, oldest first.
    pub fn backups_of(&self, disc: DiscId) -> impl Iterator<Item = &Backup> {
        self.backups.values().filter(move |b| b.disc_id == disc)
    }

    pub fn schedules_of(&self, disc: DiscId) -> impl Iterator<Item = &BackupSchedule> {
        self.backup_schedules
            .values()
            .filter(move |s| s.disc_id == disc)
    }

    pub fn pools_of(&self, node_id: &str) -> impl Iterator<Item = &Pool> {
        self.pools.values().filter(move |p| p.node_id == node_id)
    }
}
