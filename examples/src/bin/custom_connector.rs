//! Runs a gateway with the example line connector registered next to the
//! built-in ones — how a third-party protocol plugs in without touching core.
//!
//! `cargo run -p airlock-examples --bin custom_connector -- examples/line.toml`

use airlock_examples::line::LineConnector;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).map(std::path::PathBuf::from);
    let (config, source) = airlock::load_config(path.as_deref())?;
    let mut registry = airlock::registry();
    registry.add::<LineConnector>();
    let runtime = airlock::Runtime::start(&config, &source, &registry).await?;
    for (name, addr) in &runtime.addresses {
        println!("listener {name} on {addr}");
    }
    tokio::signal::ctrl_c().await?;
    runtime.shutdown().await
}
