//! Debian's PostgreSQL, run for the tests: one server per test process in
//! a temporary directory on a free loopback port, and a fresh database for
//! each test that asks ([`database`]).
//!
//! The server is shared by the tests of a process and never dropped, so it
//! runs under a small shell that stops it (`pg_ctl stop -m immediate`) as
//! soon as the test process's end closes the shell's standard input: no
//! server outlives the tests, however they end.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running PostgreSQL server for the tests.
pub struct TestPostgres {
    port: u16,
    bin: PathBuf,
    /// The watchdog shell; its standard input is held open while this
    /// process lives.
    _watchdog: Child,
    _dir: tempfile::TempDir,
}

/// The directory of PostgreSQL's server programs (the newest installed),
/// installing Debian's `postgresql` when none is.
pub fn bin_dir() -> PathBuf {
    fn newest() -> Option<PathBuf> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| {
                let e = e.ok()?;
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    }
    crate::apt_install_unless("postgresql", || newest().is_some());
    newest().expect("PostgreSQL's server programs after installing postgresql")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program args…`, as the `postgres` user when this process is root
/// (PostgreSQL refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The shell command that starts the server of `dir` on `port`.
fn start_command(bin: &Path, dir: &Path, port: u16) -> String {
    format!(
        "{pg_ctl} -D {data} -l {log} -w -o \"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200\" start >/dev/null",
        pg_ctl = bin.join("pg_ctl").display(),
        data = dir.join("data").display(),
        log = dir.join("postgres.log").display(),
        sock = dir.display(),
    )
}

impl TestPostgres {
    /// A server of the caller's own (to stop and start again), stopped when
    /// this process ends.
    pub fn private() -> Self {
        Self::start_with(None)
    }

    /// A server of the caller's own that takes TCP connections over TLS
    /// only (`hostssl` in `pg_hba.conf`), with this certificate chain and
    /// key (PEM).
    pub fn private_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    /// Runs `script` as the server's user and checks that it succeeded.
    fn shell(&self, script: &str) {
        let status = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--", "sh", "-c", script])
                .status()
        } else {
            Command::new("sh").args(["-c", script]).status()
        }
        .expect("run pg_ctl");
        assert!(status.success(), "{script} failed");
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.shell(&format!(
            "{} -D {} stop -m fast -w >/dev/null",
            self.bin.join("pg_ctl").display(),
            self._dir.path().join("data").display()
        ));
    }

    /// Starts the server again after [`TestPostgres::stop`], on its port.
    pub fn resume(&self) {
        self.shell(&start_command(&self.bin, self._dir.path(), self.port));
    }

    fn start() -> Self {
        Self::start_with(None)
    }

    fn start_with(tls: Option<(&str, &str)>) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let chown = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                chown.success(),
                "cannot give the test directory to user postgres"
            );
        }
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "ferrolink",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = tls {
            let write = |name: &str, text: &str, mode: u32| {
                use std::os::unix::fs::PermissionsExt as _;
                let path = data.join(name);
                std::fs::write(&path, text).expect("write TLS file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .expect("chmod");
                if is_root() {
                    let ok = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&path)
                        .status()
                        .is_ok_and(|s| s.success());
                    assert!(ok, "chown {}", path.display());
                }
            };
            write("server.crt", cert, 0o644);
            write("server.key", key, 0o600);
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
            text.push_str("\nssl = on\n");
            std::fs::write(&conf, text).expect("postgresql.conf");
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            let only_tls: String = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&hba, only_tls).expect("pg_hba.conf");
        }
        let port = free_port();
        let log = dir.path().join("postgres.log");
        // The shell starts the server, waits for its standard input to
        // close (this process ending), then stops it.
        let script = format!(
            "{} && read _ignored; {pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1",
            start_command(&bin, dir.path(), port),
            pg_ctl = bin.join("pg_ctl").display(),
            data = data.display(),
        );
        let watchdog = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--", "sh", "-c", &script])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
        } else {
            Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
        }
        .expect("start PostgreSQL");
        let pg = Self {
            port,
            bin,
            _watchdog: watchdog,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(pg.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// The server of this test process, started on first use.
    pub fn shared() -> &'static Self {
        static PG: OnceLock<TestPostgres> = OnceLock::new();
        PG.get_or_init(Self::start)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` as the superuser in database `postgres`.
    pub fn admin(&self, sql: &str) {
        let mut psql = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "ferrolink",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        psql.stdin
            .take()
            .expect("psql's input")
            .write_all(sql.as_bytes())
            .expect("write to psql");
        let out = psql.wait_with_output().expect("psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new, empty database; its `postgres://` URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.admin(&format!("CREATE DATABASE {name};"));
        format!("postgres://ferrolink@127.0.0.1:{}/{name}", self.port)
    }
}

/// A new, empty database on this process's PostgreSQL server; its URL.
pub fn database() -> String {
    TestPostgres::shared().database()
}
