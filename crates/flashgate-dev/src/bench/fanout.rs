//! `sse-fanout`: what one SSE stock event costs the gateway.
//!
//! Hot reservations run at a fixed rate twice: alone, then while
//! `STREAMS` clients follow the hot SKU's event stream. The gateway's extra
//! CPU time in the second run, divided by the events the clients received,
//! is the cost of one delivered event (fan-out, coalescing, the refresh
//! reads and the writes to the sockets). The clients only count events;
//! they parse nothing, so they take as little of the machine as they can.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
};

use super::{HOT_SKU, Scenario, Target};
use crate::loadgen::{Pace, Plan};

/// Streams that follow the hot SKU.
pub const STREAMS: usize = 1000;
/// Reservations per second of both runs: enough that every stream has news
/// at every interval.
const RESERVATIONS_PER_S: f64 = 500.0;

#[derive(Debug, Serialize)]
pub struct FanOut {
    pub scenario: &'static str,
    pub streams: usize,
    pub reservations_per_s: f64,
    pub events_delivered: u64,
    pub events_per_s: f64,
    pub gateway_cpu_us_per_reservation_alone: Option<f64>,
    pub gateway_cpu_us_per_reservation_with_streams: Option<f64>,
    /// The extra CPU of the run with streams, per event delivered.
    pub gateway_cpu_us_per_event: Option<f64>,
}

/// Follows `path` on `addr`, adding each `stock` event to `events`.
async fn follow(
    addr: SocketAddr,
    path: String,
    events: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    const MARK: &[u8] = b"event: stock\n";
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    // The bytes kept from the end of the last read, so that a mark split
    // between two reads is still found once.
    let (mut buffer, mut kept) = (vec![0u8; 64 * 1024], 0);
    loop {
        let read = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            read = stream.read(&mut buffer[kept..]) => read?,
        };
        if read == 0 {
            anyhow::bail!("the gateway closed an event stream");
        }
        let end = kept + read;
        let found = buffer[..end]
            .windows(MARK.len())
            .filter(|w| *w == MARK)
            .count();
        events.fetch_add(found as u64, Ordering::Relaxed);
        kept = (MARK.len() - 1).min(end);
        buffer.copy_within(end - kept..end, 0);
    }
}

pub async fn measure(target: &Target, duration: Duration) -> anyhow::Result<FanOut> {
    // One descriptor per stream, past the usual soft limit of 1,024.
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-files limit")?;
    anyhow::ensure!(
        limit >= STREAMS as u64 + 256,
        "the open-files limit ({limit}) is too low for {STREAMS} streams"
    );
    let plan = Plan {
        pace: Pace::Rate(RESERVATIONS_PER_S),
        duration,
        connections: 16,
    };
    let alone = target.measure(Scenario::Hot, plan).await?;

    let events = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let path = format!("/v1/inventory/{HOT_SKU}/events");
    let clients: Vec<_> = (0..STREAMS)
        .map(|_| {
            tokio::spawn(follow(
                target.addr(),
                path.clone(),
                events.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    // Every stream has had its first event.
    let opened = tokio::time::Instant::now();
    while events.load(Ordering::Relaxed) < STREAMS as u64 {
        anyhow::ensure!(
            opened.elapsed() < Duration::from_secs(30),
            "only {} of {STREAMS} streams opened",
            events.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_start = events.load(Ordering::Relaxed);
    let cpu_before = target.gateway.cpu_time();
    let with_streams = target.measure(Scenario::Hot, plan).await?;
    let cpu_after = target.gateway.cpu_time();
    let delivered = events.load(Ordering::Relaxed) - at_start;
    stop.send(true).ok();
    for client in clients {
        client.await.context("a stream client")??;
    }
    let extra = match (cpu_before, cpu_after, alone.gateway_cpu_us_per_op) {
        (Some(before), Some(after), Some(per_reservation)) => {
            let spent_us = (after - before).as_secs_f64() * 1e6;
            Some((spent_us - per_reservation * with_streams.sent as f64) / delivered.max(1) as f64)
        }
        _ => None,
    };
    Ok(FanOut {
        scenario: "sse-fanout",
        streams: STREAMS,
        reservations_per_s: with_streams.achieved_per_s,
        events_delivered: delivered,
        events_per_s: delivered as f64 / with_streams.duration_s.max(1e-9),
        gateway_cpu_us_per_reservation_alone: alone.gateway_cpu_us_per_op,
        gateway_cpu_us_per_reservation_with_streams: with_streams.gateway_cpu_us_per_op,
        gateway_cpu_us_per_event: extra,
    })
}

/// Prints the report as a JSON line on stdout, and a summary on stderr.
pub fn emit(report: &FanOut) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string(report).context("encoding the fan-out report")?
    );
    eprintln!(
        "{:<22} {} streams, {:.0} reservations/s: {} events ({:.0}/s), gateway cpu {} µs/event",
        report.scenario,
        report.streams,
        report.reservations_per_s,
        report.events_delivered,
        report.events_per_s,
        report
            .gateway_cpu_us_per_event
            .map_or("?".to_owned(), |c| format!("{c:.1}")),
    );
    Ok(())
}
