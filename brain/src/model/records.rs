//! Every record the brain stores: the desired state of the cluster.
//!
//! What nodes actually run is not stored: it comes from the spine and
//! vanishes with the connection. Records hold ids of other records, never
//! copies of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use bigv_spine::resource::{ImagerOptions, TemplateCopy, VmSignal};

use super::ids::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    #[serde(default)]
    pub suspended: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub id: GroupId,
    pub account_id: AccountId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub id: VmId,
    pub group_id: GroupId,
    pub name: String,
    pub cores: u32,
    /// MiB.
    pub memory: u64,
    /// Desired power state; the reconciler keeps it truthful (a VM that
    /// stopped with autoreboot off is recorded as off). `power_on=false`
    /// with `autoreboot_on=true` means "reboot": the reconciler stops it,
    /// then sets `power_on` again and starts it afresh (bigv-api.md §5.4).
    pub power_on: bool,
    pub autoreboot_on: bool,
    pub cdrom_url: Option<String>,
    pub hardware_profile: String,
    #[serde(default)]
    pub hardware_profile_locked: bool,
    pub keymap: Option<String>,
    pub zone_name: Option<String>,
    #[serde(default)]
    pub deleted: bool,
    /// Unix seconds of the soft delete; the purge timer counts from here.
    #[serde(default)]
    pub deleted_at: Option<u64>,
    pub management_address: Option<String>,
    /// The head the brain placed the VM on (its node id), if any.
    #[serde(default)]
    pub head: Option<String>,
    /// Raised with every order about this VM (spine generations).
    #[serde(default)]
    pub generation: u64,
    /// The last signal ordered; delivered once per `seq`.
    #[serde(default)]
    pub signal: Option<VmSignal>,
    #[serde(default)]
    pub anti_affinity_group: Option<AffinityGroupId>,
    #[serde(default)]
    pub last_imaged_with: Option<String>,
    /// What the last imaging asked the guest to set up (root password as
    /// a SHA-512 crypt hash only), sent to the head in the VM resource.
    /// Never shown through the API.
    #[serde(default)]
    pub imager_options: Option<ImagerOptions>,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disc {
    pub id: DiscId,
    pub vm_id: VmId,
    pub label: String,
    /// MiB.
    pub size: u64,
    pub storage_grade: String,
    /// The pool (label) the brain placed it in, if any yet.
    #[serde(default)]
    pub storage_pool: Option<String>,
    /// Its own address on the storage LAN.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub iops_limit: Option<u64>,
    /// The latest reimage ordered onto this disc.
    #[serde(default)]
    pub template: Option<TemplateCopy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub id: NicId,
    pub vm_id: VmId,
    pub label: Option<String>,
    pub mac: String,
    pub vlan_num: u32,
    /// Primary addresses (one IPv4, one IPv6 when available).
    pub ips: Vec<String>,
    /// Extra address → the primary address it is routed via.
    #[serde(default)]
    pub extra_ips: BTreeMap<String, String>,
}

/// An address handed out from a range; absent from the table when free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpRecord {
    pub address: String,
    pub range_id: IpRangeId,
    pub nic_id: Option<NicId>,
    #[serde(default)]
    pub rdns: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpRange {
    pub id: IpRangeId,
    /// CIDR, e.g. `192.0.2.0/24`; the first host is the router.
    pub spec: String,
    pub vlan_num: u32,
    #[serde(default)]
    pub zones: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vlan {
    pub id: VlanId,
    pub num: u32,
    pub usage_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    /// Newline-separated, as the clients send it.
    #[serde(default)]
    pub authorized_keys: String,
    /// argon2 PHC string; `None` for users who log in only with API keys.
    pub password_hash: Option<String>,
}

/// Privilege levels, highest first; the order matters (`Ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    VmConsole,
    VmAdmin,
    GroupAdmin,
    AccountAdmin,
    ClusterAdmin,
    ClusterSu,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::ClusterSu,
        Level::ClusterAdmin,
        Level::AccountAdmin,
        Level::GroupAdmin,
        Level::VmAdmin,
        Level::VmConsole,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::ClusterSu => "cluster_su",
            Level::ClusterAdmin => "cluster_admin",
            Level::AccountAdmin => "account_admin",
            Level::GroupAdmin => "group_admin",
            Level::VmAdmin => "vm_admin",
            Level::VmConsole => "vm_console",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// What a privilege applies to; the kind follows the level's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Cluster,
    Account(AccountId),
    Group(GroupId),
    Vm(VmId),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Privilege {
    pub id: PrivilegeId,
    pub user_id: UserId,
    pub level: Level,
    pub target: Target,
    #[serde(default)]
    pub api_key_id: Option<ApiKeyId>,
    #[serde(default)]
    pub password_required: bool,
    #[serde(default)]
    pub yubikey_required: bool,
    #[serde(default)]
    pub yubikey_otp_max_age: Option<u64>,
    #[serde(default)]
    pub ip_restrictions: Option<Vec<String>>,
    #[serde(default)]
    pub creating_username: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub label: String,
    /// SHA-256 (hex) of the secret; the secret itself is shown once.
    pub secret_sha256: String,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// A login session; keyed by the SHA-256 (hex) of its token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub token_sha256: String,
    pub username: String,
    pub factors: Vec<String>,
    /// Unix seconds; fixed at login, never extended (see api/session.rs).
    pub expires_at: u64,
    pub created_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Head,
    Tail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Seen on the spine, waiting for an operator (policy `manual`).
    Pending,
    Accepted,
}

/// A head or tail the brain knows; what it runs comes from the spine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The stable id from its hello (boot NIC MAC or DMI serial).
    pub node_id: String,
    pub role: Role,
    /// Operator-facing name, e.g. `head3`, `tail1`.
    pub label: String,
    pub admission: Admission,
    #[serde(default)]
    pub zone: Option<String>,
    /// `"empty"` keeps new work off it (evacuation); `None` is normal.
    #[serde(default)]
    pub usage_strategy: Option<String>,
    /// The image version the node last declared.
    #[serde(default)]
    pub image_version: Option<String>,
    /// Addresses from its last hello (spine first).
    #[serde(default)]
    pub addresses: Vec<String>,
    pub first_seen: u64,
}

/// A machine on the boot LAN, known by the MAC it network-boots from
/// (lower-case, colon-separated: the form iPXE's `${netX/mac}` gives and
/// PXE-booted nodes use as their spine `node_id`). An operator may
/// register one in advance with its role and a fixed boot address; the
/// boot services create one for a new machine they let enroll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub mac: String,
    /// What it boots as until its node record says otherwise.
    pub role: Role,
    /// A fixed IPv4 address on the boot LAN (else one from the pool).
    #[serde(default)]
    pub boot_address: Option<String>,
    /// Registered by an operator (true) or seen enrolling (false).
    #[serde(default)]
    pub registered: bool,
    /// Its DHCP lease, persisted so a restarted brain hands it back.
    #[serde(default)]
    pub lease: Option<BootLease>,
    /// The image version its last boot script named: the version it must
    /// report on the spine.
    #[serde(default)]
    pub booted_version: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub first_seen: Option<u64>,
    #[serde(default)]
    pub last_boot_at: Option<u64>,
    /// Tails: storage pools, `NAME:GRADE:/DIR`, and data discs,
    /// `DEV:/DIR[:format]`, handed over on the kernel command line
    /// (`boot/storage.rs`); they apply from its next boot.
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub discs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootLease {
    pub address: String,
    /// Unix seconds.
    pub expires: u64,
}

/// A storage pool on a tail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// Cluster-wide name, e.g. `tail1-sata`.
    pub label: String,
    pub node_id: String,
    /// The pool's name on its tail.
    pub name: String,
    pub grade: String,
    /// Disc sizes may add up to `size × overcommit_ratio`.
    pub overcommit_ratio: f64,
    #[serde(default)]
    pub usage_strategy: Option<String>,
    #[serde(default = "one")]
    pub migration_concurrency: u32,
    #[serde(default)]
    pub iops_limit: Option<u64>,
}

fn one() -> u32 {
    1
}

/// An OS image: a template disc file the tails hold, copied on reimage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// The distribution name clients use, e.g. `bigv-test`.
    pub name: String,
    pub description: String,
    /// Size of the template, MiB: discs imaged with it must be at least this.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityPolicy {
    /// Refuse to place a member where another member runs.
    Fail,
    /// Prefer not to, but place anyway when nothing else fits.
    Allow,
}

/// VMs that must not share a head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AntiAffinityGroup {
    pub id: AffinityGroupId,
    pub account_id: AccountId,
    pub name: String,
    pub policy: AffinityPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OperationKind {
    MigrateVm {
        vm_id: VmId,
        to_head: Option<String>,
        /// qemu's final downtime (ms) as the source head reported it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        downtime_ms: Option<u64>,
    },
    MigrateDisc {
        disc_id: DiscId,
        to_pool: Option<String>,
    },
    EmptyHead {
        node_id: String,
    },
    EmptyPool {
        pool: String,
    },
    Reimage {
        vm_id: VmId,
        distribution: String,
    },
    /// A rolling upgrade: every node in turn is emptied, rebooted onto
    /// `version`, checked and put back into service (reconciler/upgrades.rs).
    Upgrade {
        version: String,
        /// The cluster's target before the upgrade set it to `version`.
        #[serde(default)]
        from_version: Option<String>,
        /// How long a node may take from its reboot order to being back
        /// on the spine with `version`.
        reboot_timeout_secs: u64,
        /// The nodes in the order they are upgraded.
        nodes: Vec<UpgradeNode>,
    },
}

/// Where one node is in a rolling upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeStep {
    /// Not reached yet.
    Pending,
    /// Left alone: already on the version, or offline (`note` says).
    Skipped,
    /// Out of service, its VMs (head) or discs (tail) moving away.
    Evacuating,
    /// Empty; the reboot is ordered and it has not gone down yet.
    Rebooting,
    /// Gone from the spine; waiting for it to come back.
    Booting,
    /// Back on the version and in service again.
    Done,
    /// Came back on another version, or not in time: the upgrade stopped.
    Failed,
}

impl UpgradeStep {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeStep::Pending => "pending",
            UpgradeStep::Skipped => "skipped",
            UpgradeStep::Evacuating => "evacuating",
            UpgradeStep::Rebooting => "rebooting",
            UpgradeStep::Booting => "booting",
            UpgradeStep::Done => "done",
            UpgradeStep::Failed => "failed",
        }
    }
}

/// One node of a rolling upgrade, with the times (unix seconds) each step
/// began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeNode {
    pub node_id: String,
    pub label: String,
    pub role: Role,
    pub step: UpgradeStep,
    /// Why it was skipped or failed.
    #[serde(default)]
    pub note: Option<String>,
    /// Its usage strategy before the upgrade took it out of service, put
    /// back when it is re-admitted.
    #[serde(default)]
    pub usage_strategy: Option<String>,
    /// VMs or discs it held when its evacuation began.
    #[serde(default)]
    pub to_move: u64,
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub reboot_at: Option<u64>,
    #[serde(default)]
    pub down_at: Option<u64>,
    #[serde(default)]
    pub finished_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Running,
    Done,
    Failed,
    Cancelled,
}

/// A multi-step operation, persisted so a restarted brain resumes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: OperationId,
    #[serde(flatten)]
    pub kind: OperationKind,
    pub state: OperationState,
    /// Where in its steps it is, e.g. `copying`, `waiting-for-stop`.
    pub phase: String,
    pub done: u64,
    pub total: u64,
    #[serde(default)]
    pub error: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// Cluster-wide settings (one record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// VMs are named `vm.group.account.<cluster_domain>`.
    pub cluster_domain: String,
    pub zones: Vec<String>,
    /// Heads kept empty for emergencies (paper §8).
    pub reserve_heads: usize,
    /// A head that lost the spine kills its VMs after this long.
    pub fence_timeout_secs: u64,
    /// The brain waits this much longer before restarting them elsewhere.
    pub fence_margin_secs: u64,
    /// Soft-deleted VMs are purged after this long.
    pub purge_after_secs: u64,
    /// New nodes: `auto` accepts them, `manual` leaves them pending.
    pub admission: String,
    /// Disc sizes in a pool may add up to size × this, for new pools.
    pub default_overcommit_ratio: f64,
    /// Machines the brain does not know: `open` lets them network-boot
    /// and enroll (they join as `admission` says), `closed` ignores them.
    #[serde(default = "open")]
    pub enrollment: String,
    /// The role an enrolling machine boots as (unless registered).
    #[serde(default = "head")]
    pub enrollment_role: Role,
    /// The node image version machines network-boot (`None` until the
    /// first node image is added, which becomes the target).
    #[serde(default)]
    pub node_image_version: Option<String>,
}

fn open() -> String {
    "open".into()
}

fn head() -> Role {
    Role::Head
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_domain: "bigv.test".into(),
            zones: vec!["york".into(), "manchester".into()],
            reserve_heads: 0,
            fence_timeout_secs: 120,
            fence_margin_secs: 30,
            purge_after_secs: 28 * 24 * 3600,
            admission: "auto".into(),
            default_overcommit_ratio: 1.0,
            enrollment: open(),
            enrollment_role: Role::Head,
            node_image_version: None,
        }
    }
}

/// A backup of a disc (bigv-api.md §9): a copy its tail holds beside it
/// (or in the tail's `iceberg` pool). The id is also its name on the
/// spine (`backups.keep`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    pub id: u64,
    pub disc_id: DiscId,
    /// Taken on request (POST), not by a schedule.
    pub manual: bool,
    /// The schedule that took it, if any.
    #[serde(default)]
    pub schedule_id: Option<u64>,
    /// The disc's size when ordered, MiB.
    pub size: u64,
    /// Unix seconds, when it was ordered.
    pub created_at: u64,
    pub state: BackupState,
    /// Reported by the tail once taken.
    #[serde(default)]
    pub storage_pool: Option<String>,
    /// The tail holding it (a disc that moves to another tail leaves its
    /// backups behind: they are then lost).
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub allocated: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    /// The latest restore of the disc from this backup.
    #[serde(default)]
    pub restore: Option<BackupRestore>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    /// Ordered; the tail has not reported it yet.
    Pending,
    Taken,
    /// The tail could not take it (`error` says why); it is not retried.
    Failed,
    /// Deleted by request or pruning; gone once the tail reports it gone.
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRestore {
    /// The spine's `restore.seq` (unique: drawn from the backup ids).
    pub seq: u64,
    pub state: RestoreState,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreState {
    Pending,
    Done,
    Failed,
}

/// Backups taken every `interval_seconds` from `start_at`, the newest
/// `capacity` of them kept (0: all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSchedule {
    pub id: u64,
    pub disc_id: DiscId,
    /// As given (free-form date text, bigv-api.md §9).
    pub start_at: String,
    pub interval_seconds: u64,
    pub capacity: u64,
    /// Unix seconds of the next backup.
    pub next_at: u64,
}
