//! `flashgate-dev`: the demo and the bench, each on throwaway local servers
//! and a `flashgate` gateway process (see `gateway_binary`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc, as in the gateway, so the bench's load generator and hello
/// server allocate the way the gateway does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "flashgate-dev",
    version,
    about = "flashgate's demo and bench on throwaway local servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole flash sale on throwaway local servers (a 3-master Redis
    /// Cluster and PostgreSQL), check that nothing was oversold or lost, and
    /// clean up. Needs redis-server, redis-tools and postgresql installed.
    Demo(flashgate_dev::demo::DemoOptions),
    /// Measure flashgate on throwaway local servers: open-model scenarios
    /// (JSON reports on stdout), the knee, and the comparison with its
    /// ceilings (see BENCHMARKS.md).
    Bench(flashgate_dev::bench::BenchOptions),
    /// Serve `GET /hello` (the HTTP ceiling that `bench --scenario compare`
    /// measures).
    #[command(hide = true)]
    HelloServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flashgate-dev: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = runtime.block_on(async {
        match cli.command {
            Command::Demo(options) => flashgate_dev::demo::run(options).await,
            Command::Bench(options) => flashgate_dev::bench::run(options).await,
            Command::HelloServer { listen } => {
                flashgate_dev::bench::compare::serve_hello(listen).await
            }
        }
    });
    match done {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flashgate-dev: {e:#}");
            ExitCode::FAILURE
        }
    }
}
