//! The commands, one file per family, and what they share: the
//! configuration, the client, name resolution and confirmations.

pub mod accounts;
pub mod admin;
pub mod backups;
pub mod config;
pub mod console;
pub mod debug;
pub mod definitions;
pub mod discs;
pub mod privileges;
pub mod servers;
pub mod upgrade;
pub mod users;

use std::cell::OnceCell;

use serde_json::Value;

use crate::cli::{self, Cli, Command};
use crate::client::{Client, prompt_line};
use crate::config::{Config, Overrides};
use crate::error::{CliError, Exit, Result};
use crate::names::{GroupName, GroupRef, VmName, VmRef, account_name};
use crate::output::{Format, Out};
use crate::types::{Account, Definitions, Vm};

/// What every command can reach.
pub struct Ctx {
    pub config: Config,
    pub overrides: Overrides,
    pub out: Out,
    pub force: bool,
    pub no_wait: bool,
    show_requests: bool,
    client: OnceCell<Client>,
    account: OnceCell<String>,
    definitions: OnceCell<Definitions>,
}

impl Ctx {
    pub fn new(global: &cli::Global) -> Result<Ctx> {
        let overrides = Overrides {
            config_dir: global.config_dir.clone(),
            profile: global.profile.clone(),
            endpoint: global.endpoint.clone(),
            auth_endpoint: global.auth_endpoint.clone(),
            tls_fingerprint: global.tls_fingerprint.clone(),
            ca_cert: global.ca_cert.clone(),
            user: global.user.clone(),
            account: global.account.clone(),
            token: global.token.clone(),
        };
        let config = Config::load(&overrides)?;
        let format = if global.json {
            Format::Json
        } else if global.table {
            Format::Table
        } else {
            global.output_format.unwrap_or(Format::Human)
        };
        Ok(Ctx {
            config,
            overrides,
            out: Out { format },
            force: global.force,
            no_wait: global.no_wait,
            show_requests: global.show_requests,
            client: OnceCell::new(),
            account: OnceCell::new(),
            definitions: OnceCell::new(),
        })
    }

    pub fn client(&self) -> Result<&Client> {
        if self.client.get().is_none() {
            let client = Client::new(&self.config, self.show_requests)?;
            let _ = self.client.set(client);
        }
        self.client
            .get()
            .ok_or_else(|| CliError::new(Exit::Bug, "the HTTP client was not set up"))
    }

    /// `GET /definitions`, once per run.
    pub fn definitions(&self) -> Result<&Definitions> {
        if self.definitions.get().is_none() {
            let (_, defs) = self.client()?.definitions()?;
            let _ = self.definitions.set(defs);
        }
        self.definitions
            .get()
            .ok_or_else(|| CliError::new(Exit::Bug, "definitions were not loaded"))
    }

    /// The configured account, else the first account the caller can
    /// see (as bytemark-client does without a billing service).
    pub fn default_account(&self) -> Result<String> {
        if let Some(a) = self.account.get() {
            return Ok(a.clone());
        }
        let name = match &self.config.account.value {
            Some(a) => account_name(a)?,
            None => {
                let accounts: Vec<Account> = self.client()?.get(
                    "/accounts?view=overview&include_deleted=true",
                    "the list of accounts",
                )?;
                accounts.into_iter().next().map(|a| a.name).ok_or_else(|| {
                    CliError::new(
                        Exit::NoDefaultAccount,
                        "you have no account to work in: name one (web1.default.ACCOUNT or --account), \
                         or ask an account admin to grant you a privilege",
                    )
                })?
            }
        };
        let _ = self.account.set(name.clone());
        Ok(name)
    }

    pub fn account_or_default(&self, name: Option<&str>) -> Result<String> {
        match name {
            Some(n) => account_name(n),
            None => self.default_account(),
        }
    }

    /// A server name with its account and group filled in. A numeric name
    /// is looked up by id.
    pub fn resolve_vm(&self, text: &str) -> Result<VmRef> {
        let name = VmName::parse(text)?;
        if let Some(id) = name.id() {
            let vm: Vm = self.client()?.get(
                &format!("/virtual_machines/{id}?include_deleted=true&view=overview"),
                &format!("server {id}"),
            )?;
            return vm_ref_of(&vm);
        }
        let account = match name.account {
            Some(a) => a,
            None => self.default_account()?,
        };
        Ok(VmRef {
            account,
            group: name.group.unwrap_or_else(|| self.config.group().to_owned()),
            name: name.name,
        })
    }

    pub fn resolve_group(&self, text: Option<&str>) -> Result<GroupRef> {
        let name = match text {
            Some(t) => GroupName::parse(t)?,
            None => GroupName {
                name: self.config.group().to_owned(),
                account: None,
            },
        };
        let account = match name.account {
            Some(a) => a,
            None => self.default_account()?,
        };
        Ok(GroupRef {
            account,
            name: name.name,
        })
    }

    /// A server as the brain has it (deleted ones too).
    pub fn fetch_vm(&self, r: &VmRef) -> Result<(Value, Vm)> {
        let value = self.client()?.get_value(
            &format!("{}?include_deleted=true&view=overview", r.path()),
            &format!("server {r}"),
        )?;
        let vm = serde_json::from_value(value.clone()).map_err(|e| {
            CliError::new(
                Exit::ApiInternal,
                format!("the brain's description of server {r} could not be read: {e}"),
            )
        })?;
        Ok((value, vm))
    }

    /// Resolves and fetches a server.
    pub fn vm(&self, text: &str) -> Result<(VmRef, Value, Vm)> {
        let r = self.resolve_vm(text)?;
        let (value, vm) = self.fetch_vm(&r)?;
        Ok((r, value, vm))
    }

    /// Asks before something that cannot be undone, unless `--force`.
    /// Only `y`/`yes` goes ahead; anything else, or no answer, is exit 5.
    pub fn confirm(&self, what: &str) -> Result<()> {
        if self.force {
            return Ok(());
        }
        let answer = prompt_line(&format!(
            "{what}\nAre you certain you wish to continue? (y/N) "
        ))?;
        if matches!(answer.to_ascii_lowercase().as_str(), "y" | "yes") {
            Ok(())
        } else {
            Err(CliError::new(
                Exit::Declined,
                "cancelled: nothing was changed",
            ))
        }
    }

    /// The user the caller is logged in as.
    pub fn whoami(&self) -> Result<String> {
        if let Some(u) = self.config.user.value.as_deref()
            && self.config.token.source != crate::config::Source::Flag
            && self.config.token.source != crate::config::Source::Env
        {
            return Ok(u.to_owned());
        }
        let me: crate::types::User = self.client()?.get("/users/", "your user")?;
        Ok(me.username)
    }
}

/// The resolved name of a server fetched by id, from its hostname
/// (`name.group.account.cluster...`).
pub fn vm_ref_of(vm: &Vm) -> Result<VmRef> {
    let hostname = vm.hostname.clone().unwrap_or_default();
    let labels: Vec<&str> = hostname.split('.').collect();
    match labels.as_slice() {
        [name, group, account, ..] => Ok(VmRef {
            account: (*account).to_owned(),
            group: (*group).to_owned(),
            name: (*name).to_owned(),
        }),
        _ => Err(CliError::new(
            Exit::ApiInternal,
            format!(
                "server {} has no hostname to find its group and account by",
                vm.id
            ),
        )),
    }
}

/// Reads a file named on the command line.
pub fn read_file(path: &std::path::Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read {what} from {}: {e}", path.display())))
}

/// Runs the command line.
pub fn dispatch(cli: Cli) -> Result<()> {
    // These need no configuration.
    match &cli.command {
        Command::Completions(a) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(a.shell, &mut cmd, "bigv", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            return clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(|e| CliError::new(Exit::Bug, format!("cannot write the manual: {e}")));
        }
        _ => {}
    }
    let ctx = Ctx::new(&cli.global)?;
    let c = &ctx;
    match cli.command {
        Command::Completions(_) | Command::Man => Ok(()),
        Command::Login(a) => users::login(c, a),
        Command::Logout => users::logout(c),
        Command::Add(add) => match add {
            cli::Add::Server(a) => servers::add(c, a),
            cli::Add::Discs(a) => discs::add(c, a),
            cli::Add::Ips(a) => servers::add_ips(c, a),
            cli::Add::Group(a) => accounts::add_group(c, &a.group),
            cli::Add::Key(a) => users::add_key(c, a),
            cli::Add::Api(cli::AddApiNoun::Key(a)) => users::add_api_key(c, a),
            cli::Add::User(a) => users::add_user(c, a),
        },
        Command::Show(show) => match show {
            cli::Show::Server(a) => servers::show(c, &a.server),
            cli::Show::Servers(a) => servers::list(c, a.group.as_deref()),
            cli::Show::Account(a) => accounts::show_account(c, a.name.as_deref()),
            cli::Show::Accounts => accounts::show_accounts(c),
            cli::Show::Group(a) => accounts::show_group(c, a.name.as_deref()),
            cli::Show::Groups(a) => accounts::show_groups(c, a.name.as_deref()),
            cli::Show::Discs(a) => discs::list(c, &a.server),
            cli::Show::Disc(a) => discs::show(c, &a.server, &a.label),
            cli::Show::Backups(a) => backups::show(c, &a.server, &a.label),
            cli::Show::Images => definitions::images(c),
            cli::Show::Storage => definitions::storage(c),
            cli::Show::Zones => definitions::zones(c),
            cli::Show::Hwprofiles => definitions::hwprofiles(c),
            cli::Show::User(a) => users::show_user(c, a.name.as_deref()),
            cli::Show::Keys(a) => users::show_keys(c, a.for_user.as_deref()),
            cli::Show::Privileges(a) => privileges::show(c, a),
            cli::Show::Overview => accounts::overview(c),
            cli::Show::Config => config::show(c),
            cli::Show::Api(cli::ApiKeysNoun::Keys(a)) => {
                users::show_api_keys(c, a.for_user.as_deref())
            }
        },
        Command::Update(update) => match update {
            cli::Update::Server(a) => servers::update(c, a),
            cli::Update::Disc(a) => {
                let size = a.new_size.or(a.size);
                discs::update(
                    c,
                    &a.server,
                    &a.label,
                    size.as_deref(),
                    a.new_server.as_deref(),
                )
            }
            cli::Update::Config(a) => config::update(c, a),
            cli::Update::User(a) => users::update_user(c, a),
        },
        Command::Delete(delete) => match delete {
            cli::Delete::Server(a) => servers::delete(c, &a.server, a.purge),
            cli::Delete::Disc(a) => discs::delete(c, &a.server, &a.label),
            cli::Delete::Backup(a) => backups::delete(c, a),
            cli::Delete::Group(a) => accounts::delete_group(c, &a.group, a.recursive),
            cli::Delete::Key(a) => users::delete_key(c, a),
            cli::Delete::Api(cli::DeleteApiNoun::Key(a)) => users::delete_api_key(c, a),
        },
        Command::Restore(cli::RestoreNoun::Server(a)) => servers::restore(c, &a.server),
        Command::Restore(cli::RestoreNoun::Backup(a)) => backups::restore(c, a),
        Command::Backup(cli::BackupNoun::Disc(a)) => backups::backup(c, &a.server, &a.label),
        Command::Schedule(cli::ScheduleNoun::Backups(a)) => backups::schedule(c, a),
        Command::Unschedule(cli::UnscheduleNoun::Backups(a)) => backups::unschedule(c, a),
        Command::Start(cli::OnServer::Server(a)) => servers::start(c, &a.server),
        Command::Stop(cli::OnServer::Server(a)) => servers::stop(c, &a.server),
        Command::Restart(cli::OnServer::Server(a)) => servers::restart(c, &a.server),
        Command::Reset(cli::OnServer::Server(a)) => servers::reset(c, &a.server),
        Command::Shutdown(cli::OnServer::Server(a)) => servers::shutdown(c, &a.server),
        Command::Reimage(cli::Reimage::Server(a)) => servers::reimage(c, a),
        Command::Grant(cli::OnPrivilege::Privilege(a)) => privileges::grant(c, a),
        Command::Revoke(cli::OnPrivilege::Privilege(a)) => privileges::revoke(c, a),
        Command::Console(a) => console::console(c, a),
        Command::Debug(a) => debug::debug(c, a),
        Command::Admin(a) => admin::dispatch(c, a),
        Command::Vm(vm) => match vm {
            cli::VmAlias::New(a) => servers::add(c, a),
            cli::VmAlias::Show(a) => servers::show(c, &a.server),
            cli::VmAlias::List(a) => servers::list(c, a.group.as_deref()),
            cli::VmAlias::Delete(a) => servers::delete(c, &a.server, false),
            cli::VmAlias::Undelete(a) => servers::restore(c, &a.server),
            cli::VmAlias::Purge(a) => servers::delete(c, &a.server, true),
            cli::VmAlias::Start(a) => servers::start(c, &a.server),
            cli::VmAlias::Stop(a) => servers::stop(c, &a.server),
            cli::VmAlias::Reset(a) => servers::reset(c, &a.server),
            cli::VmAlias::Reimage(a) => servers::reimage(c, a),
        },
        Command::Disc(disc) => match disc {
            cli::DiscAlias::New(a) => discs::add(c, a),
            cli::DiscAlias::Resize(a) => discs::update(c, &a.server, &a.label, Some(&a.size), None),
            cli::DiscAlias::Delete(a) => discs::delete(c, &a.server, &a.label),
        },
        Command::Account(account) => match account {
            cli::AccountAlias::List => accounts::show_accounts(c),
            cli::AccountAlias::Show(a) => accounts::show_account(c, a.name.as_deref()),
        },
        Command::Group(group) => match group {
            cli::GroupAlias::New(a) => accounts::add_group(c, &a.group),
            cli::GroupAlias::Delete(a) => accounts::delete_group(c, &a.group, a.recursive),
        },
        Command::Privilege(p) => match p {
            cli::PrivilegeAlias::Grant(a) => privileges::grant(c, a),
            cli::PrivilegeAlias::Revoke(a) => privileges::revoke(c, a),
        },
    }
}
