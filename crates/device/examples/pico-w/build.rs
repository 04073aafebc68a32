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
//! - `WIFI_SSID`, `WIFI_PASSWORD`, `FERROLINK_HOST`, `FERROLINK_PORT`,
//!   `FERROLINK_KEY`: read by the firmware with `option_env!`.

use std::env;
use std::fs;
use std::path::PathBuf;

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

    let nvram = match env::var_os("CYW43_NVRAM") {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", PathBuf::from(&path).display());
            fs::read(&path).expect("read CYW43_NVRAM")
        }
        None => Vec::new(),
    };
    fs::write(out.join("nvram.bin"), nvram).expect("write nvram.bin");
}
