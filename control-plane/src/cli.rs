//! The command line, as clap parses it. What each command does is in `commands.rs`.

use crate::duration::parse_duration;
use crate::export::DEFAULT_WASM_PATH;
use clap::{Args, Parser, Subcommand, ValueEnum};
use keygate_core::key::{Environment, KeyType};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "keygatectl",
    version,
    about = "keygate's control plane: accounts, API keys, and the key map the Envoy filters poll"
)]
pub struct Cli {
    /// The SQLite database file (created on first use), or a PostgreSQL URL
    /// (postgres://user@host:port/dbname) for several replicas over one database. A URL
    /// with a password belongs in KEYGATE_DATABASE (or PGPASSWORD), not on the command line.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_DATABASE",
        hide_env_values = true,
        default_value = "keygate.db",
        value_name = "PATH|URL"
    )]
    pub database: PathBuf,

    /// Act on a running `keygatectl serve` instead of the database file.
    #[arg(long, global = true, env = "KEYGATE_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// File holding the admin token (else the KEYGATE_ADMIN_TOKEN environment variable).
    #[arg(long, global = true, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Print JSON (the HTTP API's shapes) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the key-map endpoint the filters poll.
    Serve(ServeArgs),
    /// Create, list and show accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Create, list, roll, revoke, disable, enable and import keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Write the key map as the filter's configuration.
    Export(ExportArgs),
    /// Print the SHA-256 digest (hex) of a key read from standard input.
    Hash,
    /// Manage the admin token of the database.
    #[command(subcommand)]
    AdminToken(AdminTokenCommand),
    /// Manage the sync token the filters send to read the key map.
    #[command(subcommand)]
    SyncToken(SyncTokenCommand),
    /// Inspect the key map's store and version, or start a new lineage.
    #[command(subcommand)]
    Keymap(KeymapCommand),
    /// The audit trail: who changed what, when and from where (newest last).
    Audit(AuditArgs),
    /// Exit 0 when GET URL answers 2xx within 2 s, else 1: a container health check that
    /// needs no curl (`keygatectl probe http://127.0.0.1:8080/readyz`).
    Probe {
        /// An http:// URL on this machine, e.g. http://127.0.0.1:8080/readyz.
        url: String,
    },
}

/// A rate limit as `key limit` and `account limit` take it.
#[derive(Debug, Args)]
pub struct LimitFlags {
    /// Requests allowed per period (1 to 1000000).
    #[arg(long, required_unless_present = "remove", value_name = "N")]
    pub requests: Option<String>,
    /// The period: second or minute.
    #[arg(long, required_unless_present = "remove", value_name = "PERIOD")]
    pub per: Option<String>,
    /// Requests allowed at once after a quiet spell (default: --requests).
    #[arg(long, value_name = "N")]
    pub burst: Option<String>,
    /// Remove the limit.
    #[arg(long, conflicts_with_all = ["requests", "per", "burst"])]
    pub remove: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this account's events.
    #[arg(long, value_name = "ACCOUNT_ID")]
    pub account: Option<String>,
    /// Only events since then: an RFC 3339 time (2026-05-01T00:00:00Z) or a duration ago
    /// (24h, 7d).
    #[arg(long, value_name = "TIME|DURATION")]
    pub since: Option<String>,
    /// At most this many events (the newest).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the address is logged on start).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The sync token /v1/keymap requires (`Authorization: Bearer <token>`): read from
    /// FILE, or on first start generated into it (owner-only). Default: the database path
    /// with `.sync-token` appended (SQLite); with PostgreSQL, give it on the first start.
    #[arg(long, env = "KEYGATE_SYNC_TOKEN_FILE", value_name = "FILE")]
    pub sync_token_file: Option<PathBuf>,
    /// Serve the key map without a token, to anyone who can reach the server.
    #[arg(long, conflicts_with = "sync_token_file")]
    pub no_sync_token: bool,
    /// Answer requests naming this Host too (repeatable; `*.example.com` for subdomains).
    /// IP addresses and localhost are always answered; other names get 421, which stops
    /// DNS rebinding.
    #[arg(
        long = "allowed-host",
        env = "KEYGATE_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub allowed_hosts: Vec<String>,
    /// How often expired keys are purged from the key map (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub purge_interval: u64,
    /// How long the filters' usage reports are kept (per-day counts and report ids; at
    /// least 1d). Last-used times are kept for good.
    #[arg(long, default_value = "90d", value_parser = parse_duration, value_name = "DURATION")]
    pub usage_retention: u64,
    /// Require `Authorization: Bearer <token>` on /metrics, the token read from FILE (16+
    /// visible characters). Without it, /metrics answers whoever passes the Host check.
    #[arg(long, env = "KEYGATE_METRICS_TOKEN_FILE", value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// The log's form: text (one line an event: time, level, message) or json (one object
    /// a line: time, level, message).
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::log::Format,
    /// The lowest level logged: debug, info, warn or error.
    #[arg(long, env = "KEYGATE_LOG_LEVEL", value_enum, default_value = "info")]
    pub log_level: crate::log::Level,
    #[command(flatten)]
    pub customers: CustomerArgs,
}

/// The customer pages' mail and links.
#[derive(Debug, Args)]
pub struct CustomerArgs {
    /// Where links in mails point (e.g. https://keys.example.com); default: http:// and the
    /// address listened on. An https:// URL also marks cookies Secure.
    #[arg(long, env = "KEYGATE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Send customer mail through this SMTP server: smtp://host:25 (plain), smtp://host:587?
    /// tls=required (STARTTLS), smtps://host:465 (TLS); user:password@ for AUTH. A URL with a
    /// password belongs in KEYGATE_SMTP_URL, not on the command line.
    #[arg(
        long,
        env = "KEYGATE_SMTP_URL",
        hide_env_values = true,
        value_name = "URL",
        conflicts_with = "outbox"
    )]
    pub smtp_url: Option<String>,
    /// Trust this CA (PEM) for the SMTP server's certificate, in addition to the public
    /// roots: a mail relay with a private CA.
    #[arg(
        long,
        env = "KEYGATE_SMTP_CA_FILE",
        value_name = "PEM",
        requires = "smtp_url"
    )]
    pub smtp_ca_file: Option<PathBuf>,
    /// Write customer mail as .eml files into DIR instead of sending it (demos, development).
    #[arg(long, env = "KEYGATE_OUTBOX", value_name = "DIR")]
    pub outbox: Option<PathBuf>,
    /// The sender of customer mail.
    #[arg(
        long,
        env = "KEYGATE_MAIL_FROM",
        default_value = "keygate <keygate@localhost>",
        value_name = "ADDRESS"
    )]
    pub mail_from: String,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account with its four keys (secret and publishable, test and production).
    Create {
        /// A name for people; optional.
        #[arg(long)]
        name: Option<String>,
    },
    /// List accounts.
    List,
    /// Show an account and its keys.
    Show { account_id: String },
    /// Set the account's default rate limit: each of its keys without a limit of its own
    /// gets it (Envoy answers 429 beyond it); --remove lifts it. Takes effect at the
    /// filters' next key-map poll, without restart.
    Limit {
        account_id: String,
        #[command(flatten)]
        limit: LimitFlags,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyTypeArg {
    #[value(alias = "sk")]
    Secret,
    #[value(alias = "pk")]
    Publishable,
}

impl From<KeyTypeArg> for KeyType {
    fn from(arg: KeyTypeArg) -> KeyType {
        match arg {
            KeyTypeArg::Secret => KeyType::Secret,
            KeyTypeArg::Publishable => KeyType::Publishable,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EnvironmentArg {
    Test,
    #[value(alias = "prod")]
    Production,
}

impl From<EnvironmentArg> for Environment {
    fn from(arg: EnvironmentArg) -> Environment {
        match arg {
            EnvironmentArg::Test => Environment::Test,
            EnvironmentArg::Production => Environment::Production,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Issue a new key; its plaintext is shown this once.
    Create {
        #[arg(long, value_name = "ACCOUNT_ID")]
        account: String,
        #[arg(long = "type", value_name = "TYPE")]
        key_type: KeyTypeArg,
        #[arg(long, visible_alias = "env")]
        environment: EnvironmentArg,
        /// A name for people ("iOS app 2.3"); never in the key map or logs.
        #[arg(long)]
        name: Option<String>,
        /// The key stops working this long after it is made (e.g. 30d, 12h; at most 366d).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION", conflicts_with = "expires_at")]
        expires_in: Option<u64>,
        /// The key stops working at this time (RFC 3339, e.g. 2026-12-31T23:59:59Z).
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// List keys (hints and digests, never plaintext).
    List {
        #[arg(long, value_name = "ACCOUNT_ID")]
        account: Option<String>,
    },
    /// Issue a new key of the same kind; the old one stops working now or after a grace period.
    Roll {
        key_id: String,
        /// Keep the old key working this long (e.g. 90s, 30m, 24h, 7d).
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        expires_in: Option<u64>,
        /// The new key's name (default: the old key's).
        #[arg(long)]
        name: Option<String>,
    },
    /// Name a key, or remove its name with --clear.
    Rename {
        key_id: String,
        /// The new name.
        #[arg(required_unless_present = "clear")]
        name: Option<String>,
        /// Remove the key's name.
        #[arg(long, conflicts_with = "name")]
        clear: bool,
    },
    /// Limit a key's requests (Envoy answers 429 beyond it), or lift the limit with
    /// --remove. Takes effect at the filters' next key-map poll, without restart.
    Limit {
        key_id: String,
        #[command(flatten)]
        limit: LimitFlags,
    },
    /// Take a key out of service for good.
    Revoke { key_id: String },
    /// Refuse a key (the filter answers disabled_api_key) until it is enabled again.
    Disable { key_id: String },
    /// Accept a disabled key again.
    Enable { key_id: String },
    /// Store a key issued elsewhere by its digest: the plaintext is read from standard input
    /// and never stored, or give --digest. With --file, many keys from a JSONL file, checked
    /// whole and imported in one transaction.
    Import {
        /// The account (not with --file: each line names its own).
        #[arg(long, value_name = "ACCOUNT_ID", required_unless_present = "file")]
        account: Option<String>,
        /// A JSONL file, one key a line: {"key": PLAINTEXT} or {"digest": HEX}, "type",
        /// "environment", "account", optional "name" and "expires_at" (RFC 3339 or unix
        /// seconds). Keys already stored as given are left unchanged.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["account", "digest", "key_type", "environment"])]
        file: Option<PathBuf>,
        /// With --file: check everything and report what would change, writing nothing.
        #[arg(long, requires = "file")]
        dry_run: bool,
        /// A name for the key (not with --file).
        #[arg(long, conflicts_with = "file")]
        name: Option<String>,
        /// Required with --digest; else taken from the key's prefix.
        #[arg(long = "type", value_name = "TYPE")]
        key_type: Option<KeyTypeArg>,
        /// Required with --digest; else taken from the key's prefix.
        #[arg(long, visible_alias = "env")]
        environment: Option<EnvironmentArg>,
        /// The key's SHA-256 digest in hex, instead of the key on standard input.
        #[arg(long, value_name = "HEX")]
        digest: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// The filter's plugin configuration JSON.
    PluginConfig,
    /// An Envoy `resources:` file for file-based extension config discovery (ECDS).
    ExtensionConfig,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "plugin-config")]
    pub format: ExportFormat,
    /// A plugin configuration JSON object to merge the keys into.
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
    /// The filter's .wasm file, for --format extension-config.
    #[arg(long, default_value = DEFAULT_WASM_PATH, value_name = "PATH")]
    pub wasm: String,
    /// Write here (atomically: temp file and rename) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Replace the admin token: with the one in --new-token-file, else a generated one
    /// printed once. A running server accepts the new token within a second.
    Rotate {
        #[arg(long, value_name = "FILE")]
        new_token_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SyncTokenCommand {
    /// Replace the sync token: a new one written to the token file (owner-only), or the one
    /// in --new-token-file. A running server accepts only the new one within a second:
    /// update the filters' bearer_token.
    Rotate {
        /// Where the new token goes (default: beside the SQLite database).
        #[arg(long, env = "KEYGATE_SYNC_TOKEN_FILE", value_name = "FILE")]
        sync_token_file: Option<PathBuf>,
        /// Take the token in FILE instead of making one (e.g. a Kubernetes Secret's); then
        /// give `serve` that file.
        #[arg(long, value_name = "FILE", conflicts_with = "sync_token_file")]
        new_token_file: Option<PathBuf>,
    },
    /// Copy a config template with every KEYGATE_SYNC_TOKEN in it replaced by the sync token
    /// (set up first, as `serve` would, if there is none yet).
    Render {
        /// The template, e.g. an Envoy config whose bearer_token is KEYGATE_SYNC_TOKEN.
        template: PathBuf,
        /// Write here (owner-only; atomically) instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The token file (default: beside the SQLite database).
        #[arg(long, env = "KEYGATE_SYNC_TOKEN_FILE", value_name = "FILE")]
        sync_token_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeymapCommand {
    /// The key map's store id and version.
    Status,
    /// Start a new lineage: a new store id, the version set to now, the change log emptied.
    /// For a version that can no longer rise (a rogue value); every filter takes the next
    /// full map as a new lineage.
    NewLineage,
}
