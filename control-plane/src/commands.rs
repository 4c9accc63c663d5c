//! What each command does: read its input, act through `Admin` (file or server), print.

use crate::admin::Admin;
use crate::auth::{admin_token_from, read_token_file};
use crate::cli::{
    AccountCommand, AdminTokenCommand, AuditArgs, Cli, Command, ExportArgs, ExportFormat,
    KeyCommand, KeymapCommand, LimitFlags, ServeArgs, SyncTokenCommand,
};
use crate::client::{server_base, Client};
use crate::clock::{now_unix, parse_rfc3339};
use crate::error::CliError;
use crate::export::{extension_config, parse_base, plugin_config, write_atomically};
use crate::hosts::AllowedHosts;
use crate::model::{AccountListView, ImportKeyRequest, KeyListView};
use crate::output;
use crate::random::new_admin_token;
use crate::rate_limits::limit_from_text;
use crate::secret_file::replace_private;
use crate::serve::{serve, ServeOptions, SyncTokenSetting};
use crate::service::{parse_digest, KeyChange, KeySpec, Service};
use crate::store::{Actor, AuditQuery, Store};
use crate::sync_token::{self, SyncTokenError};
use keygate_core::config::RawLimit;
use keygate_core::digest::Digest;
use keygate_core::key::{check_key, key_hint, Environment, KeyKind, KeyType};
use keygate_sync_core::message::KeyMapMessage;
use serde::Serialize;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::sync::Arc;
use std::time::Duration;

pub fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Hash => hash(cli.json),
        Command::Serve(args) => run_serve(&cli, args),
        Command::AdminToken(command) => admin_token(&cli, command),
        Command::SyncToken(command) => sync_token_command(&cli, command),
        Command::Keymap(command) => keymap(&cli, command),
        Command::Probe { url } => probe(url),
        Command::Account(command) => account(&connect(&cli)?, command, cli.json),
        Command::Key(command) => key(&connect(&cli)?, command, cli.json),
        Command::Export(args) => export(&connect(&cli)?, args),
        Command::Audit(args) => audit(&connect(&cli)?, args, cli.json),
    }
}

/// The server given with `--server`, else the database file.
fn connect(cli: &Cli) -> Result<Admin, CliError> {
    match &cli.server {
        Some(url) => {
            server_base(url)?;
            let token = admin_token_from(cli.admin_token_file.as_deref())?.ok_or_else(|| {
                CliError::Input(
                    "--server needs the admin token: give --admin-token-file FILE or set \
                     KEYGATE_ADMIN_TOKEN"
                        .into(),
                )
            })?;
            Ok(Admin::Remote(Client::new(url, token)?))
        }
        None => Ok(Admin::Local(Service::new(open_store(cli)?))),
    }
}

/// The SQLite file, or the PostgreSQL database a `postgres://` URL names.
fn open_store(cli: &Cli) -> Result<Arc<dyn Store>, CliError> {
    Ok(crate::store::open(&cli.database)?)
}

fn refuse_server(cli: &Cli, command: &str) -> Result<(), CliError> {
    if cli.server.is_some() {
        return Err(CliError::Input(format!(
            "`{command}` works on the database file (--database); drop --server"
        )));
    }
    Ok(())
}

/// Writes to standard output; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Stdout(e)),
        _ => Ok(()),
    }
}

/// Prints `value` as JSON with `--json`, else the human text.
fn print<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CliError> {
    if json {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| CliError::Input(format!("cannot encode the answer: {e}")))?;
        emit(&format!("{text}\n"))
    } else {
        emit(&human())
    }
}

fn account(admin: &Admin, command: &AccountCommand, json: bool) -> Result<(), CliError> {
    match command {
        AccountCommand::Create { name } => {
            let created = admin.create_account(name.as_deref())?;
            print(json, &created, || output::created_account(&created))
        }
        AccountCommand::List => {
            let accounts = AccountListView {
                accounts: admin.accounts()?,
            };
            print(json, &accounts, || output::accounts(&accounts.accounts))
        }
        AccountCommand::Show { account_id } => {
            let detail = admin.account(account_id)?;
            print(json, &detail, || output::account_detail(&detail))
        }
        AccountCommand::Limit { account_id, limit } => {
            let limit = flag_limit(limit)?;
            let changed = admin.set_account_rate_limit(account_id, limit.as_ref())?;
            print(json, &changed, || output::account_rate_limited(&changed))
        }
    }
}

/// A limit from `--requests`, `--per` and `--burst` (clap requires the first two unless
/// `--remove`), or none for `--remove`.
fn flag_limit(flags: &LimitFlags) -> Result<Option<RawLimit>, CliError> {
    match (&flags.requests, &flags.per) {
        (Some(requests), Some(per)) if !flags.remove => Ok(Some(
            limit_from_text(requests, per, flags.burst.as_deref().unwrap_or(""))
                .map_err(CliError::Input)?,
        )),
        _ => Ok(None),
    }
}

fn key(admin: &Admin, command: &KeyCommand, json: bool) -> Result<(), CliError> {
    match command {
        KeyCommand::Create {
            account,
            key_type,
            environment,
            name,
            expires_in,
            expires_at,
        } => {
            let expires_at = match (expires_in, expires_at) {
                (Some(0), _) => {
                    return Err(CliError::Input("--expires-in must be at least 1s".into()))
                }
                (Some(seconds), _) => Some(now_unix() + seconds),
                (None, Some(at)) => Some(
                    parse_rfc3339(at).map_err(|e| CliError::Input(format!("--expires-at: {e}")))?,
                ),
                (None, None) => None,
            };
            let spec = KeySpec {
                kind: KeyKind::new((*key_type).into(), (*environment).into()),
                name: name.clone(),
                expires_at,
            };
            let issued = admin.create_key(account, &spec)?;
            print(json, &issued, || output::issued_key(&issued))
        }
        KeyCommand::List { account } => {
            let keys = KeyListView {
                keys: admin.keys(account.as_deref())?,
            };
            print(json, &keys, || output::keys(&keys.keys))
        }
        KeyCommand::Roll {
            key_id,
            expires_in,
            name,
        } => {
            let rolled = admin.roll_key(key_id, expires_in.unwrap_or(0), name.as_deref())?;
            print(json, &rolled, || output::rolled(&rolled, now_unix()))
        }
        KeyCommand::Rename { key_id, name, .. } => {
            let renamed = admin.rename_key(key_id, name.as_deref())?;
            print(json, &renamed, || output::renamed(&renamed))
        }
        KeyCommand::Limit { key_id, limit } => {
            let limit = flag_limit(limit)?;
            let changed = admin.set_rate_limit(key_id, limit.as_ref())?;
            print(json, &changed, || output::rate_limited(&changed))
        }
        KeyCommand::Revoke { key_id } => change(admin, key_id, KeyChange::Revoke, json),
        KeyCommand::Disable { key_id } => change(admin, key_id, KeyChange::Disable, json),
        KeyCommand::Enable { key_id } => change(admin, key_id, KeyChange::Enable, json),
        KeyCommand::Import {
            file: Some(path),
            dry_run,
            ..
        } => import_file(admin, path, *dry_run, json),
        KeyCommand::Import {
            account,
            key_type,
            environment,
            digest,
            name,
            ..
        } => {
            let Some(account) = account else {
                return Err(CliError::Input("give --account, or --file".into()));
            };
            let mut request = import_request(
                account,
                key_type.map(KeyType::from),
                environment.map(Environment::from),
                digest.as_deref(),
            )?;
            request.name = name.clone();
            let imported = admin.import_key(&request)?;
            print(json, &imported, || {
                output::key_changed(&imported, "imported")
            })
        }
    }
}

fn change(admin: &Admin, key_id: &str, change: KeyChange, json: bool) -> Result<(), CliError> {
    let key = admin.change_key(key_id, change)?;
    print(json, &key, || {
        output::key_changed(&key, change.past_tense())
    })
}

/// Builds an import from `--digest`, or from a plaintext key on standard input that is
/// hashed here and never leaves this process.
fn import_request(
    account_id: &str,
    key_type: Option<KeyType>,
    environment: Option<Environment>,
    digest: Option<&str>,
) -> Result<ImportKeyRequest, CliError> {
    if let Some(digest) = digest {
        let (Some(key_type), Some(environment)) = (key_type, environment) else {
            return Err(CliError::Input(
                "with --digest, give --type and --environment too".into(),
            ));
        };
        return Ok(ImportKeyRequest {
            account_id: account_id.to_string(),
            key_type,
            environment,
            digest: parse_digest(digest)?.to_hex(),
            hint: None,
            name: None,
            expires_at: None,
        });
    }
    let key = read_key_from_stdin()?;
    let kind = check_key(&key)
        .map_err(|e| CliError::Input(format!("the filter would refuse this key: {e}")))?;
    for (given, actual, what) in [
        (
            key_type.map(KeyType::as_str),
            kind.key_type.as_str(),
            "type",
        ),
        (
            environment.map(Environment::as_str),
            kind.environment.as_str(),
            "environment",
        ),
    ] {
        if given.is_some_and(|g| g != actual) {
            return Err(CliError::Input(format!(
                "--{what} says {}, but the key's prefix {} says {actual}",
                given.unwrap_or_default(),
                kind.prefix()
            )));
        }
    }
    Ok(ImportKeyRequest {
        account_id: account_id.to_string(),
        key_type: kind.key_type,
        environment: kind.environment,
        digest: Digest::of_key(&key).to_hex(),
        hint: Some(key_hint(&key)),
        name: None,
        expires_at: None,
    })
}

/// `key import --file`: the file is checked whole here (plaintext keys are hashed and go no
/// further), then by the store; any problem refuses the whole import.
fn import_file(
    admin: &Admin,
    path: &std::path::Path,
    dry_run: bool,
    json: bool,
) -> Result<(), CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let keys = crate::import::parse_jsonl(&text, now_unix()).map_err(|problems| {
        CliError::Service(crate::service::ServiceError::ImportRefused(problems))
    })?;
    let request = crate::model::BulkImportRequest { dry_run, keys };
    let imported = admin.import_keys(&request)?;
    print(json, &imported, || output::imported(&imported))
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn since_time(text: &str, now: u64) -> Result<u64, CliError> {
    if let Ok(seconds) = crate::duration::parse_duration(text) {
        return Ok(now.saturating_sub(seconds));
    }
    parse_rfc3339(text)
        .map_err(|e| CliError::Input(format!("--since: {e}, or a duration ago such as 24h or 7d")))
}

fn audit(admin: &Admin, args: &AuditArgs, json: bool) -> Result<(), CliError> {
    if args.limit == 0 || args.limit > crate::store::audit::MAX_AUDIT_LIMIT {
        return Err(CliError::Input(format!(
            "--limit must be 1 to {}",
            crate::store::audit::MAX_AUDIT_LIMIT
        )));
    }
    let query = AuditQuery {
        account_id: args.account.clone(),
        since: args
            .since
            .as_deref()
            .map(|s| since_time(s, now_unix()))
            .transpose()?,
        before: None,
        limit: args.limit,
    };
    let events = admin.audit(&query)?;
    print(json, &events, || output::audit(&events.events))
}

/// One key from standard input, without its trailing newline. At a terminal, one line.
fn read_key_from_stdin() -> Result<String, CliError> {
    let stdin = std::io::stdin();
    let mut text = String::new();
    if stdin.is_terminal() {
        eprint!("Paste the key and press Enter: ");
        stdin.lock().read_line(&mut text).map_err(CliError::Stdin)?;
    } else {
        stdin
            .lock()
            .read_to_string(&mut text)
            .map_err(CliError::Stdin)?;
    }
    let key = text.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        return Err(CliError::Input(
            "no key on standard input (pipe it in, e.g. `printf %s \"$KEY\" | keygatectl …`)"
                .into(),
        ));
    }
    if key.contains(['\n', '\r']) {
        return Err(CliError::Input(
            "standard input holds more than one line; give one key".into(),
        ));
    }
    Ok(key.to_string())
}

fn hash(json: bool) -> Result<(), CliError> {
    let key = read_key_from_stdin()?;
    if let Err(e) = check_key(&key) {
        eprintln!("keygatectl: warning: the filter would refuse this key before any lookup: {e}");
    }
    let digest = Digest::of_key(&key).to_hex();
    print(json, &serde_json::json!({ "digest": digest }), || {
        format!("{digest}\n")
    })
}

fn run_serve(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    refuse_server(cli, "serve")?;
    crate::log::configure(args.log_format, args.log_level);
    let metrics_token = args
        .metrics_token_file
        .as_deref()
        .map(|path| crate::auth::read_token_file(path, "metrics token"))
        .transpose()?
        .map(|token| Digest::of_key(&token));
    if args.purge_interval == 0 {
        return Err(CliError::Input(
            "--purge-interval must be at least 1s".into(),
        ));
    }
    let admin_token = admin_token_from(cli.admin_token_file.as_deref())?;
    let sync_token = if args.no_sync_token {
        SyncTokenSetting::Off
    } else {
        SyncTokenSetting::Required {
            file: args
                .sync_token_file
                .clone()
                .or_else(|| sync_token::default_file(&cli.database)),
        }
    };
    let allowed_hosts = AllowedHosts::new(args.allowed_hosts.iter().cloned())
        .map_err(|e| CliError::Input(e.to_string()))?;
    if args.usage_retention < 86_400 {
        return Err(CliError::Input(
            "--usage-retention must be at least 1d".into(),
        ));
    }
    let store = open_store(cli)?;
    serve(
        store,
        ServeOptions {
            listen: args.listen,
            admin_token,
            sync_token,
            allowed_hosts,
            purge_interval: Duration::from_secs(args.purge_interval),
            customers: customer_setup(&args.customers),
            usage_retention_days: args.usage_retention / 86_400,
            ops: crate::ops::OpsOptions { metrics_token },
        },
    )?;
    Ok(())
}

/// `keygatectl probe URL`: a health check for images without curl.
fn probe(url: &str) -> Result<(), CliError> {
    if !url.starts_with("http://") {
        return Err(CliError::Input(format!(
            "probe needs an http:// URL, not {url:?}"
        )));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    match agent.get(url).call() {
        Ok(answer) if answer.status().is_success() => Ok(()),
        Ok(answer) => Err(CliError::Probe(format!(
            "{url} answered {}",
            answer.status()
        ))),
        Err(e) => Err(CliError::Probe(format!("{url}: {e}"))),
    }
}

fn customer_setup(args: &crate::cli::CustomerArgs) -> crate::serve::CustomerSetup {
    let mail = match (&args.smtp_url, &args.outbox) {
        (Some(url), _) => Some(crate::mail::MailRoute::Smtp {
            url: url.clone(),
            ca_file: args.smtp_ca_file.clone(),
        }),
        (None, Some(dir)) => Some(crate::mail::MailRoute::Outbox(dir.clone())),
        (None, None) => None,
    };
    crate::serve::CustomerSetup {
        public_url: args.public_url.clone(),
        mail,
        mail_from: args.mail_from.clone(),
    }
}

fn sync_token_command(cli: &Cli, command: &SyncTokenCommand) -> Result<(), CliError> {
    refuse_server(cli, "sync-token")?;
    match command {
        SyncTokenCommand::Rotate {
            new_token_file: Some(path),
            ..
        } => {
            let token = read_token_file(path, "sync token")?;
            open_store(cli)?.set_sync_token_digest(
                &Digest::of_key(&token),
                now_unix(),
                &Actor::cli(),
            )?;
            eprintln!(
                "keygatectl: sync token replaced with the one in {}. Running servers accept \
                 only it within a second: update every filter's bearer_token, and give serve \
                 that file.",
                path.display()
            );
            Ok(())
        }
        SyncTokenCommand::Rotate {
            sync_token_file, ..
        } => {
            let path = sync_token::file_for(sync_token_file.as_deref(), &cli.database)?;
            let store = open_store(cli)?;
            sync_token::rotate(store.as_ref(), &path, &Actor::cli())?;
            eprintln!(
                "keygatectl: sync token replaced; the new one is in {} (readable by its owner \
                 only). Running servers accept only it within a second: update every filter's \
                 bearer_token.",
                path.display()
            );
            Ok(())
        }
        SyncTokenCommand::Render {
            template,
            output,
            sync_token_file,
        } => {
            let path = sync_token::file_for(sync_token_file.as_deref(), &cli.database)?;
            let text = std::fs::read_to_string(template).map_err(|source| CliError::File {
                path: template.clone(),
                source,
            })?;
            let store = open_store(cli)?;
            sync_token::ensure(store.as_ref(), Some(&path), &Actor::cli())?;
            let token = read_token_file(&path, "sync token")?;
            let rendered = sync_token::render(&text, template, &token)?;
            match output {
                Some(out) => {
                    replace_private(out, rendered.as_bytes()).map_err(|source| {
                        CliError::SyncToken(SyncTokenError::Write {
                            path: out.clone(),
                            source,
                        })
                    })?;
                    eprintln!(
                        "keygatectl: wrote {} with the sync token (readable by its owner only)",
                        out.display()
                    );
                    Ok(())
                }
                None => emit(&rendered),
            }
        }
    }
}

fn keymap(cli: &Cli, command: &KeymapCommand) -> Result<(), CliError> {
    refuse_server(cli, "keymap")?;
    let store = open_store(cli)?;
    let status = match command {
        KeymapCommand::Status => store.key_map_status()?,
        KeymapCommand::NewLineage => {
            let status = store.new_lineage()?;
            eprintln!(
                "keygatectl: started a new lineage: store {}, version {}. Running servers \
                 serve it within a second; every filter takes its next full map as a new \
                 lineage.",
                status.store, status.version
            );
            status
        }
    };
    let doc = serde_json::json!({ "store": status.store.as_str(), "version": status.version });
    print(cli.json, &doc, || {
        format!("store {}\nversion {}\n", status.store, status.version)
    })
}

fn admin_token(cli: &Cli, command: &AdminTokenCommand) -> Result<(), CliError> {
    refuse_server(cli, "admin-token")?;
    let AdminTokenCommand::Rotate { new_token_file } = command;
    let store = open_store(cli)?;
    match new_token_file {
        Some(path) => {
            let token = read_token_file(path, "admin token")?;
            store.set_admin_token_digest(&Digest::of_key(&token), now_unix(), &Actor::cli())?;
            eprintln!(
                "keygatectl: admin token replaced with the one in {}",
                path.display()
            );
            Ok(())
        }
        None => {
            let token = new_admin_token()?;
            store.set_admin_token_digest(&Digest::of_key(&token), now_unix(), &Actor::cli())?;
            eprintln!("keygatectl: admin token replaced; the new one is shown this once:");
            emit(&format!("{token}\n"))
        }
    }
}

fn export(admin: &Admin, args: &ExportArgs) -> Result<(), CliError> {
    let (version, keys) = match admin.key_map()? {
        KeyMapMessage::Full { version, keys } => (version, keys),
        KeyMapMessage::Delta { .. } => {
            return Err(CliError::Input(
                "the server answered a delta where a full key map was asked for".into(),
            ))
        }
    };
    let base = match &args.base {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::File {
                path: path.clone(),
                source,
            })?;
            let base = parse_base(&text)?;
            if base
                .get("keys")
                .and_then(|k| k.as_array())
                .is_some_and(|k| !k.is_empty())
            {
                eprintln!(
                    "keygatectl: note: the keys in {} are replaced by the key map's",
                    path.display()
                );
            }
            Some(base)
        }
        None => None,
    };
    let plugin = plugin_config(&keys, base)?;
    let document = match args.format {
        ExportFormat::PluginConfig => plugin,
        ExportFormat::ExtensionConfig => extension_config(&plugin, &args.wasm)?,
    };
    let text = serde_json::to_string_pretty(&document)
        .map_err(|e| CliError::Input(format!("cannot encode the configuration: {e}")))?;
    match &args.output {
        Some(path) => {
            write_atomically(path, format!("{text}\n").as_bytes())?;
            eprintln!(
                "keygatectl: wrote {} keys (key map version {version}) to {}",
                keys.len(),
                path.display()
            );
            Ok(())
        }
        None => emit(&format!("{text}\n")),
    }
}
