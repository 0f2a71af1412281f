//! The `leasewatch` binary: see [`leasewatch::cli`].

use clap::Parser;

fn main() {
    let cli = leasewatch::cli::Cli::parse();
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
