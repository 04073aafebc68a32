//! A minimal caller: calls a device function and prints the result.
//!
//! ```text
//! FERROLINK_URL=ws://127.0.0.1:3030/_/uplink FERROLINK_KEY=flk_… \
//!     cargo run -p ferrolink-client --example caller
//! ```

use ferrolink_client::{CallErrorKind, Client};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("FERROLINK_URL").unwrap_or_else(|_| "ws://127.0.0.1:3030/_/uplink".into());
    let key = std::env::var("FERROLINK_KEY")
        .map_err(|_| "set FERROLINK_KEY to a client or server key")?;
    let client = Client::builder(url, key).connect().await?;
    match client.call::<f64>("read_temperature", ()).await {
        Ok(t) => println!("temperature: {t} °C"),
        Err(e) if e.kind() == CallErrorKind::NoSuchFunction => {
            println!("no device is serving read_temperature yet")
        }
        Err(e) => return Err(e.into()),
    }
    client.disconnect().await;
    Ok(())
}
