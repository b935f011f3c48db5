use std::process::ExitCode;

use clap::Parser;
use flashgate::{
    app::{App, shutdown_signal},
    auth::{ADMIN_SCOPE, Auth},
    cli::{Cli, Command},
    config::Settings,
    inventory::AccountId,
    journal::rebuild::Overwrite,
    telemetry, tools,
};

/// mimalloc rather than glibc's malloc: under load a fifth of the gateway's
/// samples were in malloc/free (see BENCHMARKS.md, "Batching").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits' EX_CONFIG-adjacent "usage/config" code for a bad configuration.
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flashgate: {e:#}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if !matches!(
        cli.command,
        Command::Token { .. } | Command::Healthcheck { .. } | Command::Openapi
    ) {
        telemetry::init(&settings.log);
    }
    match cli.command {
        Command::Token {
            account,
            admin,
            scope,
            seller,
            ttl_seconds,
        } => {
            let seller = match seller.as_deref().map(flashgate::inventory::SellerId::parse) {
                None => None,
                Some(Ok(seller)) => Some(seller),
                Some(Err(_)) => {
                    eprintln!("flashgate: --seller must be 1-64 characters of [A-Za-z0-9._:@-]");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            let Ok(account) = AccountId::parse(&account) else {
                eprintln!("flashgate: --account must be 1-64 characters of [A-Za-z0-9._:@-]");
                return ExitCode::from(EXIT_BAD_CONFIG);
            };
            let max = settings.auth.max_token_lifetime_seconds;
            if max > 0 && ttl_seconds > max {
                eprintln!(
                    "flashgate: --ttl-seconds {ttl_seconds} is over auth.max_token_lifetime_seconds ({max}): the gateway would refuse the token"
                );
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            let scopes: Vec<&str> = admin
                .then_some(ADMIN_SCOPE)
                .into_iter()
                .chain(seller.is_some().then_some(flashgate::auth::SELLER_SCOPE))
                .chain(scope.as_deref().unwrap_or_default().split_whitespace())
                .collect();
            let scope = (!scopes.is_empty()).then(|| scopes.join(" "));
            let auth = Auth::new(settings.auth.secret_or_development());
            println!(
                "{}",
                auth.issue_with(&account, scope.as_deref(), seller.as_ref(), ttl_seconds)
            );
            ExitCode::SUCCESS
        }
        Command::Healthcheck { probe, timeout_ms } => run(async move {
            let timeout = std::time::Duration::from_millis(timeout_ms);
            tools::healthcheck(&settings, probe, timeout).await
        }),
        Command::Openapi => {
            print!("{}", flashgate::http::openapi::pretty_json());
            ExitCode::SUCCESS
        }
        Command::Serve => run(async {
            let app = App::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Migrate => run(async { tools::migrate(&settings).await }),
        Command::Reconcile => run(async { tools::reconcile(&settings).await }),
        Command::Rebuild { skus, force } => {
            let overwrite = if force {
                Overwrite::Force
            } else {
                Overwrite::OnlyOlder
            };
            run(async { tools::rebuild(&settings, &skus, overwrite).await })
        }
    }
}

/// Runs a command on a fresh runtime; errors are logged and printed once.
fn run(command: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flashgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        // Once: in the log when there is one, else on stderr.
        Err(e) if telemetry::installed() => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("flashgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
