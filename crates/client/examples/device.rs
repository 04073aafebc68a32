//! A minimal device: registers two functions and serves calls until Ctrl-C.
//!
//! ```text
//! FERROLINK_URL=ws://127.0.0.1:3030/_/uplink FERROLINK_KEY=flk_… \
//!     cargo run -p ferrolink-client --example device
//! ```

use ferrolink_client::{Client, HandlerError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("FERROLINK_URL").unwrap_or_else(|_| "ws://127.0.0.1:3030/_/uplink".into());
    let key = std::env::var("FERROLINK_KEY").map_err(|_| "set FERROLINK_KEY to a server key")?;
    let client = Client::builder(url, key)
        .register("read_temperature", |(): ()| async {
            Ok::<_, HandlerError>(21.5)
        })
        .register("add", |(a, b): (f64, f64)| async move {
            Ok::<_, HandlerError>(a + b)
        })
        .connect()
        .await?;
    println!("connected; serving read_temperature() and add(a, b) until Ctrl-C");
    tokio::signal::ctrl_c().await?;
    client.disconnect().await;
    Ok(())
}
