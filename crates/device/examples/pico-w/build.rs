//! Links the firmware for the RP2040 and bakes in what it needs at build
//! time:
//!
//! - `FERROLINK_CA_DER`: path of the DER root certificate to pin (for a
//!   server started with `--dev-tls`, `<data>/tls/dev-ca.der`). Default:
//!   ISRG Root X2, Let's Encrypt's ECDSA root.
//! - `CYW43_NVRAM`: path of the Pico W's CYW43439 NVRAM file
//!   (`nvram_rp2040.bin`, from embassy's `cyw43-firmware` directory or the
//!   Pico SDK). No crate on the package index ships it; without it the
//!   firmware builds but stops at boot with a message saying so.
//! - `FERROLINK_ROUGHTIME`: the Roughtime servers to ask, as
//!   `host:port:base64-public-key` separated by commas. Default: three public
//!   servers on different networks (`DEFAULT_ROUGHTIME` below); two must
//!   agree.
//! - `FERROLINK_TRUST_SIGNER`: the public key (64 hex digits) printed by
//!   `ferrolink trust keygen`; bundles signed with it replace the pinned
//!   roots and extend the revocation list without new firmware. Without it,
//!   trust updates are off.
//! - `WIFI_SSID`, `WIFI_PASSWORD`, `FERROLINK_HOST`, `FERROLINK_PORT`,
//!   `FERROLINK_KEY`, `FERROLINK_SNTP_FALLBACK`: read by the firmware with
//!   `option_env!`.

use std::env;
use std::fs;
use std::path::PathBuf;

use base64::Engine as _;

/// Public Roughtime servers that speak the versions the client offers (RFC
/// 10049 version 1 or drafts 12-19), with their published long-term keys.
const DEFAULT_ROUGHTIME: &str = "roughtime.se:2002:S3AzfZJ5CjSdkJ21ZJGbxqdYP/SoE8fXKY0+aicsehI=,\
time.txryan.com:2002:iBVjxg/1j7y1+kQUTBYdTabxCppesU/07D4PMDJk2WA=,\
roughtime.int08h.com:2002:AW5uAoTSTDfG5NfY1bTh08GUnOqlRb+HVhbJ3ODJvsE=";

/// `[("host", port, [key bytes]), ...]` as Rust source.
fn roughtime_servers(list: &str) -> String {
    let mut out = String::from("[");
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.rsplitn(3, ':');
        let (Some(key), Some(port), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("FERROLINK_ROUGHTIME entry {entry:?} is not host:port:base64-key");
        };
        let port: u16 = port.parse().expect("a Roughtime port is a number");
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("a Roughtime key is base64");
        assert_eq!(key.len(), 32, "a Roughtime key is 32 bytes: {entry}");
        out.push_str(&format!("({host:?}, {port}, {key:?}),"));
    }
    out.push(']');
    out
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rustc-link-arg-bins=-Tlink-rp.x");
    // embassy-rp logs with defmt (in every firmware, so the size
    // comparisons between them stay fair).
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");

    for var in [
        "FERROLINK_CA_DER",
        "CYW43_NVRAM",
        "WIFI_SSID",
        "WIFI_PASSWORD",
        "FERROLINK_HOST",
        "FERROLINK_PORT",
        "FERROLINK_KEY",
        "FERROLINK_ROUGHTIME",
        "FERROLINK_TRUST_SIGNER",
        "FERROLINK_SNTP_FALLBACK",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let root = match env::var_os("FERROLINK_CA_DER") {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
            fs::read(&path).expect("read FERROLINK_CA_DER")
        }
        None => webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .find(|c| c.as_ref().windows(12).any(|w| w == b"ISRG Root X2"))
            .expect("ISRG Root X2 is in the Mozilla root set")
            .to_vec(),
    };
    fs::write(out.join("root.der"), root).expect("write root.der");

    let servers = env::var("FERROLINK_ROUGHTIME").unwrap_or_else(|_| DEFAULT_ROUGHTIME.to_owned());
    fs::write(out.join("roughtime.rs"), roughtime_servers(&servers)).expect("write roughtime.rs");

    let signer = match env::var("FERROLINK_TRUST_SIGNER") {
        Ok(hex) => {
            let hex = hex.trim();
            assert_eq!(hex.len(), 64, "FERROLINK_TRUST_SIGNER is 64 hex digits");
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digits"))
                .collect()
        }
        Err(_) => Vec::new(),
    };
    fs::write(out.join("signer.bin"), signer).expect("write signer.bin");

    let nvram = match env::var_os("CYW43_NVRAM") {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
            fs::read(&path).expect("read CYW43_NVRAM")
        }
        None => Vec::new(),
    };
    fs::write(out.join("nvram.bin"), nvram).expect("write nvram.bin");
}
