//! Calls routed between two servers of a cluster (`--cluster`): the
//! provider on server A, the caller on server B, both on one PostgreSQL
//! database (a server started for the run by `ferrolink-testkit`) and one
//! Debian `nats-server` — against the same calls on one server and NATS
//! request/reply alone, interleaved in the same run.

use anyhow::Result;

use crate::{Args, Cpu, Endpoint, IN_FLIGHT, Nats, SIZES, median, nats_routed, routed, start_nats};

/// What the servers of a cluster share: a PostgreSQL database (on the
/// tests' server) and a NATS server, both started for the run.
pub(crate) struct Shared {
    database: String,
    pub(crate) nats: Nats,
}

impl Shared {
    pub(crate) async fn start() -> Result<Self> {
        Ok(Self {
            database: ferrolink_testkit::postgres::database(),
            nats: start_nats().await?,
        })
    }

    /// The database's URL.
    pub(crate) fn database(&self) -> &str {
        &self.database
    }

    /// The arguments of `ferrolink serve` that make a server of it.
    pub(crate) fn args(&self) -> [&str; 4] {
        ["--database", &self.database, "--cluster", &self.nats.url]
    }
}

pub(crate) async fn run(args: &Args) -> Result<()> {
    let cluster = Shared::start().await?;
    let (shared, nats) = (cluster.args(), &cluster.nats);
    let a = crate::start_server_with(&args.server, &shared)?;
    let b = crate::start_server_with(&args.server, &shared)?;
    let single = crate::start_server(&args.server)?;
    let cross = Endpoint {
        url: b.url.clone(),
        provider_url: Some(a.url.clone()),
        server_key: a.server_key.clone(),
        client_key: a.client_key.clone(),
        cpu: Cpu::Processes(a.child.id(), b.child.id()),
    };
    let one = Endpoint {
        url: single.url.clone(),
        provider_url: None,
        server_key: single.server_key.clone(),
        client_key: single.client_key.clone(),
        cpu: Cpu::Process(single.child.id()),
    };
    println!("# ferrolink benchmark: calls between two servers of a cluster\n");
    println!(
        "machine: {} cores; both servers, PostgreSQL and nats-server on it; {} s per run, median of {} runs\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.seconds,
        args.repeat.max(1)
    );
    println!(
        "| arg size | in flight | NATS req/reply /s | NATS p50 µs | one server calls/s | p50 µs | across servers calls/s | p50 µs | p99 µs | across ÷ one | across ÷ NATS | added p50 µs (across − one) | CPU µs/call: one | across (both) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let sizes = if args.sizes.is_empty() {
        SIZES.to_vec()
    } else {
        args.sizes.clone()
    };
    let in_flight = if args.in_flight.is_empty() {
        IN_FLIGHT.to_vec()
    } else {
        args.in_flight.clone()
    };
    for &size in &sizes {
        for &n in &in_flight {
            let (mut natss, mut ones, mut crosses) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.repeat.max(1) {
                natss.push(nats_routed(nats, size, n, args.seconds).await?);
                ones.push(routed(&one, size, n, args.seconds).await?);
                crosses.push(routed(&cross, size, n, args.seconds).await?);
            }
            let (nats, one, cross) = (median(&natss), median(&ones), median(&crosses));
            println!(
                "| {size} B | {n} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} | **{:.2}** | **{:.2}** | {:.1} | {:.2} | {:.2} |",
                nats.per_sec,
                nats.p50_us,
                one.per_sec,
                one.p50_us,
                cross.per_sec,
                cross.p50_us,
                cross.p99_us,
                cross.per_sec / one.per_sec,
                cross.per_sec / nats.per_sec,
                cross.p50_us - one.p50_us,
                one.cpu_us,
                cross.cpu_us,
            );
        }
    }
    Ok(())
}
