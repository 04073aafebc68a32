//! Real-browser tests: Debian's Chromium driven by Playwright
//! (`playwright-core` from the npm registry, pinned by
//! `tests/browser/package-lock.json`; Playwright's own browser download is
//! never used). Scripts live in `tests/browser/*.mjs`; each gets its inputs
//! in environment variables and exits non-zero with a message on failure.
//! Screenshots go to `target/browser-screenshots/`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

static INSTALL: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The folder of the browser test scripts.
pub fn scripts_dir() -> PathBuf {
    root().join("tests/browser")
}

/// Where screenshots are saved.
pub fn screenshots_dir() -> PathBuf {
    root().join("target/browser-screenshots")
}

/// Debian's Chromium, installed with apt-get if missing (tests run as
/// root on these machines; `.ci/run` installs it up front).
pub fn chromium() -> PathBuf {
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    crate::apt_install("chromium", "/usr/bin/chromium")
}

/// Installs the scripts' npm dependencies (once; `npm ci` from the lock
/// file).
pub fn node_modules() {
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scripts_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .expect("npm runs (install Node.js and npm)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// Runs `tests/browser/<script>` with `env`, failing the test with the
/// script's output if it fails or takes over two minutes.
pub async fn run(script: &str, env: &[(&str, String)]) -> String {
    let chromium = chromium();
    node_modules();
    std::fs::create_dir_all(screenshots_dir()).expect("screenshot folder");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(scripts_dir().join(script))
        .current_dir(scripts_dir())
        .env("CHROMIUM", chromium)
        .env("SCREENSHOTS", screenshots_dir())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} ran for over 2 minutes"))
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}
