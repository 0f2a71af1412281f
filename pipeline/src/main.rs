//! The `leasewatch` binary: see [`leasewatch::cli`].

use clap::Parser;

/// jemalloc instead of glibc malloc: the engine allocates and frees whole Arrow buffers
/// and hash tables per batch (see load-tests/pipelines/replay/README.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = leasewatch::cli::Cli::parse();
    // Warnings and errors (Redis held batches, dead letters, failed checkpoints) on stderr;
    // `LEASEWATCH_LOG` takes a filter such as `info` or `leasewatch=debug`.
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEASEWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,leasewatch=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // arrow-ipc panics on some broken streams; ingest answers those requests 400.
    leasewatch::ingest::quiet_contained_panics();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("leasewatch: cannot start the runtime: {e}");
            std::process::exit(70);
        }
    };
    if let Err(e) = runtime.block_on(leasewatch::cli::run(cli)) {
        eprintln!("leasewatch: {e}");
        std::process::exit(e.exit_code());
    }
}
