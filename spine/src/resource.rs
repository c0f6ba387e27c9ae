//! Spine resources: named values a node holds while its connection lives.
//!
//! A resource is a name (`vm.web1`, `disc.sata.42`, `global.memory`, …) and a
//! JSON value whose shape the name decides. Values are fully "unpacked"
//! (paper fig. 5): a head needs nothing but a `vm.*` resource to run a VM.
//! Sizes are MiB unless a field name says otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest resource name we accept; names are keys in tables and logs.
pub const MAX_NAME_LEN: usize = 200;

/// Why a resource name or value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("resource {name}: invalid value: {reason}")]
    BadValue { name: String, reason: String },
}

/// The facts a node reports about itself under `global.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GlobalKind {
    /// `global.load`: 1, 5 and 15 minute load averages (heads and tails).
    Load,
    /// `global.memory`: RAM for VMs (heads).
    Memory,
    /// `global.storage_pools`: space per pool (tails).
    StoragePools,
}

impl GlobalKind {
    fn as_str(self) -> &'static str {
        match self {
            GlobalKind::Load => "load",
            GlobalKind::Memory => "memory",
            GlobalKind::StoragePools => "storage_pools",
        }
    }
}

/// A parsed resource name. The string forms are `vm.NAME`,
/// `disc.GRADE.ID` and `global.KIND`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceName {
    Vm(String),
    Disc { grade: String, id: String },
    Global(GlobalKind),
}

/// Name segments: lower-case letters, digits and `-`/`_`, not empty.
fn check_segment(name: &str, seg: &str) -> Result<(), ResourceError> {
    let ok = !seg.is_empty()
        && seg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ResourceError::BadName {
            name: name.to_owned(),
            reason: "each part must be non-empty lower-case letters, digits, '-' or '_'",
        })
    }
}

impl ResourceName {
    pub fn vm(name: impl Into<String>) -> Self {
        ResourceName::Vm(name.into())
    }

    pub fn disc(grade: impl Into<String>, id: impl Into<String>) -> Self {
        ResourceName::Disc {
            grade: grade.into(),
            id: id.into(),
        }
    }
}

impl FromStr for ResourceName {
    type Err = ResourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| ResourceError::BadName {
            name: s.chars().take(MAX_NAME_LEN).collect(),
            reason,
        };
        if s.len() > MAX_NAME_LEN {
            return Err(bad("longer than 200 bytes"));
        }
        let mut parts = s.split('.');
        let kind = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        match (kind, rest.as_slice()) {
            ("vm", [name]) => {
                check_segment(s, name)?;
                Ok(ResourceName::Vm((*name).to_owned()))
            }
            ("disc", [grade, id]) => {
                check_segment(s, grade)?;
                check_segment(s, id)?;
                Ok(ResourceName::disc(*grade, *id))
            }
            ("global", ["load"]) => Ok(ResourceName::Global(GlobalKind::Load)),
            ("global", ["memory"]) => Ok(ResourceName::Global(GlobalKind::Memory)),
            ("global", ["storage_pools"]) => Ok(ResourceName::Global(GlobalKind::StoragePools)),
            ("global", _) => Err(bad("unknown global resource")),
            ("vm", _) => Err(bad("expected vm.NAME")),
            ("disc", _) => Err(bad("expected disc.GRADE.ID")),
            _ => Err(bad(
                "unknown resource kind (expected vm., disc. or global.)",
            )),
        }
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceName::Vm(name) => write!(f, "vm.{name}"),
            ResourceName::Disc { grade, id } => write!(f, "disc.{grade}.{id}"),
            ResourceName::Global(kind) => write!(f, "global.{}", kind.as_str()),
        }
    }
}

impl Serialize for ResourceName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ResourceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// What a head reports a VM's qemu process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmRunState {
    Running,
    Paused,
    Stopped,
    Migrating,
}

/// DHCP answers the head's per-VM responder gives on one interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    pub network: String,
    pub router: String,
    pub hostname: String,
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub mac: String,
    pub vlan_id: u32,
    pub model: String,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDisc {
    /// Where the tail serves it, e.g. `nbd:[fd00::12]:10809`.
    pub address: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// How a console user logs in: SSH keys (`authorized_keys` lines) and the
/// hash of their BigV password (argon2 PHC, or SHA-crypt). `Debug` leaves
/// the hash out: orders are logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAuthentication {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized_keys: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl fmt::Debug for UserAuthentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAuthentication")
            .field(
                "authorized_keys",
                &self.authorized_keys.as_deref().map(|k| k.lines().count()),
            )
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What a guest is sent through its virtual hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// ACPI power button.
    Powerdown,
    /// The reset button: a reboot inside the same qemu process.
    Reset,
    /// Key presses, e.g. `ctrl-alt-delete`.
    Sendkey,
}

/// A signal the brain wants delivered once. The head delivers each new
/// `seq` exactly once and ignores a `seq` it has already delivered, so the
/// order can be repeated harmlessly (level-triggered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSignal {
    pub seq: u64,
    pub kind: SignalKind,
    /// Dash-separated key names for `sendkey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<String>,
}

/// The customer's choices from `vm_create`'s `reimage` block or `POST
/// …/reimage` (bigv-api.md §5.3, §5.6), as the guest should see them at
/// first boot. The root password travels only as a crypt(3) hash.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagerOptions {
    /// Changes at every imaging, so the guest runs its first-boot steps
    /// once per imaging (cloud-init's `instance-id`).
    pub instance_id: String,
    /// SHA-512 crypt (`$6$…`) of the root password; `None` leaves root's
    /// password as the image has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_password_hash: Option<String>,
    /// `authorized_keys` text for root (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ssh_public_key: String,
    /// Run once at the first boot of this imaging (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub firstboot_script: String,
}

impl ImagerOptions {
    /// The non-blank, non-comment lines of [`Self::ssh_public_key`].
    pub fn authorized_keys(&self) -> impl Iterator<Item = &str> {
        self.ssh_public_key
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    }
}

/// The hash stays out of logs.
impl fmt::Debug for ImagerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImagerOptions")
            .field("instance_id", &self.instance_id)
            .field(
                "root_password_hash",
                &self.root_password_hash.as_ref().map(|_| "<redacted>"),
            )
            .field("ssh_keys", &self.authorized_keys().count())
            .field("firstboot_script_bytes", &self.firstboot_script.len())
            .finish()
    }
}

/// `vm.NAME`: every field of the paper's fig. 5, plus what the head reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// MiB.
    pub memory: u64,
    pub cores: u32,
    pub balloon_on: bool,
    pub cdrom_url: Option<String>,
    /// What the customer asked to be set up at the last imaging; the head
    /// hands it to the guest on a cloud-init seed drive (docs/head.md).
    pub imager_options: Option<ImagerOptions>,
    pub display_name: String,
    pub keymap: String,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub discs: Vec<VmDisc>,
    pub management_address: Option<String>,
    #[serde(default)]
    pub management_ssh_keys: Vec<String>,
    #[serde(default)]
    pub console_users: Vec<String>,
    #[serde(default)]
    pub user_authentication: BTreeMap<String, UserAuthentication>,
    /// The latest signal ordered; see [`VmSignal`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<VmSignal>,
    /// Reported by the head; absent in the brain's orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmRunState>,
    /// Unix seconds when qemu started; reported by the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// Destination side of a live migration; see [`VmIncoming`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<VmIncoming>,
    /// Source side of a live migration; see [`VmMigrationOrder`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_to: Option<VmMigrationOrder>,
    /// Progress of the live migration ordered by `migrate_to`; reported by
    /// the source head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<VmMigrationProgress>,
}

/// Ordered in the `create` of a VM on the destination head of a live
/// migration: start qemu waiting for the migration stream (`-incoming`)
/// instead of booting, and report where it listens. The guest runs here
/// once the stream ends; the head then reports the VM without `incoming`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmIncoming {
    /// The source head's node id.
    pub from: String,
    /// Reported by the destination: `host:port` the source migrates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// Ordered on the source head's `vm.*`: migrate the running guest to the
/// destination's endpoint. Each new `seq` is attempted once; an order
/// without `migrate_to` cancels a migration still in progress. On success
/// the source's qemu ends and the head reports the VM `destroyed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmMigrationOrder {
    pub seq: u64,
    /// The destination head's node id (echoed in the progress).
    pub to: String,
    /// The destination's `incoming.endpoint`.
    pub endpoint: String,
    /// Bytes per second; absent: the head's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// Longest acceptable pause at the switch-over, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downtime_ms: Option<u64>,
}

/// Where a live migration stands, as the source head reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmMigrationProgress {
    /// The `migrate_to.seq` this belongs to.
    pub seq: u64,
    pub to: String,
    pub state: VmMigrationState,
    pub ram_done: u64,
    pub ram_total: u64,
    /// The pause at the switch-over, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmMigrationState {
    /// RAM is being copied; the guest runs on the source.
    #[default]
    Active,
    /// Failed or cancelled; the guest still runs on the source.
    Failed,
}

/// Where a tail → tail mirror stands, as the source reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Copying allocated extents, then blocks written meanwhile.
    #[default]
    Copying,
    /// I/O paused for the final pass and the handover.
    Syncing,
    /// Failed before the handover; the source still serves. `error` says why.
    Failed,
    /// The handover was sent but not confirmed (the connection broke). The
    /// source does not serve: the brain must look at the destination and
    /// either remove this disc (destination serves) or order it again
    /// without `migrate_to` (destination never took over) to resume here.
    Uncertain,
}

/// Progress of a tail → tail mirror, reported on the source's `disc.*`.
/// A finished migration is not reported here: the source removes its copy
/// (`destroyed`) and the destination reports the disc without `incoming`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationProgress {
    /// The destination tail's node id.
    pub to: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_per_second: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// The `migrate_to.seq` this progress belongs to.
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub state: MigrationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Ordered on the source tail's `disc.*`: mirror this disc to another
/// tail and hand it over. Each new `seq` is attempted once; a failed
/// attempt is retried by ordering a higher `seq`. An order without
/// `migrate_to` cancels a migration that has not yet handed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationOrder {
    pub seq: u64,
    /// The destination tail's node id (echoed in the progress).
    pub to: String,
    /// The destination's mirror endpoint, `[addr]:port`, as reported in
    /// the destination's `incoming.endpoint`.
    pub endpoint: String,
    /// Send the disc's backups along (protocol 4; only when both tails
    /// speak it, since older ones reject the field or the command).
    #[serde(default, skip_serializing_if = "is_false")]
    pub backups: bool,
}

/// Ordered on the destination tail's `disc.*` (in the `create`): the disc
/// arrives by mirror from another tail and is not served until the source
/// hands it over. The destination then adds `address` and serves with
/// `access_control_list`, and reports the disc without `incoming`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingMirror {
    /// The source tail's storage address: the only peer admitted.
    pub from: String,
    /// Reported by the destination: where the source connects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// An order to overwrite a disc with an OS template (reimage). The tail
/// performs each new `seq` once and reports it in `imaged_seq` when done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateCopy {
    pub seq: u64,
    /// The image (distribution) name, e.g. `bigv-test`.
    pub image: String,
}

/// `disc.GRADE.ID`: the paper's fig. 6 plus allocation and migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscSpec {
    /// MiB.
    pub size: u64,
    pub storage_pool: String,
    /// Addresses of the heads allowed to connect; empty means nobody.
    #[serde(default)]
    pub access_control_list: Vec<String>,
    /// The disc's own address on the storage LAN.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateCopy>,
    /// The last template copy finished; reported by the tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imaged_seq: Option<u64>,
    /// MiB actually allocated in the sparse file; reported by the tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationProgress>,
    /// A `size` below the current one is refused unless this is set:
    /// shrinking destroys whatever the guest kept past the new end.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_shrink: bool,
    /// Source side of a migration; see [`MigrationOrder`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_to: Option<MigrationOrder>,
    /// Destination side of a migration; see [`IncomingMirror`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<IncomingMirror>,
    /// Backups and restores (protocol 3); see `backup.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<crate::backup::DiscBackups>,
    /// I/O limits the tail enforces on the disc's clients; none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<DiscLimits>,
}

/// Per-disc I/O limits (the storage grade's guaranteed rates, set by the
/// brain). Enforced by the tail's NBD server for the disc's clients, by
/// making requests wait, never by failing them; a mirror's copy is not
/// limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscLimits {
    /// Requests per second (READ, WRITE, TRIM, WRITE_ZEROES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    /// READ and WRITE data, MiB per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mib_per_second: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `global.memory` on heads, MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryFacts {
    pub total: u64,
    pub free: u64,
}

/// One entry of `global.storage_pools` on tails, MiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFacts {
    pub grade: String,
    pub size: u64,
    pub free: u64,
    /// Sum of the sizes of the discs in the pool (can exceed `size`: overcommit).
    pub allocated: u64,
}

/// A resource value; which variant is allowed depends on the name.
// `Disc` is the common case on tails and is matched by value all over the
// brain; boxing it would cost every caller for a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceValue {
    Vm(Box<VmSpec>),
    Disc(DiscSpec),
    Load([f64; 3]),
    Memory(MemoryFacts),
    StoragePools(BTreeMap<String, PoolFacts>),
}

impl ResourceValue {
    fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            ResourceValue::Vm(v) => serde_json::to_value(v),
            ResourceValue::Disc(v) => serde_json::to_value(v),
            ResourceValue::Load(v) => serde_json::to_value(v),
            ResourceValue::Memory(v) => serde_json::to_value(v),
            ResourceValue::StoragePools(v) => serde_json::to_value(v),
        }
    }

    /// Parses `value` as the shape `name` calls for.
    pub fn from_json(name: &ResourceName, value: serde_json::Value) -> Result<Self, ResourceError> {
        let bad = |e: serde_json::Error| ResourceError::BadValue {
            name: name.to_string(),
            reason: e.to_string(),
        };
        Ok(match name {
            ResourceName::Vm(_) => ResourceValue::Vm(serde_json::from_value(value).map_err(bad)?),
            ResourceName::Disc { .. } => {
                ResourceValue::Disc(serde_json::from_value(value).map_err(bad)?)
            }
            ResourceName::Global(GlobalKind::Load) => {
                ResourceValue::Load(serde_json::from_value(value).map_err(bad)?)
            }
            ResourceName::Global(GlobalKind::Memory) => {
                ResourceValue::Memory(serde_json::from_value(value).map_err(bad)?)
            }
            ResourceName::Global(GlobalKind::StoragePools) => {
                ResourceValue::StoragePools(serde_json::from_value(value).map_err(bad)?)
            }
        })
    }

    fn fits(&self, name: &ResourceName) -> bool {
        matches!(
            (name, self),
            (ResourceName::Vm(_), ResourceValue::Vm(_))
                | (ResourceName::Disc { .. }, ResourceValue::Disc(_))
                | (
                    ResourceName::Global(GlobalKind::Load),
                    ResourceValue::Load(_)
                )
                | (
                    ResourceName::Global(GlobalKind::Memory),
                    ResourceValue::Memory(_)
                )
                | (
                    ResourceName::Global(GlobalKind::StoragePools),
                    ResourceValue::StoragePools(_)
                )
        )
    }
}

/// A named, typed resource. On the wire: `{"name": "...", "value": {...}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    name: ResourceName,
    value: ResourceValue,
}

impl Resource {
    /// Pairs a name with a value, refusing a value of the wrong kind.
    pub fn new(name: ResourceName, value: ResourceValue) -> Result<Self, ResourceError> {
        if value.fits(&name) {
            Ok(Resource { name, value })
        } else {
            Err(ResourceError::BadValue {
                name: name.to_string(),
                reason: "value is of the wrong kind for this name".into(),
            })
        }
    }

    pub fn vm(name: impl Into<String>, spec: VmSpec) -> Self {
        Resource {
            name: ResourceName::vm(name),
            value: ResourceValue::Vm(Box::new(spec)),
        }
    }

    pub fn disc(grade: impl Into<String>, id: impl Into<String>, spec: DiscSpec) -> Self {
        Resource {
            name: ResourceName::disc(grade, id),
            value: ResourceValue::Disc(spec),
        }
    }

    pub fn load(load: [f64; 3]) -> Self {
        Resource {
            name: ResourceName::Global(GlobalKind::Load),
            value: ResourceValue::Load(load),
        }
    }

    pub fn memory(facts: MemoryFacts) -> Self {
        Resource {
            name: ResourceName::Global(GlobalKind::Memory),
            value: ResourceValue::Memory(facts),
        }
    }

    pub fn storage_pools(pools: BTreeMap<String, PoolFacts>) -> Self {
        Resource {
            name: ResourceName::Global(GlobalKind::StoragePools),
            value: ResourceValue::StoragePools(pools),
        }
    }

    pub fn name(&self) -> &ResourceName {
        &self.name
    }

    pub fn value(&self) -> &ResourceValue {
        &self.value
    }

    pub fn into_parts(self) -> (ResourceName, ResourceValue) {
        (self.name, self.value)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: String,
    value: serde_json::Value,
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        RawResource {
            name: self.name.to_string(),
            value: self.value.to_json().map_err(S::Error::custom)?,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawResource::deserialize(d)?;
        let name: ResourceName = raw.name.parse().map_err(D::Error::custom)?;
        let value = ResourceValue::from_json(&name, raw.value).map_err(D::Error::custom)?;
        Ok(Resource { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_say_why() {
        for s in [
            "vm.web1",
            "disc.sata.42",
            "global.load",
            "global.storage_pools",
        ] {
            let n: ResourceName = s.parse().unwrap();
            assert_eq!(n.to_string(), s);
        }
        let err = "vm.Web".parse::<ResourceName>().unwrap_err().to_string();
        assert!(err.contains("lower-case"), "{err}");
        let err = "disc.sata".parse::<ResourceName>().unwrap_err().to_string();
        assert!(err.contains("disc.GRADE.ID"), "{err}");
        let err = "cpu.x".parse::<ResourceName>().unwrap_err().to_string();
        assert!(err.contains("unknown resource kind"), "{err}");
    }

    #[test]
    fn paper_fig6_disc_parses() {
        let json = r#"{"name":"disc.sata.7","value":{"size":10000,"storage_pool":"sata",
            "access_control_list":["44.43.0.1"],"address":"44.44.44.45"}}"#;
        let r: Resource = serde_json::from_str(json).unwrap();
        let ResourceValue::Disc(d) = r.value() else {
            panic!("not a disc")
        };
        assert_eq!(d.size, 10000);
        assert_eq!(d.access_control_list, ["44.43.0.1"]);
    }

    #[test]
    fn value_must_match_name() {
        let json = r#"{"name":"global.memory","value":[0.1,0.2,0.3]}"#;
        let err = serde_json::from_str::<Resource>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("global.memory"), "{err}");
        assert!(
            Resource::new(ResourceName::vm("x"), ResourceValue::Load([0.0, 0.0, 0.0])).is_err()
        );
    }

    #[test]
    fn unknown_vm_field_is_named() {
        let json = r#"{"name":"vm.a","value":{"memory":1,"cores":1,"balloon_on":false,
            "cdrom_url":null,"imager_options":null,"display_name":"a","keymap":"en-gb",
            "management_address":null,"colour":"red"}}"#;
        let err = serde_json::from_str::<Resource>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn imager_options_travel_under_their_wire_name_and_stay_out_of_logs() {
        let opts = ImagerOptions {
            instance_id: "bigv-vm7-op3".into(),
            root_password_hash: Some("$6$salt$hash".into()),
            ssh_public_key: "# mine\nssh-ed25519 AAAA me@x\n\nssh-rsa BBBB you@y\n".into(),
            firstboot_script: String::new(),
        };
        let spec = VmSpec {
            imager_options: Some(opts.clone()),
            ..Default::default()
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["imager_options"]["instance_id"], "bigv-vm7-op3");
        assert_eq!(v["imager_options"]["root_password_hash"], "$6$salt$hash");
        assert!(v["imager_options"].get("firstboot_script").is_none());
        let back: VmSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back.imager_options.as_ref(), Some(&opts));
        assert_eq!(opts.authorized_keys().count(), 2);
        let debug = format!("{spec:?}");
        assert!(!debug.contains("$6$salt$hash"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
