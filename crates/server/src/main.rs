//! The `ferrolink` command line: run the server, manage apps and keys, call
//! functions, simulate a device.

mod config_file;
mod demo_device;
mod operations;

/// `println!` for a running server: its stdout may be a pipe that a
/// supervisor stopped reading, and a server must not die of that.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// mimalloc: the call path allocates a few small buffers per call, and
/// glibc's allocator was a tenth of the server's time under load
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use demo_device as sim;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

use ferrolink::keys::{parse_privilege, privilege_name};
use ferrolink::storage::Store;
use ferrolink::{Server, ServerConfig};
use ferrolink_proto::message::Privilege;

/// ferrolink: connect microcontrollers and computers to web apps.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Data directory (SQLite database and app files).
    #[arg(
        long,
        global = true,
        env = "FERROLINK_DATA",
        default_value = "./ferrolink-data"
    )]
    data: PathBuf,
    /// A PostgreSQL database for apps, keys, accounts, trust bundles and
    /// data tables (postgres://USER[:PASSWORD]@HOST[:PORT]/NAME; add
    /// ?sslrootcert=CA.pem for TLS), shared by every server and command
    /// given the same URL; without it they are kept in SQLite in the data
    /// directory.
    #[arg(long, global = true, env = "FERROLINK_DATABASE", value_name = "URL")]
    database: Option<String>,
    /// A TOML file of `serve` settings (see `ferrolink config default`);
    /// environment variables and flags override it.
    #[arg(long, global = true, env = "FERROLINK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. On a fresh data directory, creates the app `demo` with
    /// a server key and a client key and prints them once.
    Serve(Box<ServeArgs>),
    /// Manage apps.
    #[command(subcommand)]
    App(AppCommand),
    /// Manage uplink keys (works while the server runs).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage an app's data tables (works while the server runs).
    #[command(subcommand)]
    Table(TableCommand),
    /// Manage dashboard operators.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Sign and publish trust bundles: the roots and revocations devices
    /// accept, updated over the link without new firmware.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Print the commented default config file, or check one.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Copy the data directory (the database, consistently, while the
    /// server runs; certificates, keys and app front ends) into DEST.
    Backup {
        /// A directory that does not exist yet (or is empty).
        dest: PathBuf,
    },
    /// Make the data directory a copy of a backup. Stop the server first.
    Restore {
        /// A directory `ferrolink backup` wrote.
        src: PathBuf,
        /// Move an existing data directory aside (to DATA.before-restore-TIME)
        /// instead of refusing.
        #[arg(long)]
        replace: bool,
    },
    /// Copy a single server's SQLite database (apps, keys, users, trust
    /// bundles, data tables and their rows) into an empty PostgreSQL
    /// database, for a cluster (docs/cluster.md). Stop the server first.
    Migrate {
        /// `sqlite:DIR`, the data directory of the server to copy (default:
        /// --data).
        #[arg(long, value_name = "sqlite:DIR")]
        from: Option<String>,
        /// `postgres://…`, an empty database (default: --database).
        #[arg(long, value_name = "postgres://…")]
        to: Option<String>,
    },
    /// Call a function and print its JSON result (errors: exit 1).
    Call(CallArgs),
    /// Run a simulated Pico W: registers blink_morse(text),
    /// read_temperature() and set_led(on), and logs a reading to the app's
    /// `log_reading` function every few seconds if the app has one.
    DeviceSim(SimArgs),
}

#[derive(Subcommand)]
enum TableCommand {
    /// Create a table.
    Create {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table's name (letters, digits and '_').
        table: String,
        /// A column, NAME:TYPE with TYPE one of text, number, bool, date,
        /// datetime, simpleObject, link:TABLE, links:TABLE. Repeatable.
        #[arg(long = "column", value_name = "NAME:TYPE")]
        columns: Vec<String>,
    },
    /// Add a column to a table.
    AddColumn {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table.
        table: String,
        /// NAME:TYPE.
        column: String,
    },
    /// Rename a table (link columns follow).
    Rename {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table.
        table: String,
        /// Its new name.
        to: String,
    },
    /// Delete a table and all its rows.
    Drop {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table.
        table: String,
        /// Confirm: the rows are gone for good.
        #[arg(long)]
        yes: bool,
    },
    /// Rename a column (its values stay).
    RenameColumn {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Its new name.
        to: String,
    },
    /// Delete a column and every value in it.
    DropColumn {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Confirm: the values are gone for good.
        #[arg(long)]
        yes: bool,
    },
    /// List an app's tables with their columns and row counts.
    List {
        /// The app.
        #[arg(long)]
        app: String,
    },
    /// Set what client keys and browser pages may do with a table: none
    /// (the default), add (add rows only: a logging device), read, or
    /// write. Server keys may always do everything.
    Set {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table.
        table: String,
        /// none, add, read or write.
        #[arg(long, value_name = "ACCESS")]
        client: String,
        /// Only for browser pages with a logged-in user (client keys then
        /// get nothing).
        #[arg(long)]
        logged_in: bool,
    },
    /// Add a row: a JSON object of column values.
    AddRow {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table.
        table: String,
        /// The values, e.g. '{"t": "2026-12-02T14:00:00Z", "celsius": 21.5}'.
        values: String,
    },
    /// Print rows as JSON lines, `{"id": N, "values": {...}}`, or as CSV.
    Rows {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table.
        table: String,
        /// Only rows whose column equals a JSON value: COLUMN=JSON. Repeatable.
        #[arg(long = "where", value_name = "COLUMN=JSON")]
        filters: Vec<String>,
        /// Order by this column (prefix with - for descending:
        /// `--order-by=-t`).
        #[arg(long, allow_hyphen_values = true)]
        order_by: Option<String>,
        /// Most rows to print (default 100; with --csv, all).
        #[arg(long)]
        limit: Option<usize>,
        /// Rows to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Print CSV (a header of column names, then a line per row).
        #[arg(long)]
        csv: bool,
    },
    /// Downsample a number column over a datetime column: one JSON line
    /// per time bucket with min, max, mean and count.
    Chart {
        /// The app.
        #[arg(long)]
        app: String,
        /// The table.
        table: String,
        /// The datetime column.
        #[arg(long)]
        time: String,
        /// The number column.
        #[arg(long)]
        value: String,
        /// Start of the range (RFC 3339).
        #[arg(long)]
        from: String,
        /// End of the range (RFC 3339, excluded).
        #[arg(long)]
        to: String,
        /// Most buckets.
        #[arg(long, default_value_t = 100)]
        buckets: usize,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every setting with its help and default, commented out.
    Default,
    /// Check a config file: known settings, values that parse.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct Connection {
    /// Uplink URL, e.g. ws://127.0.0.1:3030/_/uplink.
    #[arg(long, env = "FERROLINK_URL")]
    url: String,
    /// Uplink key.
    #[arg(long, env = "FERROLINK_KEY", hide_env_values = true)]
    key: String,
}

#[derive(clap::Args)]
struct CallArgs {
    #[command(flatten)]
    connection: Connection,
    /// Function name.
    function: String,
    /// Positional arguments, each one JSON value (a string needs quotes: '"SOS"').
    #[arg(value_name = "JSON_ARG")]
    args: Vec<String>,
    /// Keyword arguments as a JSON object.
    #[arg(long, value_name = "JSON")]
    kwargs: Option<String>,
    /// Call the function on this device only.
    #[arg(long)]
    device: Option<String>,
    /// Deadline in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
}

#[derive(clap::Args)]
struct SimArgs {
    #[command(flatten)]
    connection: Connection,
    /// Name shown in the device's output.
    #[arg(long, default_value = "pico-sim")]
    name: String,
    /// Seconds between readings logged to the app.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// The app function readings are logged to.
    #[arg(long, default_value = "log_reading")]
    log_function: String,
    /// Seconds between `temperature` events sent to every browser session
    /// of the app (0: none).
    #[arg(long, default_value_t = 2)]
    events_every: u64,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "FERROLINK_LISTEN", default_value = "127.0.0.1:3030")]
    listen: SocketAddr,
    /// Where the operator dashboard listens (its own origin, apart from app
    /// pages); `off` serves none. Plain http on loopback; elsewhere it
    /// needs TLS. Port 0 picks a free port.
    #[arg(long, env = "FERROLINK_ADMIN_LISTEN", default_value = "127.0.0.1:3031", value_parser = parse_admin_listen)]
    admin_listen: AdminListen,
    /// The NATS server of a cluster (nats://HOST:PORT): calls for functions
    /// no connection here provides go to the servers that do, over NATS,
    /// and theirs come here. Give every server the same --database too
    /// (docs/cluster.md).
    #[arg(long, env = "FERROLINK_CLUSTER", value_name = "URL")]
    cluster: Option<String>,
    /// PEM file of the certificate authorities the cluster's NATS server
    /// must present a certificate from: the connection to NATS is then
    /// TLS, and refused if the server's certificate does not verify.
    #[arg(
        long,
        env = "FERROLINK_CLUSTER_CA",
        value_name = "PEM",
        requires = "cluster"
    )]
    cluster_ca: Option<PathBuf>,
    /// Deadline of a routed call, in milliseconds.
    #[arg(long, env = "FERROLINK_CALL_TIMEOUT_MS", default_value_t = 30_000)]
    call_timeout_ms: u64,
    /// Largest websocket message accepted, in bytes.
    #[arg(long, env = "FERROLINK_MAX_FRAME_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_frame_bytes: usize,
    /// Most calls one connection may have in flight.
    #[arg(long, env = "FERROLINK_MAX_PENDING_CALLS", default_value_t = 1024)]
    max_pending_calls: usize,
    /// Close a connection whose socket takes none of the bytes waiting for
    /// it for this many milliseconds (a slow consumer).
    #[arg(
        long,
        env = "FERROLINK_WRITE_STALL_TIMEOUT_MS",
        default_value_t = 20_000
    )]
    write_stall_timeout_ms: u64,
    /// Close an uplink after this many milliseconds without a frame.
    #[arg(long, env = "FERROLINK_IDLE_TIMEOUT_MS", default_value_t = 45_000)]
    idle_timeout_ms: u64,
    /// Log format.
    #[arg(long, env = "FERROLINK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Also serve Prometheus metrics (`/metrics`, `/_/metrics`) and the
    /// health checks on this address (plain http). The dashboard's
    /// listener always serves `/_/metrics`.
    #[arg(long, env = "FERROLINK_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// On SIGTERM or Ctrl-C, how long calls in flight may take to finish
    /// (new calls are refused meanwhile) before every connection is closed.
    #[arg(long, env = "FERROLINK_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// Serve TLS with this PEM certificate chain (leaf first); reloaded when
    /// it changes.
    /// (--tls-cert/--tls-key, --dev-tls and --acme are three ways to get a
    /// certificate; where more than one is set, the one from the strongest
    /// source wins: flags over environment over the config file.)
    #[arg(long, env = "FERROLINK_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "FERROLINK_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve TLS with a development CA generated in the data directory; its
    /// file and fingerprint are printed so devices can pin it.
    #[arg(long, env = "FERROLINK_DEV_TLS", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    dev_tls: bool,
    /// With --dev-tls: also certify this host name or IP address (the one
    /// devices on the LAN use to reach the server). Repeatable.
    #[arg(long = "dev-tls-name", value_name = "NAME")]
    dev_tls_names: Vec<String>,
    /// Get (and renew) the certificate for this domain over ACME, answering
    /// the tls-alpn-01 challenge on the listen port (which must be reachable
    /// as DOMAIN:443 from the ACME server).
    #[arg(long, env = "FERROLINK_ACME")]
    acme: Option<String>,
    /// ACME directory URL.
    #[arg(
        long,
        env = "FERROLINK_ACME_DIRECTORY",
        default_value = "https://acme-v02.api.letsencrypt.org/directory"
    )]
    acme_directory: String,
    /// PEM root to trust for the ACME server's own HTTPS (a private ACME
    /// server such as pebble).
    #[arg(long, env = "FERROLINK_ACME_DIRECTORY_ROOT")]
    acme_directory_root: Option<PathBuf>,
    /// Renew this many days before expiry.
    #[arg(long, default_value_t = 30)]
    acme_renew_before_days: u64,
    /// The origin browsers see (`https://app.example`), when the server is
    /// behind a reverse proxy: pages from it may open sessions, cookies get
    /// `Secure` for https, and `anvil.private.get_app_origin` answers it.
    #[arg(long, env = "FERROLINK_PUBLIC_ORIGIN", value_parser = parse_origin)]
    public_origin: Option<String>,
    /// Allow plain ws:// on a non-loopback address (keys cross the network
    /// unencrypted).
    #[arg(long, env = "FERROLINK_INSECURE_PLAIN_WS", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    insecure_plain_ws: bool,
    /// Most connections at once, in all.
    #[arg(long, env = "FERROLINK_MAX_CONNECTIONS", default_value_t = 50_000)]
    max_connections: usize,
    /// Most connections at once from one address (one /64 for IPv6).
    #[arg(
        long,
        env = "FERROLINK_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1_000
    )]
    max_connections_per_address: usize,
    /// Most uplinks at once authenticated with one key.
    #[arg(long, env = "FERROLINK_MAX_CONNECTIONS_PER_KEY", default_value_t = 100)]
    max_connections_per_key: usize,
    /// Most session websockets at once of one browser (logged-in session,
    /// or address for anonymous ones).
    #[arg(long, env = "FERROLINK_MAX_SESSIONS_PER_BROWSER", default_value_t = 20)]
    max_sessions_per_browser: usize,
    /// A reverse proxy (address or CIDR block) whose `Forwarded` or
    /// `X-Forwarded-For` header names the real client. Repeatable.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_cidr)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The header the trusted proxies write the client's address into;
    /// only that one is read (a proxy passes the other through from the
    /// client, who could then name any address).
    #[arg(long, env = "FERROLINK_TRUSTED_PROXY_HEADER", value_enum, default_value_t = ProxyHeaderArg::XForwardedFor)]
    trusted_proxy_header: ProxyHeaderArg,
    /// A host name requests may use besides the certificate's names, the
    /// public origin, IP addresses and localhost. Repeatable.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Also run a simulated device (`device-sim`) on app `demo`, with a fresh
    /// device key named `pico-sim`.
    #[arg(long, env = "FERROLINK_DEMO", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    demo: bool,
    /// With --demo: seconds between the readings the simulated device logs
    /// into the demo app's `readings` table.
    #[arg(
        long,
        env = "FERROLINK_DEMO_LOG_EVERY",
        default_value_t = 5.0,
        value_name = "SECONDS"
    )]
    demo_log_every: f64,
    /// Where each way of getting a certificate was set (filled in after
    /// parsing, from clap's value sources).
    #[arg(skip)]
    tls_sources: TlsSources,
}

/// The source of each TLS setting: `None` where unset.
#[derive(Clone, Copy, Debug, Default)]
struct TlsSources {
    files: Option<clap::parser::ValueSource>,
    dev: Option<clap::parser::ValueSource>,
    acme: Option<clap::parser::ValueSource>,
}

impl TlsSources {
    fn from(serve: &clap::ArgMatches, args: &ServeArgs) -> Self {
        let source = |id: &str| serve.value_source(id);
        Self {
            files: args
                .tls_cert
                .as_ref()
                .and(source("tls_cert").max(source("tls_key"))),
            dev: args.dev_tls.then(|| source("dev_tls")).flatten(),
            acme: args.acme.as_ref().and(source("acme")),
        }
    }
}

/// `--trusted-proxy-header`.
#[derive(Clone, Copy, ValueEnum)]
enum ProxyHeaderArg {
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

/// `--admin-listen`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
struct AdminListen(Option<SocketAddr>);

fn parse_admin_listen(s: &str) -> Result<AdminListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(AdminListen(None));
    }
    s.parse()
        .map(|a| AdminListen(Some(a)))
        .map_err(|_| format!("\"{s}\" is not an address (e.g. 127.0.0.1:3031) or `off`"))
}

/// `10.0.0.0/8`, `2001:db8::/32`, or one address.
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("\"{s}\" is not an address or CIDR block (e.g. 10.0.0.0/8)"))
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum AppCommand {
    /// Create an app.
    Create {
        /// App name (letters, digits, '-', '_', '.').
        name: String,
    },
    /// List apps.
    List,
    /// Deploy an app's front end: replaces it with the contents of DIR
    /// (which must hold an index.html). Works while the server runs.
    Deploy {
        /// The app.
        app: String,
        /// Folder of HTML, JS, CSS and other static files.
        dir: PathBuf,
    },
    /// Change an app's settings.
    Set {
        /// The app.
        app: String,
        /// Whether browser sessions without a logged-in user may call functions.
        #[arg(long)]
        anonymous_calls: Option<bool>,
        /// Whether the app's server code creates data table columns by
        /// adding rows with values for them (as Anvil's "auto-create
        /// missing columns").
        #[arg(long)]
        auto_columns: Option<bool>,
        /// Whether visitors may sign up for accounts themselves.
        #[arg(long)]
        signup: Option<bool>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a dashboard operator. The password is read from stdin with
    /// --password-stdin; otherwise one is generated and printed once.
    CreateUser {
        /// Operator name (letters, digits, '-', '_', '.').
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Set a new password if the operator exists (ends their sessions).
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Create the Ed25519 key that signs trust bundles and print its public
    /// half, which goes into device firmware and client settings. Keep the
    /// key file offline.
    Keygen {
        /// Where to write the key (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a trust bundle: the roots devices pin (replacing the built-in
    /// ones) and certificates or keys they refuse.
    Sign {
        /// The signing key (from `trust keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The bundle's sequence number; devices take only a higher one
        /// than they hold.
        #[arg(long)]
        sequence: u64,
        /// PEM file of root certificates to pin (1 to 4 in all; repeat the flag).
        #[arg(long = "root", required = true, value_name = "PEM")]
        roots: Vec<PathBuf>,
        /// SHA-256 fingerprint (hex) of a certificate's DER or its public key
        /// to refuse (repeatable).
        #[arg(long = "revoke", value_name = "SHA256")]
        revoked: Vec<String>,
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
    },
    /// Publish a signed bundle for connected devices to fetch (works while
    /// the server runs; devices pick it up at their next connection).
    Publish {
        /// The bundle (from `trust sign`).
        bundle: PathBuf,
    },
    /// Show what a bundle holds and check its signature.
    Show {
        /// The bundle.
        bundle: PathBuf,
        /// Check against this public key (hex) rather than the one the bundle names.
        #[arg(long)]
        signer: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key; the key itself is printed once, alone on the last line.
    Create {
        /// The app the key belongs to.
        #[arg(long)]
        app: String,
        /// `server` (may register functions) or `client` (may only call).
        #[arg(long, value_parser = ["server", "client"])]
        privilege: String,
        /// Name the device this key is for; callers can address it as `fn@NAME`.
        #[arg(long)]
        device: Option<String>,
        /// Only these function names (comma-separated, repeatable) may be
        /// registered with the key; an entry with regex syntax is a pattern
        /// names must match in full. A stolen key then cannot take calls
        /// meant for other devices' functions.
        #[arg(long, value_delimiter = ',', value_name = "NAMES")]
        functions: Vec<String>,
    },
    /// Limit (or with no --functions, free) what an existing key may register.
    Restrict {
        /// Key id (from `key list`).
        key_id: String,
        /// Function names or patterns, comma-separated, repeatable.
        #[arg(long, value_delimiter = ',', value_name = "NAMES")]
        functions: Vec<String>,
    },
    /// List keys (never their secrets).
    List {
        /// Only keys of this app.
        #[arg(long)]
        app: Option<String>,
    },
    /// Revoke a key by id or device name; live connections using it close.
    Revoke {
        /// Key id (from `key list`) or device name.
        key_id_or_device: String,
    },
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The command line, with a `--config` file's settings as the defaults
/// (clap then applies the environment and the flags over them).
fn parse_cli() -> Result<Cli> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Cli::command();
    let file = config_file::path_from(&args);
    if let Some(file) = &file {
        cmd = config_file::apply(cmd, file)?;
    }
    let matches = match cmd.try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            if let Some(file) = &file
                && e.kind() == clap::error::ErrorKind::ValueValidation
            {
                eprintln!(
                    "(settings come from {} as well as the command line and environment)",
                    file.display()
                );
            }
            e.exit()
        }
    };
    let mut cli = Cli::from_arg_matches(&matches)?;
    fill_tls_sources(&mut cli, &matches);
    Ok(cli)
}

fn fill_tls_sources(cli: &mut Cli, matches: &clap::ArgMatches) {
    if let Command::Serve(args) = &mut cli.command
        && let Some(serve) = matches.subcommand_matches("serve")
    {
        args.tls_sources = TlsSources::from(serve, args);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(&cli.data, cli.database.as_deref(), *args),
        Command::Config(ConfigCommand::Default) => {
            use clap::CommandFactory as _;
            print!("{}", config_file::default_file(&Cli::command()));
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            use clap::{CommandFactory as _, FromArgMatches as _};
            let cmd =
                config_file::apply(Cli::command(), &file).map_err(|e| usage(format!("{e:#}")))?;
            let matches = cmd
                .try_get_matches_from(["ferrolink", "serve"])
                .map_err(|e| {
                    usage(format!(
                        "{}: {}",
                        file.display(),
                        e.render().to_string().trim()
                    ))
                })?;
            let mut cli = Cli::from_arg_matches(&matches).map_err(|e| usage(e.to_string()))?;
            fill_tls_sources(&mut cli, &matches);
            let Command::Serve(args) = cli.command else {
                unreachable!("parsed as serve")
            };
            server_config(&cli.data, cli.database.as_deref(), *args)
                .map_err(|e| usage(format!("{}: {e:#}", file.display())))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Table(cmd) => table_command(&open(&cli.data, cli.database.as_deref())?, cmd),
        Command::Backup { .. } | Command::Restore { .. } if cli.database.is_some() => {
            Err(usage(
                "backup and restore copy the SQLite database of --data; a PostgreSQL database is backed up with pg_dump and restored with pg_restore".to_owned(),
            ))
        }
        Command::Backup { dest } => operations::backup(&cli.data, &dest),
        Command::Migrate { from, to } => {
            let from = match from {
                None => cli.data.clone(),
                Some(f) => match f.strip_prefix("sqlite:") {
                    Some(dir) => PathBuf::from(dir),
                    None => {
                        return Err(usage(format!(
                            "--from {f}: give sqlite:DIR, the data directory of the server to copy"
                        )));
                    }
                },
            };
            let to = to.or(cli.database.clone()).ok_or_else(|| {
                usage("give the database to copy into: --to postgres://…".to_owned())
            })?;
            if !ferrolink::storage::is_postgres_url(&to) {
                return Err(usage(format!(
                    "--to: expected a postgres:// URL, not {}",
                    ferrolink::storage::redact_url(&to)
                )));
            }
            // No server may write the source while it is copied.
            let _lock = operations::lock_data_dir(&from)?;
            let target = Store::open_database(&from, Some(&to))?;
            let moved = target
                .migrate_from_sqlite(&from.join(ferrolink::storage::DB_FILE))
                .with_context(|| format!("cannot migrate {}", from.display()))?;
            for (table, n) in &moved.records {
                println!("{table}: {n}");
            }
            println!(
                "data tables: {} with {} rows",
                moved.data_tables, moved.data_rows
            );
            println!(
                "copied {} into {}; start the servers with --database pointing there",
                from.display(),
                target.location()
            );
            Ok(())
        }
        Command::Restore { src, replace } => operations::restore(&src, &cli.data, replace),
        Command::App(cmd) => {
            let store = open(&cli.data, cli.database.as_deref())?;
            match cmd {
                AppCommand::Create { name } => {
                    store.create_app(&name)?;
                    println!("created app \"{name}\"");
                    println!(
                        "visitors of its pages must log in before they call device functions; to allow anonymous calls: ferrolink app set {name} --anonymous-calls true"
                    );
                }
                AppCommand::List => {
                    for app in store.apps()? {
                        let site = ferrolink::sites::site_dir(&cli.data, &app.name);
                        println!(
                            "{}\tanonymous-calls={}\tsignup={}\tfront-end={}",
                            app.name,
                            app.anonymous_calls,
                            app.signup,
                            if site.is_dir() { "deployed" } else { "none" }
                        );
                    }
                }
                AppCommand::Deploy { app, dir } => {
                    store.app(&app)?;
                    let d =
                        ferrolink::sites::deploy_dir(&cli.data, &app, &dir).with_context(|| {
                            format!("cannot deploy {} to app \"{app}\"", dir.display())
                        })?;
                    println!(
                        "deployed {} files ({} bytes) to app \"{app}\"; served at /app/{app}/",
                        d.files, d.bytes
                    );
                }
                AppCommand::Set {
                    app,
                    anonymous_calls,
                    signup,
                    auto_columns,
                } => {
                    let mut a = store.set_app(&app, anonymous_calls, signup)?;
                    if let Some(on) = auto_columns {
                        a = store.set_auto_columns(&app, on)?;
                    }
                    println!(
                        "app \"{}\": anonymous-calls={} signup={} auto-columns={} (a running server applies it within a second, to open browser sessions too)",
                        a.name, a.anonymous_calls, a.signup, a.auto_columns
                    );
                }
            }
            Ok(())
        }
        Command::Admin(AdminCommand::CreateUser {
            name,
            password_stdin,
            replace,
        }) => {
            let store = open(&cli.data, cli.database.as_deref())?;
            let (password, show) = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the password from stdin")?;
                (line.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                (ferrolink::auth::new_token()[..20].to_owned(), true)
            };
            ferrolink::auth::check_password(&password).map_err(|e| usage(e.to_string()))?;
            store.create_operator(&name, &ferrolink::auth::hash_password(&password), replace)?;
            println!(
                "operator \"{name}\" can now log in to the dashboard (the URL `serve` prints as \"dashboard:\")"
            );
            if show {
                println!("password (shown only now): {password}");
            }
            Ok(())
        }
        Command::Key(cmd) => {
            let store = open(&cli.data, cli.database.as_deref())?;
            key_command(&store, cmd)
        }
        Command::Trust(cmd) => trust_command(&cli.data, cli.database.as_deref(), cmd),
        Command::Call(args) => call(args),
        Command::DeviceSim(args) => device_sim(args),
    }
}

fn trust_command(data: &Path, database: Option<&str>, cmd: TrustCommand) -> Result<()> {
    use ferrolink::trust;
    match cmd {
        TrustCommand::Keygen { out } => {
            let public = trust::keygen(&out)?;
            println!("wrote the trust signing key to {}", out.display());
            println!(
                "public key (build it into devices: FERROLINK_TRUST_SIGNER for the Pico W firmware, TlsConfig::trust_bundle for the Rust client):"
            );
            println!("{}", trust::public_key_hex(&public));
        }
        TrustCommand::Sign {
            key,
            sequence,
            roots,
            revoked,
            out,
        } => {
            let bundle = trust::sign(&key, sequence, &roots, &revoked)?;
            std::fs::write(&out, &bundle)
                .with_context(|| format!("cannot write {}", out.display()))?;
            print!("{}", trust::describe(&bundle, None)?);
            println!(
                "wrote {}; publish it with `ferrolink trust publish {}`",
                out.display(),
                out.display()
            );
        }
        TrustCommand::Publish { bundle } => {
            let bytes = std::fs::read(&bundle)
                .with_context(|| format!("cannot read {}", bundle.display()))?;
            let sequence = open(data, database)?.publish_trust_bundle(&bytes)?;
            println!("published trust bundle {sequence}; devices fetch it when they next connect");
        }
        TrustCommand::Show { bundle, signer } => {
            let bytes = std::fs::read(&bundle)
                .with_context(|| format!("cannot read {}", bundle.display()))?;
            let signer = match signer {
                Some(hex) => Some(
                    trust::parse_hex32(&hex)
                        .ok_or_else(|| usage(format!("--signer \"{hex}\" is not 64 hex digits")))?,
                ),
                None => None,
            };
            print!("{}", trust::describe(&bytes, signer)?);
        }
    }
    Ok(())
}

/// `scheme://host[:port]`, without a path.
fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim_end_matches('/');
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or("an origin starts with https:// or http://")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(
            "an origin is scheme://host[:port] with no path, e.g. https://app.example".to_owned(),
        );
    }
    Ok(s.to_owned())
}

/// The demo app's front end, shipped in the binary and deployed by
/// `serve --demo`.
const DEMO_SITE: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../../../web/demo/index.html")),
    ("app.js", include_bytes!("../../../web/demo/app.js")),
    ("style.css", include_bytes!("../../../web/demo/style.css")),
];

fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn call(args: CallArgs) -> Result<()> {
    let mut positional = Vec::with_capacity(args.args.len());
    for (i, a) in args.args.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(a).map_err(|e| {
            usage(format!(
                "argument {} ({a:?}) is not JSON: {e}; quote strings, e.g. '\"SOS\"'",
                i + 1
            ))
        })?;
        positional.push(v);
    }
    let mut options =
        ferrolink_client::CallOptions::default().timeout(Duration::from_millis(args.timeout_ms));
    if let Some(k) = &args.kwargs {
        let v: serde_json::Value =
            serde_json::from_str(k).map_err(|e| usage(format!("--kwargs is not JSON: {e}")))?;
        if !v.is_object() {
            return Err(usage(
                "--kwargs must be a JSON object, e.g. '{\"unit\": \"C\"}'".to_owned(),
            ));
        }
        options = options.kwargs(v);
    }
    if let Some(d) = &args.device {
        options = options.device(d);
    }
    client_runtime()?.block_on(async {
        let client = ferrolink_client::Client::builder(&args.connection.url, &args.connection.key)
            .connect()
            .await?;
        let result = client
            .call_raw(&args.function, positional, options)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"));
        client.disconnect().await;
        println!("{}", result?);
        Ok(())
    })
}

fn device_sim(args: SimArgs) -> Result<()> {
    init_logging(LogFormat::Text);
    client_runtime()?.block_on(async {
        let _client = sim::run(
            &args.connection.url,
            &args.connection.key,
            sim::SimOptions {
                name: &args.name,
                log_every: Duration::from_secs(args.log_every.max(1)),
                log_function: &args.log_function,
                events_every: (args.events_every > 0)
                    .then(|| Duration::from_secs(args.events_every)),
            },
        )
        .await?;
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        Ok(())
    })
}

/// A usage error: printed like clap's, exit code 2.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(Usage(message))
}

fn open(data: &Path, database: Option<&str>) -> Result<Store> {
    match database {
        Some(_) => Ok(Store::open_database(data, database)?),
        None => Store::open(data)
            .with_context(|| format!("cannot open data directory {}", data.display())),
    }
}

fn table_command(store: &Store, cmd: TableCommand) -> Result<()> {
    use ferrolink::storage::tables::{Column, Page};
    let column = |s: &str| s.parse::<Column>().map_err(usage);
    let object = |s: &str, what: &str| -> Result<serde_json::Map<String, serde_json::Value>> {
        match serde_json::from_str(s) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            _ => Err(usage(format!(
                "{what} must be a JSON object, e.g. '{{\"celsius\": 21.5}}'"
            ))),
        }
    };
    match cmd {
        TableCommand::Create {
            app,
            table,
            columns,
        } => {
            let columns = columns
                .iter()
                .map(|c| column(c))
                .collect::<Result<Vec<_>>>()?;
            store.create_table(&app, &table, &columns)?;
            println!(
                "created table \"{table}\" in app \"{app}\" with {} column(s)",
                columns.len()
            );
        }
        TableCommand::AddColumn {
            app,
            table,
            column: c,
        } => {
            let c = column(&c)?;
            store.add_column(&app, &table, &c)?;
            println!(
                "added column \"{}\" ({}) to table \"{table}\"",
                c.name, c.kind
            );
        }
        TableCommand::Rename { app, table, to } => {
            store.rename_table(&app, &table, &to)?;
            println!("renamed table \"{table}\" to \"{to}\"");
        }
        TableCommand::Drop { app, table, yes } => {
            let rows = store.count_rows(&app, &table)?;
            if !yes {
                return Err(usage(format!(
                    "this deletes table \"{table}\" and its {rows} row(s) for good; run again with --yes"
                )));
            }
            store.drop_table(&app, &table)?;
            println!("deleted table \"{table}\" ({rows} row(s))");
        }
        TableCommand::RenameColumn {
            app,
            table,
            column,
            to,
        } => {
            store.rename_column(&app, &table, &column, &to)?;
            println!("renamed column \"{column}\" of table \"{table}\" to \"{to}\"");
        }
        TableCommand::DropColumn {
            app,
            table,
            column,
            yes,
        } => {
            if !yes {
                return Err(usage(format!(
                    "this deletes column \"{column}\" of table \"{table}\" and every value in it; run again with --yes"
                )));
            }
            store.drop_column(&app, &table, &column)?;
            println!("deleted column \"{column}\" of table \"{table}\"");
        }
        TableCommand::List { app } => {
            for t in store.tables(&app)? {
                let columns: Vec<String> = t
                    .columns
                    .iter()
                    .map(|c| format!("{}:{}", c.name, c.kind))
                    .collect();
                println!(
                    "{}\trows={}\tclient={}{}\t{}",
                    t.name,
                    t.rows,
                    t.client_access.as_str(),
                    if t.client_login { ",logged-in" } else { "" },
                    columns.join(" ")
                );
            }
        }
        TableCommand::Set {
            app,
            table,
            client,
            logged_in,
        } => {
            let access: ferrolink::storage::tables::ClientAccess = client.parse().map_err(usage)?;
            store.set_client_access(&app, &table, access, logged_in)?;
            println!(
                "client keys and browser pages may now {} table \"{table}\"{}",
                match access {
                    ferrolink::storage::tables::ClientAccess::None => "not use",
                    ferrolink::storage::tables::ClientAccess::Add => "add rows to",
                    ferrolink::storage::tables::ClientAccess::Read => "read",
                    ferrolink::storage::tables::ClientAccess::Write => "read and change",
                },
                if logged_in {
                    " (browser pages with a logged-in user only)"
                } else {
                    ""
                }
            );
        }
        TableCommand::AddRow { app, table, values } => {
            let values = object(&values, "the row")?;
            let ids = store.add_rows(&app, &table, &[values])?;
            println!("{}", ids[0]);
        }
        TableCommand::Rows {
            app,
            table,
            filters,
            order_by,
            limit,
            offset,
            csv,
        } => {
            let mut wanted = serde_json::Map::new();
            for f in &filters {
                let (name, json) = f
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--where is COLUMN=JSON, not \"{f}\"")))?;
                let value = serde_json::from_str(json).map_err(|e| {
                    usage(format!(
                        "--where {name}=...: not JSON ({e}); a string needs quotes: {name}='\"x\"'"
                    ))
                })?;
                wanted.insert(name.to_owned(), value);
            }
            let order_by = order_by.map(|o| match o.strip_prefix('-') {
                Some(name) => (name.to_owned(), false),
                None => (o, true),
            });
            let mut left = limit.unwrap_or(if csv { usize::MAX } else { 100 });
            let mut page = Page {
                order_by,
                offset,
                limit: 0,
            };
            let columns = store
                .tables(&app)?
                .into_iter()
                .find(|t| t.name == table)
                .map(|t| t.columns)
                .unwrap_or_default();
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            if csv {
                // The header alone: the rows follow page by page.
                write!(
                    out,
                    "{}",
                    ferrolink::storage::tables::csv(&columns, &[], false)
                )?;
            }
            // Page through, so that an export of any size runs in bounded memory.
            while left > 0 {
                page.limit = left.min(ferrolink::storage::tables::MAX_PAGE);
                let rows = store.search(&app, &table, &wanted, &page)?;
                if csv {
                    let text = ferrolink::storage::tables::csv(&columns, &rows, false);
                    write!(out, "{}", text.split_once("\r\n").map_or("", |(_, r)| r))?;
                } else {
                    for (id, values) in &rows {
                        writeln!(out, "{}", serde_json::json!({ "id": id, "values": values }))?;
                    }
                }
                if rows.len() < page.limit {
                    break;
                }
                left -= rows.len();
                page.offset += rows.len();
            }
        }
        TableCommand::Chart {
            app,
            table,
            time,
            value,
            from,
            to,
            buckets,
        } => {
            let series = ferrolink::storage::tables::Series {
                table: &table,
                time: &time,
                value: &value,
                from: &from,
                to: &to,
                buckets,
            };
            for b in store.downsample(&app, &series)? {
                println!(
                    "{}",
                    serde_json::json!({"start": b.start, "min": b.min, "max": b.max, "mean": b.mean, "count": b.count})
                );
            }
        }
    }
    Ok(())
}

fn key_command(store: &Store, cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Create {
            app,
            privilege,
            device,
            functions,
        } => {
            let privilege =
                parse_privilege(&privilege).context("privilege must be server or client")?;
            if !functions.is_empty() {
                // Checked before the key exists, so a typo creates nothing.
                ferrolink::keys::FunctionList::new(&functions)
                    .map_err(|e| anyhow::anyhow!("invalid --functions: {e}"))?;
            }
            let (mut record, secret) = store.create_key(&app, privilege, device.as_deref())?;
            if !functions.is_empty() {
                record = store.restrict_key(&record.id, Some(&functions))?;
            }
            println!(
                "created {} key {} for app \"{}\"{}; it is shown only now:",
                privilege_name(record.privilege),
                record.id,
                record.app,
                record
                    .device
                    .as_deref()
                    .map(|d| format!(" (device \"{d}\")"))
                    .unwrap_or_default()
            );
            if let Some(list) = &record.functions {
                println!("it may register only: {}", list.join(", "));
            }
            println!("{}", secret.expose());
        }
        KeyCommand::Restrict { key_id, functions } => {
            let id = ferrolink::keys::KeyId(key_id);
            let list = (!functions.is_empty()).then_some(functions.as_slice());
            let k = store.restrict_key(&id, list)?;
            match &k.functions {
                Some(l) => println!(
                    "key {} may register only: {} (from its next connection)",
                    k.id,
                    l.join(", ")
                ),
                None => println!(
                    "key {} may register any function (from its next connection)",
                    k.id
                ),
            }
        }
        KeyCommand::List { app } => {
            println!(
                "{:<12} {:<16} {:<9} {:<16} {:<8} FUNCTIONS",
                "ID", "APP", "PRIVILEGE", "DEVICE", "STATUS"
            );
            for k in store.keys(app.as_deref())? {
                let status = match k.revoked_at {
                    Some(_) => "revoked",
                    None => "active",
                };
                println!(
                    "{:<12} {:<16} {:<9} {:<16} {status:<8} {}",
                    k.id.0,
                    k.app,
                    privilege_name(k.privilege),
                    k.device.as_deref().unwrap_or("-"),
                    k.functions
                        .as_deref()
                        .map_or_else(|| "any".to_owned(), |l| l.join(",")),
                );
            }
        }
        KeyCommand::Revoke { key_id_or_device } => {
            let k = store.revoke(&key_id_or_device)?;
            println!(
                "revoked key {} of app \"{}\"; connections using it close within seconds",
                k.id, k.app
            );
        }
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM (what systemd and container runtimes send).
async fn stop_signal() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot wait for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The server's settings from `serve`'s options.
fn server_config(data: &Path, database: Option<&str>, args: ServeArgs) -> Result<ServerConfig> {
    let mut config = ServerConfig::new(args.listen, data);
    config.database = database.map(str::to_owned);
    config.cluster = args.cluster.clone();
    config.cluster_ca = args.cluster_ca.clone();
    config.call_timeout = Duration::from_millis(args.call_timeout_ms);
    config.max_frame_bytes = args.max_frame_bytes;
    config.max_pending_calls = args.max_pending_calls.max(1);
    config.session.idle_timeout = Duration::from_millis(args.idle_timeout_ms);
    config.write_stall_timeout = Duration::from_millis(args.write_stall_timeout_ms.max(100));
    config.insecure_plain_ws = args.insecure_plain_ws;
    config.dev_tls_names = args.dev_tls_names;
    config.public_origin = args.public_origin;
    config.limits = ferrolink::ConnectionLimits {
        total: args.max_connections.max(1),
        per_address: args.max_connections_per_address.max(1),
        per_key: args.max_connections_per_key.max(1),
        per_browser: args.max_sessions_per_browser.max(1),
    };
    config.trusted_proxies = args.trusted_proxies;
    config.trusted_proxy_header = match args.trusted_proxy_header {
        ProxyHeaderArg::XForwardedFor => ferrolink::ProxyHeader::XForwardedFor,
        ProxyHeaderArg::Forwarded => ferrolink::ProxyHeader::Forwarded,
    };
    config.allowed_hosts = args.allowed_hosts;
    config.admin_listen = args.admin_listen.0;
    config.metrics_listen = args.metrics_listen;
    // Of the ways to get a certificate that are set, the one from the
    // strongest source (flag > environment > file) wins; two from the same
    // source are a mistake to point out.
    let sources = args.tls_sources;
    let strongest = [sources.files, sources.dev, sources.acme]
        .into_iter()
        .flatten()
        .max();
    let chosen = |s: Option<clap::parser::ValueSource>| s.is_some() && s == strongest;
    let picked = [
        chosen(sources.files),
        chosen(sources.dev),
        chosen(sources.acme),
    ];
    if picked.iter().filter(|p| **p).count() > 1 {
        return Err(usage(
            "choose one way to get a certificate: --tls-cert/--tls-key, --dev-tls or --acme"
                .to_owned(),
        ));
    }
    if !config.dev_tls_names.is_empty() && !picked[1] {
        return Err(usage("--dev-tls-name needs --dev-tls".to_owned()));
    }
    config.tls = if picked[0] {
        let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) else {
            return Err(usage(
                "--tls-cert needs --tls-key (and the other way round)".to_owned(),
            ));
        };
        Some(ferrolink::tls::TlsSetting::Files { cert, key })
    } else if args.tls_key.is_some() && args.tls_cert.is_none() {
        return Err(usage("--tls-key needs --tls-cert".to_owned()));
    } else if picked[1] {
        Some(ferrolink::tls::TlsSetting::Dev)
    } else if picked[2] {
        let domain = args.acme.unwrap_or_default();
        Some(ferrolink::tls::TlsSetting::Acme(
            ferrolink::acme::AcmeSetting {
                domain,
                directory_url: args.acme_directory,
                directory_root: args.acme_directory_root,
                renew_before: Duration::from_secs(args.acme_renew_before_days * 86_400),
            },
        ))
    } else {
        None
    };
    Ok(config)
}

fn serve(data: &Path, database: Option<&str>, args: ServeArgs) -> Result<()> {
    init_logging(args.log_format);
    // One server per data directory; `restore` checks the same lock.
    let _lock = operations::lock_data_dir(data)?;
    let demo_device = args.demo;
    let demo_log_every = Duration::from_secs_f64(args.demo_log_every.clamp(0.1, 86_400.0));
    let store = open(data, database)?;
    let demo = if store.is_fresh() {
        store.create_app_with("demo", true)?;
        let (_, server_key) = store.create_key("demo", Privilege::Server, None)?;
        let (_, client_key) = store.create_key("demo", Privilege::Client, None)?;
        Some((server_key, client_key))
    } else {
        None
    };
    let operator = if store.operator_count()? == 0 {
        let password = ferrolink::auth::new_token()[..20].to_owned();
        store.create_operator("admin", &ferrolink::auth::hash_password(&password), false)?;
        Some(password)
    } else {
        None
    };
    if demo_device {
        if store.app("demo").is_err() {
            store.create_app_with("demo", true)?;
        }
        // The table the demo's app logic logs readings into, readable by
        // the demo page (made once; an operator may change it later).
        if !store.tables("demo")?.iter().any(|t| t.name == "readings") {
            let columns = ["t:datetime", "celsius:number"]
                .iter()
                .map(|c| {
                    c.parse::<ferrolink::storage::tables::Column>()
                        .map_err(anyhow::Error::msg)
                })
                .collect::<Result<Vec<_>>>()?;
            store.create_table("demo", "readings", &columns)?;
            store.set_client_access(
                "demo",
                "readings",
                ferrolink::storage::tables::ClientAccess::Read,
                false,
            )?;
        }
        let d = ferrolink::sites::deploy_files(data, "demo", DEMO_SITE)
            .context("cannot deploy the demo app's front end")?;
        tracing::debug!(files = d.files, "demo front end deployed");
    }
    drop(store);
    let grace = Duration::from_millis(args.shutdown_grace_ms);
    let config = server_config(data, database, args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = Server::start(config).await?;
        say!(
            "ferrolink {} (data directory {})",
            env!("CARGO_PKG_VERSION"),
            data.display()
        );
        if let Some((server_key, client_key)) = demo {
            say!("created app \"demo\" on first run; its keys are shown only now:");
            say!("server key: {}", server_key.expose());
            say!("client key: {}", client_key.expose());
        }
        if let Some(ca) = server.dev_ca() {
            say!("development CA: {} (DER: {})", ca.cert_pem.display(), ca.cert_der.display());
            say!("development CA public key SHA-256: {}", ca.spki_sha256);
        }
        say!("uplink: {}", server.uplink_url());
        let origin = server.origin();
        match server.admin_url() {
            Some(url) => say!("dashboard: {url}"),
            None => say!("dashboard: off (--admin-listen off)"),
        }
        match &operator {
            Some(password) => say!(
                "dashboard login (created on first run, shown only now): admin / {password}"
            ),
            None => say!(
                "dashboard login: an operator you created (new one: ferrolink admin create-user NAME)"
            ),
        }
        let _device = if demo_device {
            let store = open(data, database)?;
            // A fresh key each start: the previous secret was never stored.
            let _ = store.revoke("pico-sim");
            let (_, key) = store.create_key("demo", Privilege::Server, Some("pico-sim"))?;
            let _ = store.revoke("demo-app");
            let (_, app_key) = store.create_key("demo", Privilege::Server, Some("demo-app"))?;
            drop(store);
            // The app's own server code: log_reading(celsius) stores a row.
            let app_logic = sim::app_logic(&server.uplink_url(), app_key.expose()).await?;
            let client = sim::run(
                &server.uplink_url(),
                key.expose(),
                sim::SimOptions {
                    name: "pico-sim",
                    log_every: demo_log_every,
                    log_function: "log_reading",
                    events_every: Some(Duration::from_secs(2)),
                },
            )
            .await?;
            say!("demo app \"Morse & thermometer\": {origin}/app/demo/");
            say!(
                "demo device pico-sim is online; try: ferrolink call --url {} --key <client key> blink_morse '\"SOS\"'",
                server.uplink_url()
            );
            Some((client, app_logic))
        } else {
            None
        };
        stop_signal().await?;
        eprintln!(
            "shutting down: calls in flight have {} s to finish",
            grace.as_secs_f64()
        );
        server.shutdown_gracefully(grace).await;
        Ok(())
    })
}
