//! Records the build time as the floor below which no clock is trusted, as
//! `ferrolink-client`'s build script does (`SOURCE_DATE_EPOCH` wins, for
//! reproducible builds; a day is taken off for build machines whose clocks
//! run ahead).

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
    println!(
        "cargo:rustc-env=FERROLINK_BUILD_FLOOR={}",
        now.saturating_sub(86_400)
    );
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
