//! The command line: bytemark-client 4.0's verb-noun grammar
//! (`bigv show server web1`), the 2011 client's noun-verb aliases
//! (`bigv vm show web1`) and `bigv admin ...` for operators.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "bigv",
    version,
    about = "Manage BigV virtual machines: servers, discs, groups, accounts, privileges and the cluster",
    long_about = "bigv talks to a BigV brain over its HTTP API.\n\n\
        Servers are named vm[.group[.account]]; a missing group is your configured group \
        (default \"default\") and a missing account is your configured account, else the \
        first account you can see.\n\n\
        Sizes are a number with an optional unit: 2048M, 25G (the default unit), 1T.\n\
        Disc specs are [label:][grade:]size, e.g. 25G or ssd:50G.",
    after_help = "Examples:\n  bigv login\n  bigv add server web1 --image bookworm --memory 2G --disc ssd:50G\n  bigv show server web1\n  bigv shutdown server web1\n  bigv update disc web1 disc-1 +10G\n  bigv console web1",
    disable_help_subcommand = false
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The brain's API, e.g. https://brain:8443 (https if no scheme) [env: BIGV_ENDPOINT]
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Where to log in (default: the endpoint) [env: BIGV_AUTH_ENDPOINT]
    #[arg(long, global = true, value_name = "URL")]
    pub auth_endpoint: Option<String>,
    /// Trust an https endpoint presenting exactly this certificate
    /// (sha256:…, printed by bigv-brain) [env: BIGV_TLS_FINGERPRINT]
    #[arg(long, global = true, value_name = "SHA256")]
    pub tls_fingerprint: Option<String>,
    /// Trust an https endpoint whose certificate this CA (PEM file) issued [env: BIGV_CA_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<String>,
    /// Log in as this user [env: BIGV_USER]
    #[arg(long, global = true, value_name = "USER")]
    pub user: Option<String>,
    /// The account names without one refer to [env: BIGV_ACCOUNT]
    #[arg(long, global = true, value_name = "ACCOUNT")]
    pub account: Option<String>,
    /// A session token or API key (apikey.…) to use instead of logging in [env: BIGV_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// The configuration profile to use [env: BIGV_PROFILE]
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// The configuration directory [env: BIGV_CONFIG_DIR; default ~/.config/bigv]
    #[arg(long, global = true, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Print the API's JSON objects
    #[arg(long, global = true, conflicts_with = "table")]
    pub json: bool,
    /// Print aligned columns for scripts
    #[arg(long, global = true)]
    pub table: bool,
    /// human, json or table
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub output_format: Option<Format>,
    /// Do not ask for confirmation, and skip the client-side checks
    #[arg(long, short = 'f', global = true)]
    pub force: bool,
    /// Start long operations (shutdown, migration…) and return at once
    #[arg(long, global = true)]
    pub no_wait: bool,
    /// Print each HTTP request and its status on stderr
    #[arg(long, global = true)]
    pub show_requests: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in and keep the session token in the profile
    Login(LoginArgs),
    /// Forget the profile's session token
    Logout,
    /// Create: server, discs, ips, group, key, api key
    #[command(subcommand)]
    Add(Add),
    /// Show: server(s), account(s), group(s), disc(s), images, storage, zones, hwprofiles, user, keys, privileges, overview, config, api keys
    #[command(subcommand)]
    Show(Show),
    /// Change: server, disc, config
    #[command(subcommand)]
    Update(Update),
    /// Delete: server, disc, group, key, api key
    #[command(subcommand)]
    Delete(Delete),
    /// Undelete a deleted server (restore server), or put a backup back over its disc (restore backup)
    #[command(subcommand)]
    Restore(RestoreNoun),
    /// Take a backup of a disc: backup disc SERVER DISC
    #[command(subcommand)]
    Backup(BackupNoun),
    /// Back a disc up regularly: schedule backups [--start T] SERVER DISC [INTERVAL]
    #[command(subcommand)]
    Schedule(ScheduleNoun),
    /// Stop a backup schedule: unschedule backups SERVER DISC ID
    #[command(subcommand)]
    Unschedule(UnscheduleNoun),
    /// Power a server on (and keep it on)
    #[command(subcommand)]
    Start(OnServer),
    /// Pull the plug on a server (no clean shutdown)
    #[command(subcommand)]
    Stop(OnServer),
    /// Shut a server down cleanly, then start it again
    #[command(subcommand)]
    Restart(OnServer),
    /// Press a server's reset button
    #[command(subcommand)]
    Reset(OnServer),
    /// Shut a server down cleanly (ACPI) and wait until it is off
    #[command(subcommand)]
    Shutdown(OnServer),
    /// Install a fresh image on a server's first disc (destroys its contents)
    #[command(subcommand)]
    Reimage(Reimage),
    /// Give a user a privilege: grant privilege LEVEL [on] OBJECT [to] USER
    #[command(subcommand)]
    Grant(OnPrivilege),
    /// Take a privilege away: revoke privilege LEVEL [on] OBJECT [from] USER
    #[command(subcommand)]
    Revoke(OnPrivilege),
    /// Connect to a server's serial console over ssh (or print VNC instructions)
    Console(ConsoleArgs),
    /// Send a raw request to the brain and print the reply
    Debug(DebugArgs),
    /// Operator commands (cluster admins only)
    #[command(subcommand)]
    Admin(Admin),
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Print the manual page (roff)
    Man,
    /// 2011 grammar: vm new|show|list|delete|undelete|purge|start|stop|reset|reimage
    #[command(subcommand)]
    Vm(VmAlias),
    /// 2011 grammar: disc new|resize|delete
    #[command(subcommand, alias = "disk")]
    Disc(DiscAlias),
    /// 2011 grammar: account list|show
    #[command(subcommand)]
    Account(AccountAlias),
    /// 2011 grammar: group new|delete
    #[command(subcommand)]
    Group(GroupAlias),
    /// 2011 grammar: privilege grant|revoke
    #[command(subcommand)]
    Privilege(PrivilegeAlias),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Also keep the password in the profile (mode 0600) so expired sessions renew themselves
    #[arg(long)]
    pub save_password: bool,
    /// Make this profile the one used when none is named
    #[arg(long)]
    pub make_current: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ServerArg {
    /// The server: name[.group[.account]] or its numeric id
    pub server: String,
}

#[derive(Debug, Subcommand)]
pub enum OnServer {
    Server(ServerArg),
}

#[derive(Debug, Subcommand)]
pub enum RestoreNoun {
    /// Undelete a deleted server
    Server(ServerArg),
    /// Replace a disc's content with a backup's (the server must be off)
    Backup(BackupArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    pub server: String,
    /// The disc's label (or id)
    pub disc: String,
    /// The backup's label (backup-N) or id
    pub backup: String,
}

#[derive(Debug, Subcommand)]
pub enum BackupNoun {
    /// Take a backup of a disc now
    Disc(ShowDiscArgs),
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// When the first backup is taken: a time of day HH:MM (UTC) or YYYY-MM-DD HH:MM:SS UTC
    #[arg(long, default_value = "00:00")]
    pub start: String,
    /// How many of the schedule's backups to keep (0: all)
    #[arg(long, default_value_t = 0)]
    pub capacity: u64,
    pub server: String,
    /// The disc's label (or id)
    pub disc: String,
    /// Seconds between backups (default 86400, a day)
    pub interval: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleNoun {
    /// Take a disc's backups regularly
    Backups(ScheduleArgs),
}

#[derive(Debug, Args)]
pub struct UnscheduleArgs {
    pub server: String,
    /// The disc's label (or id)
    pub disc: String,
    /// The schedule's id (see `bigv show disc SERVER DISC --json`)
    pub schedule: u64,
}

#[derive(Debug, Subcommand)]
pub enum UnscheduleNoun {
    /// Stop a backup schedule (its backups stay)
    Backups(UnscheduleArgs),
}

#[derive(Debug, Args, Clone, Default)]
pub struct AddServerArgs {
    /// name[.group[.account]]
    pub name: String,
    /// Cores (default 1)
    pub cores_pos: Option<u64>,
    /// Memory (default 1G)
    pub memory_pos: Option<String>,
    /// Disc spec (default 25G sata)
    pub disc_pos: Option<String>,
    /// Number of cores
    #[arg(long)]
    pub cores: Option<u64>,
    /// Memory, e.g. 1G or 2048M
    #[arg(long)]
    pub memory: Option<String>,
    /// A disc, [label:][grade:]size; repeat for more (default one 25G sata disc)
    #[arg(long = "disc")]
    pub discs: Vec<String>,
    /// The image to install (see `bigv show images`)
    #[arg(long)]
    pub image: Option<String>,
    /// Install no image (the discs start blank)
    #[arg(long, conflicts_with = "image")]
    pub no_image: bool,
    /// An ISO to attach as a CD-ROM (http or https URL)
    #[arg(long, value_name = "URL")]
    pub cdrom: Option<String>,
    /// Hardware profile (see `bigv show hwprofiles`)
    #[arg(long)]
    pub hwprofile: Option<String>,
    /// Keep the hardware profile from being upgraded
    #[arg(long)]
    pub hwprofile_locked: bool,
    /// Zone to create it in (see `bigv show zones`)
    #[arg(long)]
    pub zone: Option<String>,
    /// Create it powered off
    #[arg(long)]
    pub stopped: bool,
    /// Root password for the image (default: random, printed)
    #[arg(long)]
    pub root_password: Option<String>,
    /// SSH public keys to install for root
    #[arg(long)]
    pub authorized_keys: Option<String>,
    /// File of SSH public keys to install for root
    #[arg(long, value_name = "FILE", conflicts_with = "authorized_keys")]
    pub authorized_keys_file: Option<PathBuf>,
    /// A script to run on first boot
    #[arg(long)]
    pub firstboot_script: Option<String>,
    /// File holding a script to run on first boot
    #[arg(long, value_name = "FILE", conflicts_with = "firstboot_script")]
    pub firstboot_script_file: Option<PathBuf>,
    /// An IP address to give it (one IPv4, one IPv6; private VLANs only)
    #[arg(long = "ip")]
    pub ips: Vec<String>,
    /// Back the first disc up daily, weekly (the default) or never
    #[arg(long, value_name = "daily|weekly|never")]
    pub backup: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct AddDiscsArgs {
    /// The server
    pub server: String,
    /// Disc specs, [label:][grade:]size
    pub specs: Vec<String>,
    /// A disc spec; repeat for more
    #[arg(long = "disc")]
    pub discs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AddIpsArgs {
    /// The server
    pub server: String,
    /// How many addresses (1-4)
    #[arg(long, default_value_t = 1)]
    pub ips: u64,
    /// IPv6 addresses instead of IPv4
    #[arg(long)]
    pub ipv6: bool,
    /// Why the addresses are needed (asked for on a terminal if missing)
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct GroupArg {
    /// group[.account]
    pub group: String,
}

#[derive(Debug, Args)]
pub struct AddKeyArgs {
    /// The SSH public key (all its words)
    pub key: Vec<String>,
    /// A file holding the key
    #[arg(long, value_name = "FILE")]
    pub public_key_file: Option<PathBuf>,
    /// Whose keys (default: yours)
    #[arg(long, value_name = "USER")]
    pub for_user: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteKeyArgs {
    /// The key, its comment, or enough of it to be unique
    pub key: Vec<String>,
    /// Whose keys (default: yours)
    #[arg(long, value_name = "USER")]
    pub for_user: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AddApiNoun {
    /// Create an API key
    Key(AddApiKeyArgs),
}

#[derive(Debug, Subcommand)]
pub enum DeleteApiNoun {
    /// Delete an API key
    Key(DeleteApiKeyArgs),
}

#[derive(Debug, Args)]
pub struct AddApiKeyArgs {
    /// A label to recognise it by
    #[arg(long, default_value = "")]
    pub label: String,
    /// When it stops working: YYYY-MM-DD or "YYYY-MM-DD HH:MM:SS" (UTC)
    #[arg(long, value_name = "TIME")]
    pub expires_at: Option<String>,
    /// Whose key (default: yours)
    #[arg(long, value_name = "USER")]
    pub for_user: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteApiKeyArgs {
    /// The key's id or label
    pub key: String,
    /// Whose key (default: yours)
    #[arg(long, value_name = "USER")]
    pub for_user: Option<String>,
}

#[derive(Debug, Args)]
pub struct ForUser {
    /// Whose (default: yours)
    #[arg(long, value_name = "USER")]
    pub for_user: Option<String>,
}

// Parsed once per run: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Add {
    /// Create a server: add server NAME [CORES [MEMORY [DISC]]]
    Server(AddServerArgs),
    /// Add discs to a server
    #[command(alias = "disc")]
    Discs(AddDiscsArgs),
    /// Add extra IP addresses to a server
    #[command(alias = "ip")]
    Ips(AddIpsArgs),
    /// Create a group
    Group(GroupArg),
    /// Add an SSH public key (used for console access)
    Key(AddKeyArgs),
    /// Create an API key (add api key)
    #[command(subcommand)]
    Api(AddApiNoun),
    /// Create a user (cluster admins); give them privileges with `grant privilege`
    User(NewUserArgs),
}

#[derive(Debug, Args)]
pub struct NewUserArgs {
    /// Letters and digits
    pub username: String,
    #[arg(long)]
    pub email: Option<String>,
    /// The password (else BIGV_NEW_PASS, else asked for on a terminal)
    #[arg(long)]
    pub password: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateUserArgs {
    /// Whose (default: yours)
    pub username: Option<String>,
    /// The new password (else BIGV_NEW_PASS, else asked for on a terminal)
    #[arg(long)]
    pub password: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowServersArgs {
    /// group[.account]; without one, every group of the account
    pub group: Option<String>,
}

#[derive(Debug, Args)]
pub struct OptName {
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowDiscArgs {
    pub server: String,
    /// The disc's label (or id)
    pub label: String,
}

#[derive(Debug, Args)]
pub struct ShowPrivilegesArgs {
    /// Privileges of this user
    #[arg(long, value_name = "USER", group = "on")]
    pub for_user: Option<String>,
    /// Privileges on this server
    #[arg(long, group = "on")]
    pub server: Option<String>,
    /// Privileges on this group
    #[arg(long, group = "on")]
    pub group: Option<String>,
    /// Privileges on this account
    #[arg(long = "on-account", value_name = "ACCOUNT", group = "on")]
    pub on_account: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysNoun {
    /// Show API keys
    Keys(ForUser),
}

#[derive(Debug, Subcommand)]
pub enum Show {
    /// One server
    Server(ServerArg),
    /// The servers of a group or account
    Servers(ShowServersArgs),
    /// An account, its groups and servers (default: your default account)
    Account(OptName),
    /// Every account you can see
    Accounts,
    /// A group and its servers
    Group(OptName),
    /// The groups of an account
    Groups(OptName),
    /// A server's discs
    Discs(ServerArg),
    /// One disc
    Disc(ShowDiscArgs),
    /// A disc's backups
    Backups(ShowDiscArgs),
    /// The images servers can be imaged with
    Images,
    /// The storage grades
    Storage,
    /// The zones
    Zones,
    /// The hardware profiles
    Hwprofiles,
    /// A user (default: you)
    User(OptName),
    /// A user's SSH keys
    Keys(ForUser),
    /// Privileges: yours, a user's, or those on a server, group or account
    Privileges(ShowPrivilegesArgs),
    /// Every account with its groups and servers
    Overview,
    /// The configuration in use and where each value comes from
    Config,
    /// API keys (show api keys)
    #[command(subcommand)]
    Api(ApiKeysNoun),
}

#[derive(Debug, Args, Default)]
pub struct UpdateServerArgs {
    /// The server
    pub server: String,
    /// New memory size, or +SIZE to add
    #[arg(long)]
    pub memory: Option<String>,
    /// New number of cores
    #[arg(long)]
    pub cores: Option<u64>,
    /// New hardware profile
    #[arg(long)]
    pub hwprofile: Option<String>,
    /// Stop the hardware profile being upgraded
    #[arg(long, conflicts_with = "unlock_hwprofile")]
    pub lock_hwprofile: bool,
    /// Allow the hardware profile to be upgraded
    #[arg(long)]
    pub unlock_hwprofile: bool,
    /// Attach an ISO as the CD-ROM
    #[arg(long, value_name = "URL", conflicts_with = "remove_cd")]
    pub cd_url: Option<String>,
    /// Eject the CD-ROM
    #[arg(long)]
    pub remove_cd: bool,
    /// Rename and/or move: name[.group[.account]]
    #[arg(long, value_name = "NAME")]
    pub new_name: Option<String>,
    /// Swap IP addresses with another server
    #[arg(long, value_name = "SERVER")]
    pub swap_ips_with: Option<String>,
    /// Move extra IPs too when swapping
    #[arg(long, requires = "swap_ips_with")]
    pub swap_extra_ips: bool,
}

#[derive(Debug, Args)]
pub struct UpdateDiscArgs {
    /// The server
    pub server: String,
    /// The disc's label
    pub label: String,
    /// New size, or +SIZE to grow by
    pub size: Option<String>,
    /// New size, or +SIZE to grow by
    #[arg(long, conflicts_with = "size")]
    pub new_size: Option<String>,
    /// Move the disc to another server (both must be off)
    #[arg(long, value_name = "SERVER")]
    pub new_server: Option<String>,
}

/// `update config` saves the global flags given with it (--endpoint,
/// --auth-endpoint, --user, --account, --token) into the profile.
#[derive(Debug, Args, Default)]
pub struct UpdateConfigArgs {
    /// The group names without one refer to
    #[arg(long)]
    pub group: Option<String>,
    /// How long new sessions last, in seconds (60-3600)
    #[arg(long, value_name = "SECONDS")]
    pub session_validity: Option<u64>,
    /// Forget a variable (endpoint, auth-endpoint, user, account, group, token, password, session-validity); repeatable
    #[arg(long, value_name = "VARIABLE")]
    pub unset: Vec<String>,
    /// Make the selected profile the current one
    #[arg(long)]
    pub make_current: bool,
}

#[derive(Debug, Subcommand)]
pub enum Update {
    /// Change a server: memory, cores, hardware profile, CD-ROM, name, IPs
    Server(UpdateServerArgs),
    /// Resize a disc or move it to another server
    Disc(UpdateDiscArgs),
    /// Change a user's password (yours by default)
    User(UpdateUserArgs),
    /// Save settings in the profile: bigv update config --endpoint URL --user U --account A --group G
    Config(UpdateConfigArgs),
}

#[derive(Debug, Args)]
pub struct DeleteServerArgs {
    pub server: String,
    /// Delete for good (no restore)
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Args)]
pub struct DeleteGroupArgs {
    pub group: String,
    /// Purge the group's servers first
    #[arg(long)]
    pub recursive: bool,
}

#[derive(Debug, Subcommand)]
pub enum Delete {
    /// Delete a server (restorable unless --purge)
    Server(DeleteServerArgs),
    /// Delete a disc for good
    Disc(ShowDiscArgs),
    /// Delete a backup of a disc for good
    Backup(BackupArgs),
    /// Delete a group (it must be empty, or use --recursive)
    Group(DeleteGroupArgs),
    /// Remove an SSH key
    Key(DeleteKeyArgs),
    /// Delete an API key (delete api key)
    #[command(subcommand)]
    Api(DeleteApiNoun),
}

#[derive(Debug, Args, Clone, Default)]
pub struct ReimageArgs {
    pub server: String,
    /// The image to install
    #[arg(long)]
    pub image: Option<String>,
    /// Root password (default: random, printed)
    #[arg(long)]
    pub root_password: Option<String>,
    #[arg(long)]
    pub authorized_keys: Option<String>,
    #[arg(long, value_name = "FILE", conflicts_with = "authorized_keys")]
    pub authorized_keys_file: Option<PathBuf>,
    #[arg(long)]
    pub firstboot_script: Option<String>,
    #[arg(long, value_name = "FILE", conflicts_with = "firstboot_script")]
    pub firstboot_script_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Reimage {
    Server(ReimageArgs),
}

#[derive(Debug, Args)]
pub struct PrivilegeArgs {
    /// LEVEL [on] OBJECT [to|from] USER, e.g. `vm_admin on web1 to bob`, `cluster_admin to carol`
    #[arg(required = true, num_args = 1..)]
    pub words: Vec<String>,
    /// Require a Yubikey with this privilege
    #[arg(long)]
    pub yubikey_required: bool,
    /// Bind the privilege to one of the user's API keys
    #[arg(long, value_name = "ID")]
    pub api_key_id: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum OnPrivilege {
    Privilege(PrivilegeArgs),
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    pub server: String,
    /// Print how to reach the VNC console through an ssh tunnel
    #[arg(long, conflicts_with = "serial")]
    pub vnc: bool,
    /// The serial console over ssh (the default)
    #[arg(long)]
    pub serial: bool,
    /// Print the ssh command instead of running it
    #[arg(long)]
    pub no_connect: bool,
    /// Extra arguments for ssh, e.g. "-i ~/.ssh/bigv"
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub ssh_args: Option<String>,
}

#[derive(Debug, Args)]
pub struct DebugArgs {
    /// GET, POST, PUT or DELETE
    pub method: String,
    /// The path, e.g. /accounts?view=overview
    pub path: String,
    /// A JSON body
    pub body: Option<String>,
    /// Send no token
    #[arg(long)]
    pub no_auth: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

// ---- 2011 aliases --------------------------------------------------------

// Parsed once per run: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum VmAlias {
    /// = add server
    New(AddServerArgs),
    /// = show server
    Show(ServerArg),
    /// = show servers
    List(ShowServersArgs),
    /// = delete server
    Delete(ServerArg),
    /// = restore server
    Undelete(ServerArg),
    /// = delete server --purge
    Purge(ServerArg),
    /// = start server
    Start(ServerArg),
    /// = stop server
    Stop(ServerArg),
    /// = reset server
    Reset(ServerArg),
    /// = reimage server
    Reimage(ReimageArgs),
}

#[derive(Debug, Args)]
pub struct DiscResizeArgs {
    pub server: String,
    pub label: String,
    /// New size, or +SIZE
    pub size: String,
}

#[derive(Debug, Subcommand)]
pub enum DiscAlias {
    /// = add discs
    New(AddDiscsArgs),
    /// = update disc --new-size
    Resize(DiscResizeArgs),
    /// = delete disc
    Delete(ShowDiscArgs),
}

#[derive(Debug, Subcommand)]
pub enum AccountAlias {
    /// = show accounts
    List,
    /// = show account
    Show(OptName),
}

#[derive(Debug, Subcommand)]
pub enum GroupAlias {
    /// = add group
    New(GroupArg),
    /// = delete group
    Delete(DeleteGroupArgs),
}

#[derive(Debug, Subcommand)]
pub enum PrivilegeAlias {
    /// = grant privilege
    Grant(PrivilegeArgs),
    /// = revoke privilege
    Revoke(PrivilegeArgs),
}

// ---- admin ----------------------------------------------------------------

#[derive(Debug, Args)]
pub struct NameArg {
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum PoolsNoun {
    /// Every storage pool
    Pools,
    /// One storage pool
    Pool(NameArg),
}

#[derive(Debug, Subcommand)]
pub enum RangesNoun {
    /// Every IP range
    Ranges,
}

#[derive(Debug, Args)]
pub struct MigrationsArgs {
    /// Finished ones too
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct IdArg {
    pub id: u64,
}

#[derive(Debug, Subcommand)]
pub enum AdminShow {
    /// Every head
    Heads,
    /// One head
    Head(NameArg),
    /// Every tail
    Tails,
    /// One tail
    Tail(NameArg),
    /// Storage pools: storage pools | storage pool NAME
    #[command(subcommand)]
    Storage(PoolsNoun),
    /// Running migrations, evacuations and reimages (--all for finished ones)
    Migrations(MigrationsArgs),
    /// One migration (or other long operation) by id
    Migration(IdArg),
    /// VLANs and their IP ranges
    Vlans,
    /// IP ranges: ip ranges
    #[command(subcommand)]
    Ip(RangesNoun),
    /// The registered images (customer OS templates)
    Images,
    /// The node images heads and tails network-boot
    NodeImages,
    /// The machines on the boot LAN (registered, enrolling, joined)
    Machines,
    /// The cluster settings
    Settings,
    /// A node's recent log lines (its agent's and init's): logs head|tail NAME
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// head or tail
    pub role: String,
    /// Its label, node id or number
    pub name: String,
    /// How many of the most recent lines (1-1000)
    #[arg(long, default_value_t = 100)]
    pub lines: u32,
}

#[derive(Debug, Subcommand)]
pub enum NodeNoun {
    /// A head
    Head(NameArg),
    /// A tail
    Tail(NameArg),
}

#[derive(Debug, Args)]
pub struct MigrateServerArgs {
    pub server: String,
    /// The head to move to (default: the scheduler picks)
    pub head: Option<String>,
}

#[derive(Debug, Args)]
pub struct MigrateDiscArgs {
    pub server: String,
    pub label: String,
    /// The pool to move to (default: the scheduler picks)
    pub pool: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum MigrateNoun {
    /// Live-migrate a server to another head
    Server(MigrateServerArgs),
    /// Move a disc to another storage pool
    Disc(MigrateDiscArgs),
}

#[derive(Debug, Subcommand)]
pub enum CancelWhat {
    /// A server's migration
    Server(ServerArg),
    /// A disc's migration
    Disc(ShowDiscArgs),
}

#[derive(Debug, Subcommand)]
pub enum CancelNoun {
    /// cancel migration server NAME | cancel migration disc SERVER LABEL
    #[command(subcommand)]
    Migration(CancelWhat),
}

#[derive(Debug, Subcommand)]
pub enum PoolNoun {
    Pool(NameArg),
}

#[derive(Debug, Subcommand)]
pub enum EmptyNoun {
    /// Move every server off a head
    Head(NameArg),
    /// Move every disc out of a pool: empty storage pool NAME
    #[command(subcommand)]
    Storage(PoolNoun),
}

#[derive(Debug, Args)]
pub struct UpdateNodeArgs {
    pub name: String,
    /// empty (take no new work) or default
    #[arg(long)]
    pub usage_strategy: Option<String>,
    /// A new label
    #[arg(long)]
    pub label: Option<String>,
    /// Its zone
    #[arg(long)]
    pub zone: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdatePoolArgs {
    pub name: String,
    /// empty (take no new discs) or default
    #[arg(long)]
    pub usage_strategy: Option<String>,
    /// How far to overcommit, e.g. 1.5
    #[arg(long)]
    pub overcommit_ratio: Option<f64>,
    /// Disc migrations at once
    #[arg(long)]
    pub migration_concurrency: Option<u64>,
    /// IOPS limit for its discs
    #[arg(long)]
    pub iops_limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum UpdatePoolNoun {
    Pool(UpdatePoolArgs),
}

#[derive(Debug, Args)]
pub struct UpdateSettingsArgs {
    /// open (unknown machines on the boot LAN may boot and enroll) or closed
    #[arg(long)]
    pub enrollment: Option<String>,
    /// What an enrolling machine boots as: head or tail
    #[arg(long)]
    pub enrollment_role: Option<String>,
    /// auto (accept new nodes) or manual (leave them pending)
    #[arg(long)]
    pub admission: Option<String>,
    /// The node image machines network-boot (see `admin show node-images`)
    #[arg(long)]
    pub node_image_version: Option<String>,
    /// Heads kept empty for emergencies
    #[arg(long)]
    pub reserve_heads: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum AdminUpdate {
    /// Change a head
    Head(UpdateNodeArgs),
    /// Change a tail
    Tail(UpdateNodeArgs),
    /// Change a storage pool: update storage pool NAME
    #[command(subcommand)]
    Storage(UpdatePoolNoun),
    /// Change cluster settings (enrollment, admission, node image…)
    Settings(UpdateSettingsArgs),
}

#[derive(Debug, Args)]
pub struct AddRangeArgs {
    /// The range, e.g. 192.0.2.0/24
    pub cidr: String,
    /// The VLAN it is on
    pub vlan: u64,
    /// Zones it serves; repeatable
    #[arg(long = "zone")]
    pub zones: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum AddRangeNoun {
    /// add ip range CIDR VLAN
    Range(AddRangeArgs),
}

#[derive(Debug, Args)]
pub struct AddVlanArgs {
    pub num: u64,
    /// public (customers' addresses), private, or management (consoles)
    #[arg(long, default_value = "public")]
    pub usage_type: String,
}

#[derive(Debug, Args)]
pub struct AddImageArgs {
    pub name: String,
    /// Smallest disc it fits on
    pub size: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Upload the template's bytes from this raw disc image (at most SIZE):
    /// tails without a copy of their own fetch it from the brain
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct AddMachineArgs {
    /// The MAC it network-boots from, e.g. 52:54:00:12:34:56
    pub mac: String,
    /// head or tail
    pub role: String,
    /// A fixed IPv4 address on the boot LAN
    #[arg(long)]
    pub boot_address: Option<String>,
    /// Tails: a storage pool NAME:GRADE:/DIR (repeatable), from its next boot
    #[arg(long = "pool", value_name = "NAME:GRADE:/DIR")]
    pub pools: Vec<String>,
    /// Tails: a data disc DEV:/DIR[:format] to mount, formatted only if blank and
    /// :format is given (repeatable), from its next boot
    #[arg(long = "disc", value_name = "DEV:/DIR[:format]")]
    pub discs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AddUserArgs {
    pub username: String,
    /// cluster_admin or cluster_su
    pub level: String,
    /// A password (asked for on a terminal if not given; BIGV_NEW_PASS also works)
    #[arg(long)]
    pub password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AdminAdd {
    /// Create a customer account (with its group `default`)
    Account(NameArg),
    /// add ip range CIDR VLAN
    #[command(subcommand)]
    Ip(AddRangeNoun),
    /// Create a VLAN
    Vlan(AddVlanArgs),
    /// Register an image the tails hold
    Image(AddImageArgs),
    /// Create a cluster user
    User(AddUserArgs),
    /// Register a machine on the boot LAN so it boots with a role
    Machine(AddMachineArgs),
}

#[derive(Debug, Subcommand)]
pub enum AdminDelete {
    /// Forget a boot LAN machine (its head or tail record stays)
    Machine(NameArg),
}

#[derive(Debug, Subcommand)]
pub enum Admin {
    /// Show heads, tails, storage pools, migrations, VLANs, IP ranges, images, node images, machines
    #[command(subcommand)]
    Show(AdminShow),
    /// Accept a pending head or tail
    #[command(subcommand)]
    Accept(NodeNoun),
    /// Migrate a server or a disc
    #[command(subcommand)]
    Migrate(MigrateNoun),
    /// cancel migration server|disc
    #[command(subcommand)]
    Cancel(CancelNoun),
    /// Evacuate a head or storage pool
    #[command(subcommand)]
    Empty(EmptyNoun),
    /// Change a head, tail, storage pool or the cluster settings
    #[command(subcommand)]
    Update(AdminUpdate),
    /// Add an IP range, VLAN, image, cluster user or boot LAN machine
    #[command(subcommand)]
    Add(AdminAdd),
    /// Forget a boot LAN machine
    #[command(subcommand)]
    Delete(AdminDelete),
    /// Roll every head and tail onto a node image version, one at a time
    #[command(subcommand)]
    Upgrade(UpgradeCmd),
}

#[derive(Debug, Args)]
pub struct UpgradeStartArgs {
    /// A stored node image version (see `admin show node-images`)
    pub version: String,
    /// Seconds each node may take from its reboot order to being back (default 900)
    #[arg(long, value_name = "SECS")]
    pub reboot_timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct UpgradeIdArg {
    /// The upgrade's id (default: the latest)
    pub id: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum UpgradeCmd {
    /// Start an upgrade to VERSION and follow it (--no-wait returns at once)
    Start(UpgradeStartArgs),
    /// Show an upgrade: nodes done, the current node and its step, timings
    Show(UpgradeIdArg),
    /// Follow an upgrade until it ends, with a progress bar on a terminal
    Watch(UpgradeIdArg),
    /// Stop the running upgrade (a node being emptied goes back into service)
    Cancel(UpgradeIdArg),
}
