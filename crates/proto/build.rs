//! Records the build time as `BUILD_FLOOR`: the clients (tokio and device)
//! refuse a clock that reads earlier than the moment they were built
//! (certificate expiry means nothing on a clock that was never set).
//! `SOURCE_DATE_EPOCH` wins, for reproducible builds.

fn main() {
    let now = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    // Floor a day before the build, so a build machine whose clock runs
    // slightly ahead does not lock out devices whose clocks are right.
    println!(
        "cargo:rustc-env=FERROLINK_BUILD_FLOOR={}",
        now.saturating_sub(86_400)
    );
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
