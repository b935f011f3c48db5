//! The one-shot operator commands: `migrate`, `reconcile`, `rebuild` and
//! `healthcheck`.
//! Each connects, does its work, prints a report and returns the exit code.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;

use crate::{
    config::Settings,
    inventory::Sku,
    journal::{
        Journal, Store,
        rebuild::{self, Outcome, Overwrite},
        reconciler::{self, DriftCheck},
    },
    redis::Redis,
};

/// Exit code of `reconcile` when it found drift or a journal gap.
pub const EXIT_DRIFT: u8 = 3;

/// `GET probe` on the gateway at `http.listen` (an unspecified address,
/// `0.0.0.0` or `::`, is asked on loopback): exit 0 on 200, 1 on anything
/// else, with the reason on stderr.
pub async fn healthcheck(
    settings: &Settings,
    probe: crate::cli::Probe,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let mut addr = settings.http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let asked = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::get(probe.path())
            .header(hyper::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
        anyhow::Ok(sender.send_request(request).await?.status())
    };
    let status = match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            eprintln!("flashgate: {addr}{}: {e:#}", probe.path());
            return Ok(ExitCode::FAILURE);
        }
        Err(_) => {
            eprintln!(
                "flashgate: {addr}{}: no answer within {timeout:?}",
                probe.path()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    if status == hyper::StatusCode::OK {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("flashgate: {addr}{} answered {status}", probe.path());
    Ok(ExitCode::FAILURE)
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = Store::new(&settings.postgres)?;
    store.migrate(settings.redis.partitions).await?;
    println!("journal schema is up to date");
    Ok(ExitCode::SUCCESS)
}

async fn connect(settings: &Settings) -> anyhow::Result<(Arc<Redis>, Store)> {
    let redis = Redis::connect(settings)
        .await
        .context("connecting to redis")?;
    let store = Store::new(&settings.postgres)?;
    store.migrate(settings.redis.partitions).await?;
    Ok((Arc::new(redis), store))
}

pub async fn reconcile(settings: &Settings) -> anyhow::Result<ExitCode> {
    let (redis, store) = connect(settings).await?;
    let limits = Journal::reconcile_limits(&settings.journal);
    let seen = reconciler::Checkpoints::default();
    let report = reconciler::pass(&redis, &store, &limits, DriftCheck::Run, &seen).await;
    println!("partitions          {}", report.partitions);
    println!("  skipped (locked)  {}", report.skipped);
    println!("  failed            {}", report.failed);
    println!("entries read        {}", report.read);
    println!("missing events      {}", report.missing);
    println!(
        "checkpoint lag      {:.3} s",
        report.checkpoint_lag_ms as f64 / 1000.0
    );
    println!("more waiting        {}", report.more);
    println!("gaps                {}", report.gaps);
    println!("skus compared       {}", report.skus_checked);
    println!("drift               {}", report.drift.len());
    for d in &report.drift {
        println!(
            "  {}  {}  redis v{}  postgres v{}",
            d.sku,
            d.reason.as_str(),
            d.redis_version.map_or("-".into(), |v| v.to_string()),
            d.postgres_version
        );
    }
    redis.quit().await;
    if report.failed > 0 {
        return Ok(ExitCode::FAILURE);
    }
    if report.gaps > 0 || !report.drift.is_empty() {
        return Ok(ExitCode::from(EXIT_DRIFT));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(
    settings: &Settings,
    skus: &[String],
    overwrite: Overwrite,
) -> anyhow::Result<ExitCode> {
    let (redis, store) = connect(settings).await?;
    let names = if skus.is_empty() {
        store.skus().await?
    } else {
        skus.to_vec()
    };
    let (mut restored, mut failed) = (0u64, 0u64);
    for name in &names {
        let sku = Sku::parse_stored(name).with_context(|| format!("sku {name:?}"))?;
        match rebuild::rebuild_sku(&redis, &store, &sku, overwrite).await {
            Ok(Outcome::Restored { version, holds }) => {
                restored += 1;
                println!("{name}: restored at version {version} with {holds} live holds");
            }
            Ok(Outcome::Current {
                redis_version,
                postgres_version,
            }) => println!(
                "{name}: left alone, redis is at version {redis_version} and postgres at \
                 {postgres_version} (--force to overwrite)"
            ),
            Ok(Outcome::Changed) => {
                failed += 1;
                println!("{name}: changed in redis during the rebuild; run again");
            }
            Ok(Outcome::Unknown) => {
                failed += 1;
                println!("{name}: the journal has no such sku");
            }
            Err(e) => {
                failed += 1;
                println!("{name}: failed: {e}");
            }
        }
    }
    println!(
        "{restored} restored, {failed} not restored, {} skus",
        names.len()
    );
    redis.quit().await;
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
