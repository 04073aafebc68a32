//! The `ferrolink` binary as a user runs it.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use ferrolink_testkit::RawClient;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ferrolink");

pub(crate) fn ferrolink(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .expect("run ferrolink");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) struct Serve(pub(crate) std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ferrolink serve` with `extra` flags and returns its printed lines
/// up to the first one starting with `until`; the rest of its output is
/// drained, as a terminal would.
pub(crate) fn spawn_serve(
    data: &std::path::Path,
    extra: &[&str],
    until: &str,
) -> (Serve, Vec<String>) {
    spawn_serve_env(data, extra, &[], until)
}

/// [`spawn_serve`] with environment variables set.
pub(crate) fn spawn_serve_env(
    data: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
    until: &str,
) -> (Serve, Vec<String>) {
    let mut cmd = Command::new(BIN);
    cmd.envs(env.iter().copied()).stderr(Stdio::null());
    start(cmd, data, extra, until)
}

/// [`spawn_serve`] with debug logs written to `log`.
pub(crate) fn spawn_serve_logged(
    data: &std::path::Path,
    extra: &[&str],
    log: &std::path::Path,
    until: &str,
) -> (Serve, Vec<String>) {
    let mut cmd = Command::new(BIN);
    cmd.env("RUST_LOG", "debug")
        .stderr(std::fs::File::create(log).expect("create the log file"));
    start(cmd, data, extra, until)
}

fn start(
    mut cmd: Command,
    data: &std::path::Path,
    extra: &[&str],
    until: &str,
) -> (Serve, Vec<String>) {
    // Settings the tests do not choose come from nowhere else.
    cmd.env_remove("FERROLINK_CONFIG");
    let mut child = cmd
        .arg("--data")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(
            if extra.contains(&"--admin-listen") || extra.contains(&"--config") {
                &[][..]
            } else {
                &["--admin-listen", "127.0.0.1:0"][..]
            },
        )
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ferrolink serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(stdout).lines();
    for line in reader.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with(until);
        lines.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || reader.for_each(drop));
    (Serve(child), lines)
}

/// Starts `ferrolink serve` and returns its printed lines up to the uplink URL.
fn serve(data: &std::path::Path) -> (Serve, Vec<String>) {
    spawn_serve(data, &[], "uplink: ")
}

pub(crate) fn field(lines: &[String], prefix: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn serve_creates_the_demo_app_once_and_prints_working_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (server, lines) = serve(dir.path());
    let url = field(&lines, "uplink: ");
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/_/uplink"),
        "{url}"
    );
    let server_key = field(&lines, "server key: ");
    let client_key = field(&lines, "client key: ");
    let (_, reply) = RawClient::authenticated(&url, &server_key).await;
    assert_eq!(reply["app-info"]["id"], "demo");
    let (_, reply) = RawClient::authenticated(&url, &client_key).await;
    assert_eq!(reply["priv"], "client");
    drop(server);
    // Second start: same data, no new keys printed.
    let (_server, lines) = serve(dir.path());
    assert!(!lines.iter().any(|l| l.contains("key:")), "{lines:?}");
}

#[tokio::test]
async fn key_commands_work_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, lines) = serve(dir.path());
    let url = field(&lines, "uplink: ");
    let (ok, _, _) = ferrolink(dir.path(), &["app", "create", "greenhouse"]);
    assert!(ok);
    let (ok, out, _) = ferrolink(dir.path(), &["app", "list"]);
    assert!(
        ok && out.contains("greenhouse") && out.contains("demo"),
        "{out}"
    );
    let (ok, out, err) = ferrolink(
        dir.path(),
        &[
            "key",
            "create",
            "--app",
            "greenhouse",
            "--privilege",
            "server",
            "--device",
            "pico-1",
        ],
    );
    assert!(ok, "{err}");
    let key = out.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("flk_"), "{out}");
    let (mut live, reply) = RawClient::authenticated(&url, &key).await;
    assert_eq!(reply["app-info"]["id"], "greenhouse");
    let (ok, out, _) = ferrolink(dir.path(), &["key", "list", "--app", "greenhouse"]);
    assert!(
        ok && out.contains("pico-1") && out.contains("active"),
        "{out}"
    );
    assert!(!out.contains(&key), "key list must never print secrets");
    let (ok, _, err) = ferrolink(dir.path(), &["key", "revoke", "pico-1"]);
    assert!(ok, "{err}");
    let (fatal, close) = live.recv_until_closed().await;
    assert!(
        fatal.as_deref().unwrap_or_default().contains("revoked"),
        "{fatal:?} {close:?}"
    );
    let (ok, out, _) = ferrolink(dir.path(), &["key", "list"]);
    assert!(ok && out.contains("revoked"), "{out}");
}

#[test]
fn bad_cli_input_gets_clear_errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = ferrolink(
        dir.path(),
        &["key", "create", "--app", "ghost", "--privilege", "server"],
    );
    assert!(!ok);
    assert!(err.contains("no app named \"ghost\""), "{err}");
    let (ok, _, err) = ferrolink(dir.path(), &["key", "revoke", "nobody"]);
    assert!(!ok && err.contains("no active key"), "{err}");
    let out = Command::new(BIN)
        .args(["key", "create", "--app", "a", "--privilege", "root"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

/// Starts `ferrolink serve --demo` and returns its lines up to the demo device line.
pub(crate) fn serve_demo(data: &std::path::Path) -> (Serve, Vec<String>) {
    spawn_serve(
        data,
        &["--demo", "--demo-log-every", "0.5"],
        "demo device pico-sim is online",
    )
}

#[test]
fn serve_demo_runs_a_device_that_ferrolink_call_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, lines) = serve_demo(dir.path());
    let url = field(&lines, "uplink: ");
    let key = field(&lines, "client key: ");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["call", "--url", &url, "--key", &key])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["blink_morse", "\"SOS\""]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "\"... --- ...\"");
    let (code, out, _) = run(&["--device", "pico-sim", "set_led", "true"]);
    assert_eq!((code, out.as_str()), (Some(0), "true"));
    let (code, out, _) = run(&["read_temperature"]);
    assert_eq!(code, Some(0));
    let t: f64 = out.parse().unwrap();
    assert!((15.0..30.0).contains(&t), "{t}");
    let (code, _, err) = run(&["no_such_thing"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("No server function matching"), "{err}");
    let (code, _, err) = run(&["blink_morse", "SOS"]);
    assert_eq!(code, Some(2), "bad JSON is a usage error");
    assert!(err.contains("quote strings"), "{err}");
    let (code, _, err) = run(&["blink_morse", "\"§\""]);
    assert_eq!(code, Some(1));
    assert!(err.contains("ValueError"), "{err}");
}

#[test]
fn device_sim_registers_its_functions() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, lines) = serve(dir.path());
    let url = field(&lines, "uplink: ");
    let server_key = field(&lines, "server key: ");
    let client_key = field(&lines, "client key: ");
    let mut sim = Command::new(BIN)
        .args([
            "device-sim",
            "--url",
            &url,
            "--key",
            &server_key,
            "--name",
            "bench-pico",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = sim.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout).lines();
    let first = reader.next().unwrap().unwrap();
    assert!(first.contains("device bench-pico connected"), "{first}");
    let _guard = Serve(sim);
    let out = Command::new(BIN)
        .args([
            "call",
            "--url",
            &url,
            "--key",
            &client_key,
            "blink_morse",
            "\"hi\"",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\".... ..\"");
    let printed = reader.next().unwrap().unwrap();
    assert!(
        printed.contains("blink_morse(\"hi\") -> .... .."),
        "{printed}"
    );
}

#[test]
fn web_app_commands_deploy_configure_and_add_operators() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ferrolink(dir.path(), &["app", "create", "garden"]).0);
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<p>garden</p>").unwrap();
    let (ok, out, err) = ferrolink(
        dir.path(),
        &["app", "deploy", "garden", site.path().to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("deployed 1 files") && out.contains("/app/garden/"),
        "{out}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, err) = ferrolink(
        dir.path(),
        &["app", "deploy", "garden", empty.path().to_str().unwrap()],
    );
    assert!(!ok && err.contains("no index.html"), "{err}");
    let (ok, _, err) = ferrolink(
        dir.path(),
        &["app", "deploy", "nope", site.path().to_str().unwrap()],
    );
    assert!(!ok && err.contains("no app named \"nope\""), "{err}");
    let (ok, out, _) = ferrolink(
        dir.path(),
        &["app", "set", "garden", "--anonymous-calls", "false"],
    );
    assert!(
        ok && out.contains("anonymous-calls=false signup=true"),
        "{out}"
    );
    let (_, out, _) = ferrolink(dir.path(), &["app", "list"]);
    assert!(
        out.contains("garden\tanonymous-calls=false\tsignup=true\tfront-end=deployed"),
        "{out}"
    );

    let (ok, out, _) = ferrolink(dir.path(), &["admin", "create-user", "alice"]);
    assert!(ok, "{out}");
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("password (shown only now): "))
        .unwrap();
    let store = ferrolink::storage::Store::open(dir.path()).unwrap();
    let hash = store.operator_password("alice").unwrap().unwrap();
    assert!(ferrolink::auth::verify_password(password, &hash));
    let (ok, _, err) = ferrolink(dir.path(), &["admin", "create-user", "alice"]);
    assert!(!ok && err.contains("--replace"), "{err}");
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(dir.path())
        .args([
            "admin",
            "create-user",
            "alice",
            "--password-stdin",
            "--replace",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long passphrase\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("a long passphrase"),
        "never echoed"
    );
    let hash = store.operator_password("alice").unwrap().unwrap();
    assert!(ferrolink::auth::verify_password("a long passphrase", &hash));
    let (ok, _, err) = ferrolink(
        dir.path(),
        &["admin", "create-user", "bob", "--password-stdin"],
    );
    assert!(!ok && err.contains("8 to 1024"), "empty stdin: {err}");
}

#[test]
fn trust_bundles_are_signed_published_and_shown_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("signing.key");
    let key_arg = key.to_str().unwrap();
    let (ok, out, err) = ferrolink(&data, &["trust", "keygen", "--out", key_arg]);
    assert!(ok, "{err}");
    let public = out.lines().last().unwrap().to_owned();
    assert_eq!(public.len(), 64, "{out}");
    // Never overwritten: devices hold its public half.
    let (ok, _, err) = ferrolink(&data, &["trust", "keygen", "--out", key_arg]);
    assert!(!ok && err.contains("strand devices"), "{err}");

    let root = ferrolink_testkit::pki::Ca::root("operator root");
    let pem = dir.path().join("root.pem");
    std::fs::write(&pem, &root.pem).unwrap();
    let bundle = dir.path().join("bundle.bin");
    let sign = |seq: &str| {
        ferrolink(
            &data,
            &[
                "trust",
                "sign",
                "--key",
                key_arg,
                "--sequence",
                seq,
                "--root",
                pem.to_str().unwrap(),
                "--revoke",
                &"ab".repeat(32),
                "--out",
                bundle.to_str().unwrap(),
            ],
        )
    };
    let (ok, out, err) = sign("3");
    assert!(ok, "{err}");
    assert!(out.contains("trust bundle 3"), "{out}");
    assert!(out.contains("CN=operator root"), "{out}");
    let (ok, out, err) = ferrolink(
        &data,
        &[
            "trust",
            "show",
            bundle.to_str().unwrap(),
            "--signer",
            &public,
        ],
    );
    assert!(
        ok && out.contains(&format!("revoked: {}", "ab".repeat(32))),
        "{out}{err}"
    );
    let (ok, _, err) = ferrolink(
        &data,
        &[
            "trust",
            "show",
            bundle.to_str().unwrap(),
            "--signer",
            &"00".repeat(32),
        ],
    );
    assert!(!ok && err.contains("another key"), "{err}");

    let (ok, out, err) = ferrolink(&data, &["trust", "publish", bundle.to_str().unwrap()]);
    assert!(ok && out.contains("published trust bundle 3"), "{out}{err}");
    // The same sequence again is refused: devices would ignore it anyway.
    let (ok, _, err) = ferrolink(&data, &["trust", "publish", bundle.to_str().unwrap()]);
    assert!(
        !ok && err.contains("not newer than the published bundle 3"),
        "{err}"
    );
    // A file that is not a bundle says so.
    let (ok, _, err) = ferrolink(&data, &["trust", "publish", pem.to_str().unwrap()]);
    assert!(!ok && err.contains("not a ferrolink trust bundle"), "{err}");
}

#[test]
fn table_commands_create_fill_and_read_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let (ok, _, err) = ferrolink(data, &["app", "create", "greenhouse"]);
    assert!(ok, "{err}");
    let (ok, out, err) = ferrolink(
        data,
        &[
            "table",
            "create",
            "--app",
            "greenhouse",
            "readings",
            "--column",
            "t:datetime",
            "--column",
            "celsius:number",
        ],
    );
    assert!(ok && out.contains("2 column(s)"), "{out}{err}");
    for (t, c) in [
        ("2026-12-02T10:00:00Z", 20.5),
        ("2026-12-02T11:00:00Z", 22.0),
    ] {
        let row = format!(r#"{{"t": "{t}", "celsius": {c}}}"#);
        let (ok, _, err) = ferrolink(
            data,
            &["table", "add-row", "--app", "greenhouse", "readings", &row],
        );
        assert!(ok, "{err}");
    }
    let (ok, out, _) = ferrolink(data, &["table", "list", "--app", "greenhouse"]);
    assert!(
        ok && out.contains("readings\trows=2\tclient=none\tt:datetime celsius:number"),
        "{out}"
    );
    let (ok, out, err) = ferrolink(
        data,
        &[
            "table",
            "set",
            "--app",
            "greenhouse",
            "readings",
            "--client",
            "add",
        ],
    );
    assert!(
        ok && out.contains("add rows to table \"readings\""),
        "{out}{err}"
    );
    let (ok, out, _) = ferrolink(data, &["table", "list", "--app", "greenhouse"]);
    assert!(ok && out.contains("rows=2\tclient=add\t"), "{out}");
    let (ok, _, err) = ferrolink(
        data,
        &[
            "table",
            "set",
            "--app",
            "greenhouse",
            "readings",
            "--client",
            "all",
        ],
    );
    assert!(!ok && err.contains("use none, add, read or write"), "{err}");
    let (ok, out, err) = ferrolink(
        data,
        &["table", "rows", "--app", "greenhouse", "readings", "--csv"],
    );
    assert!(ok, "{err}");

    assert_eq!(
        out,
        "t,celsius\r\n2026-12-02T10:00:00.000000Z,20.5\r\n2026-12-02T11:00:00.000000Z,22.0\r\n"
    );
    let before = out.clone();
    // Schema changes: a drop needs --yes; renames keep the data.
    let (ok, _, err) = ferrolink(
        data,
        &[
            "table",
            "drop-column",
            "--app",
            "greenhouse",
            "readings",
            "celsius",
        ],
    );
    assert!(!ok && err.contains("run again with --yes"), "{err}");
    let (ok, _, err) = ferrolink(
        data,
        &[
            "table",
            "rename-column",
            "--app",
            "greenhouse",
            "readings",
            "celsius",
            "temp",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = ferrolink(
        data,
        &["table", "rename", "--app", "greenhouse", "readings", "log"],
    );
    assert!(ok, "{err}");
    let (ok, renamed, err) = ferrolink(
        data,
        &["table", "rows", "--app", "greenhouse", "log", "--csv"],
    );
    assert!(ok, "{err}");
    assert_eq!(renamed, before.replacen("celsius", "temp", 1));
    let (ok, _, err) = ferrolink(
        data,
        &["table", "rename", "--app", "greenhouse", "log", "readings"],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = ferrolink(
        data,
        &[
            "table",
            "rename-column",
            "--app",
            "greenhouse",
            "readings",
            "temp",
            "celsius",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = ferrolink(
        data,
        &[
            "table",
            "create",
            "--app",
            "greenhouse",
            "scratch",
            "--column",
            "x:text",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = ferrolink(data, &["table", "drop", "--app", "greenhouse", "scratch"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, out, err) = ferrolink(
        data,
        &["table", "drop", "--app", "greenhouse", "scratch", "--yes"],
    );
    assert!(
        ok && out.contains("deleted table \"scratch\""),
        "{out}{err}"
    );
    let (ok, out, err) = ferrolink(
        data,
        &[
            "table",
            "rows",
            "--app",
            "greenhouse",
            "readings",
            "--order-by",
            "-celsius",
            "--limit",
            "1",
        ],
    );
    assert!(ok, "{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["values"]["celsius"], 22.0);
    let (ok, out, err) = ferrolink(
        data,
        &[
            "table",
            "chart",
            "--app",
            "greenhouse",
            "readings",
            "--time",
            "t",
            "--value",
            "celsius",
            "--from",
            "2026-12-02T10:00:00Z",
            "--to",
            "2026-12-02T12:00:00Z",
            "--buckets",
            "2",
        ],
    );
    assert!(ok, "{err}");
    let buckets: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(buckets.len(), 2, "{out}");
    assert_eq!(
        (buckets[0]["mean"].clone(), buckets[1]["max"].clone()),
        (serde_json::json!(20.5), serde_json::json!(22.0))
    );
    // Bad input: a clear error, exit code 1, nothing written.
    let (ok, _, err) = ferrolink(
        data,
        &[
            "table",
            "add-row",
            "--app",
            "greenhouse",
            "readings",
            r#"{"celsius": "hot"}"#,
        ],
    );
    assert!(!ok && err.contains("column \"celsius\" is number"), "{err}");
    let (ok, _, err) = ferrolink(
        data,
        &[
            "table",
            "create",
            "--app",
            "greenhouse",
            "x; DROP TABLE apps",
            "--column",
            "a:text",
        ],
    );
    assert!(!ok && err.contains("invalid table name"), "{err}");
    let (_, out, _) = ferrolink(data, &["table", "list", "--app", "greenhouse"]);
    assert!(out.contains("rows=2"), "{out}");
}

/// `ferrolink migrate` moves a single server into PostgreSQL: refused
/// while the server runs, then its keys and rows are served by a server on
/// the database.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_moves_a_single_server_into_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let (server, lines) = serve(data);
    let server_key = field(&lines, "server key: ");
    let (ok, _, err) = ferrolink(
        data,
        &[
            "table",
            "create",
            "--app",
            "demo",
            "notes",
            "--column",
            "text:text",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = ferrolink(
        data,
        &[
            "table",
            "add-row",
            "--app",
            "demo",
            "notes",
            r#"{"text": "kept"}"#,
        ],
    );
    assert!(ok, "{err}");
    let url = ferrolink_testkit::postgres::database();
    let source = format!("sqlite:{}", data.display());
    let other = tempfile::tempdir().unwrap();
    let migrate = |to: &str| ferrolink(other.path(), &["migrate", "--from", &source, "--to", to]);
    let (ok, _, err) = migrate(&url);
    assert!(!ok && err.contains("stop it first"), "{err}");
    drop(server);
    let (ok, _, err) = migrate("mysql://x");
    assert!(!ok && err.contains("expected a postgres:// URL"), "{err}");
    let (ok, out, err) = migrate(&url);
    assert!(ok, "{err}");
    assert!(out.contains("data tables: 1 with 1 rows"), "{out}");
    assert!(out.contains("keys: 2"), "{out}");
    // Twice: the target is no longer empty.
    let (ok, _, err) = migrate(&url);
    assert!(!ok && err.contains("already holds data"), "{err}");
    // A server on the database: the old key works, no new demo keys.
    let fresh = tempfile::tempdir().unwrap();
    let (_server, lines) = spawn_serve(fresh.path(), &["--database", &url], "uplink: ");
    assert!(!lines.iter().any(|l| l.contains("key:")), "{lines:?}");
    let (_, reply) = RawClient::authenticated(&field(&lines, "uplink: "), &server_key).await;
    assert_eq!(reply["app-info"]["id"], "demo");
    let (ok, out, err) = ferrolink(
        fresh.path(),
        &[
            "--database",
            &url,
            "table",
            "rows",
            "--app",
            "demo",
            "notes",
            "--csv",
        ],
    );
    assert!(ok && out.contains("kept"), "{out}{err}");
}
