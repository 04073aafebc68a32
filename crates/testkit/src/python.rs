//! The official Python client (`anvil-uplink==0.7.0`), installed into a
//! virtualenv under `target/` on first use, and helpers to run the scripts in
//! `crates/testkit/python/` against a server.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The pinned version of the official client.
pub const ANVIL_UPLINK: &str = "anvil-uplink==0.7.0";

fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

static INSTALL: Mutex<()> = Mutex::new(());

/// The virtualenv's Python, with `anvil-uplink` installed. Safe to call from
/// many tests and test binaries at once (an in-process lock plus a lock
/// directory between processes).
pub fn interpreter() -> PathBuf {
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let venv = target_dir().join("pyenv-anvil-uplink-0.7.0");
    let python = venv.join("bin/python");
    let ready = venv.join(".ready");
    if ready.exists() {
        return python;
    }
    let lock = target_dir().join("pyenv.lock");
    let start = Instant::now();
    while std::fs::create_dir(&lock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "waited 10 minutes for {} (remove it if stale)",
            lock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = (|| {
        if ready.exists() {
            return Ok(());
        }
        let status = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return Err("python3 -m venv failed (install python3-venv)".to_owned());
        }
        let out = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                ANVIL_UPLINK,
            ])
            .output()
            .map_err(|e| format!("cannot run pip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pip install {ANVIL_UPLINK} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::write(&ready, ANVIL_UPLINK).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir(&lock);
    if let Err(e) = result {
        panic!("{e}");
    }
    python
}

/// Path of a script in `crates/testkit/python/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

/// A running Python script; killed when dropped.
pub struct PyProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line seen so far.
    pub seen: Vec<String>,
}

impl PyProcess {
    /// Starts `script` with `args`, merging its stderr into the log.
    pub fn spawn(script_name: &str, args: &[&str]) -> Self {
        Self::spawn_env(script_name, args, &[])
    }

    /// Like [`PyProcess::spawn`], with extra environment variables (for
    /// example `SSL_CERT_FILE` to trust a development CA).
    pub fn spawn_env(script_name: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let mut child = Command::new(interpreter())
            .arg("-u")
            .arg(script(script_name))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest.
    pub fn expect_line(&mut self, prefix: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?} within {wait:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The next output line, or `None` if none came within `wait` (or the
    /// process ended).
    pub fn next_line(&mut self, wait: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(wait).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Waits for `RESULT <json>` and parses the JSON.
    pub fn result(&mut self, wait: Duration) -> serde_json::Value {
        let text = self.expect_line("RESULT ", wait);
        serde_json::from_str(&text).expect("RESULT line carries JSON")
    }

    /// Kills the process at once (SIGKILL), as a crash or power loss would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
