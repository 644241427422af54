//! The `eddy` binary: parse flags, start tracing, open the data directory, serve until
//! SIGINT/SIGTERM, then shut down cleanly (the log is synced on the way out).

use tracing_subscriber::EnvFilter;

use eddy::config::{Config, LogFormat};
use eddy::server::Server;

/// mimalloc: the commit path allocates many small objects (Arrow arrays, protocol buffers);
/// glibc's malloc/free took ~17% of CPU in the single-row INSERT benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("eddy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eddy: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut server = match Server::start(&config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{}", e.message);
                return std::process::ExitCode::FAILURE;
            }
        };
        tracing::info!(listen = %server.local_addr(), data_dir = %config.data_dir.display(), "eddy is ready");
        let code = tokio::select! {
            _ = shutdown_signal() => std::process::ExitCode::SUCCESS,
            e = server.corruption() => {
                tracing::error!("{}", e.message);
                std::process::ExitCode::FAILURE
            }
        };
        tracing::info!("shutting down");
        server.shutdown().await;
        code
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
