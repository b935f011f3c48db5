//! The Postgres journal: every acknowledged change arrives, once, whatever
//! fails on the way (queue overflow, a killed gateway, Postgres going away,
//! Redis losing its data).

use std::time::{Duration, Instant};

use flashgate::{
    config::Settings,
    events::Event,
    inventory::Sku,
    journal::{
        Store,
        rebuild::{AutoRebuild, Outcome, Overwrite, rebuild_sku},
        reconciler::{self, DriftCheck, ReconcileLimits},
    },
    redis::Redis,
};
use fred::prelude::*;
use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{
    Backend, ChaosProxy, GatewayProcess, TestApp, journal_db, run_tool, servers, spawn_app_with,
    test_settings, token, unique_prefix, wipe_prefix,
};
use crate::on_both_topologies;

/// How long the journal may take to agree with Redis in these tests.
pub const CATCH_UP: Duration = Duration::from_secs(15);

/// A reservation a client got 201 for, and the token of its owner.
pub struct Acked {
    pub id: String,
    pub token: String,
}

impl Acked {
    fn from_reply(reply: &crate::harness::Reply, token: &str) -> Self {
        Self {
            id: reply.body["reservation_id"].as_str().unwrap().to_owned(),
            token: token.to_owned(),
        }
    }
}

/// `n` reservations of one unit from `accounts` accounts, `in_flight` at once.
async fn crowd(app: &TestApp, sku: &str, n: usize, accounts: usize) -> Vec<Acked> {
    let replies: Vec<(String, crate::harness::Reply)> = stream::iter(0..n)
        .map(|i| async move {
            let t = token(&format!("j-shopper-{}", i % accounts));
            let r = app.reserve(&t, json!({ "sku": sku, "qty": 1 }), None).await;
            (t, r)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    replies
        .into_iter()
        .filter(|(_, r)| r.status == StatusCode::CREATED)
        .map(|(token, r)| Acked::from_reply(&r, &token))
        .collect()
}

/// Confirms every third and releases every third of `acked`.
async fn settle_some(app: &TestApp, acked: &[Acked]) {
    for (i, a) in acked.iter().enumerate() {
        let action = match i % 3 {
            0 => "confirm",
            1 => "release",
            _ => continue,
        };
        let r = app.reservation(&a.token, &a.id, Some(action)).await;
        assert_eq!(r.status, StatusCode::OK, "{action}: {:?}", r.body);
    }
}

/// Why the journal does not (yet) agree with Redis about `skus` and `acked`.
async fn disagreement(
    app: &TestApp,
    db: &tokio_postgres::Client,
    skus: &[&str],
    acked: &[Acked],
) -> Option<String> {
    for sku in skus {
        let view = app.view(sku).await.body;
        let version = view["version"].as_i64().unwrap_or(-1);
        let versions: Vec<i64> = db
            .query(
                "SELECT version FROM inventory_events WHERE sku = $1
                 ORDER BY split_part(stream_id, '-', 1)::bigint,
                          split_part(stream_id, '-', 2)::bigint",
                &[sku],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Every mutation bumps the version by one and appends one event.
        let expected: Vec<i64> = (1..=version).collect();
        if versions != expected {
            return Some(format!(
                "{sku}: redis at version {version}, journal has {} events ending {:?}",
                versions.len(),
                versions.last()
            ));
        }
        for loc in view["locations"].as_array().unwrap() {
            let row = db
                .query_opt(
                    "SELECT on_hand, reserved FROM stock_levels WHERE sku = $1 AND location = $2",
                    &[sku, &loc["location"].as_str().unwrap()],
                )
                .await
                .unwrap();
            let pg = row.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
            let redis = (
                loc["on_hand"].as_i64().unwrap(),
                loc["reserved"].as_i64().unwrap(),
            );
            if pg != Some(redis) {
                return Some(format!("{sku}/{loc}: stock_levels {pg:?}, redis {redis:?}"));
            }
        }
    }
    for a in acked {
        let redis = app.reservation(&a.token, &a.id, None).await.body["status"].clone();
        let pg: Option<String> = db
            .query_opt(
                "SELECT state FROM reservations WHERE reservation_id = $1",
                &[&a.id],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        if pg.as_deref() != redis.as_str() {
            return Some(format!("{}: reservations says {pg:?}, redis {redis}", a.id));
        }
    }
    None
}

pub async fn assert_journal_catches_up(
    app: &TestApp,
    db: &tokio_postgres::Client,
    skus: &[&str],
    acked: &[Acked],
) {
    let start = Instant::now();
    loop {
        let Some(why) = disagreement(app, db, skus, acked).await else {
            return;
        };
        assert!(
            start.elapsed() < CATCH_UP,
            "the journal never caught up: {why}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

async fn steady_state_tables_agree_with_redis(backend: Backend) {
    let app = spawn_app_with(test_settings(backend, &unique_prefix())).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let (hot, short) = ("J-HOT", "J-SHORT");
    app.stock(hot, 60).await;
    let r = app
        .set_stock(hot, "north", json!({ "on_hand": 20, "safety_stock": 2 }))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.stock(short, 10).await;
    let r = app
        .policy(short, json!({ "reservation_ttl_seconds": 1 }))
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let acked = crowd(&app, hot, 120, 40).await;
    assert_eq!(acked.len(), 78, "60 + 20 - 2 units can be held");
    settle_some(&app, &acked).await;
    let expiring = crowd(&app, short, 5, 5).await;
    assert_eq!(expiring.len(), 5);
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let all: Vec<Acked> = acked.into_iter().chain(expiring).collect();
    assert_journal_catches_up(&app, &db, &[hot, short], &all).await;
    let expired = count(
        &db,
        "SELECT count(*) FROM reservations WHERE state = 'expired'",
    )
    .await;
    assert_eq!(
        expired, 5,
        "the short holds expired and the journal says so"
    );
}

/// Redis and Postgres handles on a test gateway's data, for library calls.
async fn backends(settings: &Settings) -> (Redis, Store) {
    let redis = Redis::connect(settings).await.unwrap();
    let store = Store::new(&settings.postgres).unwrap();
    (redis, store)
}

fn eager_limits() -> ReconcileLimits {
    ReconcileLimits {
        entries_max: 10_000,
        settle: Duration::ZERO,
        drift_rows_max: 10_000,
        on_lost_writes: AutoRebuild::Off,
    }
}

/// Settings whose in-process reconciler does one pass at start and then
/// waits an hour, so the test decides when reconciling happens.
fn settings_without_reconciler(backend: Backend) -> Settings {
    let mut s = test_settings(backend, &unique_prefix());
    s.journal.reconcile_interval_ms = 3_600_000;
    s
}

async fn a_queue_of_one_drops_events_and_the_reconciler_brings_them(backend: Backend) {
    let mut settings = settings_without_reconciler(backend);
    settings.journal.queue_capacity = 1;
    let app = spawn_app_with(settings).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let sku = "J-OVERFLOW";
    // The in-process reconciler's one pass at start (over empty streams)
    // must be over, so that the passes below find every dropped event.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // More events than one chunk of a pass reads, and than one capped pass.
    app.stock(sku, 600).await;
    let acked = crowd(&app, sku, 700, 50).await;
    assert_eq!(acked.len(), 600);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = count(&db, "SELECT count(*) FROM inventory_events").await;
    assert!(
        written < 601,
        "a queue of one dropped events ({written} of 601 written)"
    );

    let (redis, store) = backends(&app.settings).await;
    let seen = reconciler::Checkpoints::default();
    let capped = ReconcileLimits {
        entries_max: 300,
        ..eager_limits()
    };
    let first = reconciler::pass(&redis, &store, &capped, DriftCheck::Skip, &seen).await;
    assert_eq!((first.failed, first.read), (0, 300), "{first:?}");
    assert!(first.more, "a capped pass says more is waiting: {first:?}");
    let report = reconciler::pass(&redis, &store, &eager_limits(), DriftCheck::Run, &seen).await;
    assert_eq!((report.failed, report.more), (0, false), "{report:?}");
    assert!(
        first.missing + report.missing > 0,
        "the passes brought what was dropped"
    );
    let journaled = count(&db, "SELECT count(*) FROM inventory_events").await;
    assert_eq!(journaled, 601, "every event is journaled once");
    assert!(report.drift.is_empty(), "{:?}", report.drift);
    assert_eq!(disagreement(&app, &db, &[sku], &acked).await, None);

    // Everything is journaled, so the stream is trimmed down to the checkpoint.
    let p = redis.keys().partition_of(&Sku::parse(sku).unwrap());
    let left: u64 = redis.pool().xlen(redis.keys().events(p)).await.unwrap();
    assert!(left <= 101, "the stream kept {left} journaled entries");
    let again = reconciler::pass(&redis, &store, &eager_limits(), DriftCheck::Skip, &seen).await;
    assert_eq!((again.missing, again.read), (0, 0), "{again:?}");
}

async fn a_pass_looks_up_only_the_entries_its_own_store_did_not_commit(backend: Backend) {
    let mut settings = settings_without_reconciler(backend);
    settings.journal.queue_capacity = 1;
    let app = spawn_app_with(settings).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let sku = "J-RECORDED";
    tokio::time::sleep(Duration::from_secs(1)).await;
    app.stock(sku, 200).await;
    let acked = crowd(&app, sku, 200, 40).await;
    assert_eq!(acked.len(), 200);

    // This process commits every other entry itself, as its writer would.
    let (redis, store) = backends(&app.settings).await;
    let p = redis.keys().partition_of(&Sku::parse(sku).unwrap());
    let entries = redis.stream_entries(p, "-", "+", 1_000).await.unwrap();
    assert_eq!(entries.len(), 201, "one stock event and 200 holds");
    let mine: Vec<Event> = entries
        .iter()
        .step_by(2)
        .map(|entry| Event::from_stream_entry(p, entry).unwrap())
        .collect();
    store.apply(&mine).await.unwrap();
    assert_eq!(store.committed().len(), mine.len());

    let seen = reconciler::Checkpoints::default();
    let report = reconciler::pass(&redis, &store, &eager_limits(), DriftCheck::Skip, &seen).await;
    assert_eq!((report.failed, report.read), (0, 201), "{report:?}");
    assert_eq!(report.recorded, mine.len() as u64, "{report:?}");
    assert!(
        report.missing > 0,
        "the queue of one dropped events: {report:?}"
    );
    let journaled = count(&db, "SELECT count(*) FROM inventory_events").await;
    assert_eq!(
        journaled, 201,
        "the entries nobody here committed were looked up and brought"
    );
    assert!(
        store.committed().is_empty(),
        "the checkpoint passed every recorded entry"
    );
}

async fn replaying_the_same_events_twice_changes_nothing(backend: Backend) {
    let app = spawn_app_with(settings_without_reconciler(backend)).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let sku = "J-REPLAY";
    app.stock(sku, 30).await;
    let acked = crowd(&app, sku, 40, 10).await;
    settle_some(&app, &acked).await;
    let r = app
        .adjust(
            sku,
            "default",
            json!({ "delta": 5, "reason": "receipt", "reference": "po-1" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_journal_catches_up(&app, &db, &[sku], &acked).await;

    let (redis, store) = backends(&app.settings).await;
    let p = redis.keys().partition_of(&Sku::parse(sku).unwrap());
    let entries = redis.stream_entries(p, "-", "+", 10_000).await.unwrap();
    let events: Vec<Event> = entries
        .iter()
        .map(|entry| Event::from_stream_entry(p, entry).unwrap())
        .collect();
    assert!(events.len() > 40);
    let before = snapshot(&db).await;
    assert_eq!(store.apply(&events).await.unwrap(), 0, "no event is new");
    let mut backwards = events.clone();
    backwards.reverse();
    for chunk in backwards.chunks(7) {
        store.apply(chunk).await.unwrap();
    }
    assert_eq!(snapshot(&db).await, before);

    // A batch of old and new events, one of the new given twice: exactly
    // the new ones count as inserted (stock notifications follow those).
    let lost: Vec<&str> = events[3..6].iter().map(|e| e.stream_id.as_str()).collect();
    let deleted = db
        .execute(
            "DELETE FROM inventory_events WHERE partition = $1 AND stream_id = ANY($2)",
            &[&(p.0 as i32), &lost],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    let mut mixed = events.clone();
    mixed.push(events[4].clone());
    assert_eq!(store.apply(&mixed).await.unwrap(), 3, "the three deleted");
    let journaled = count(&db, "SELECT count(*) FROM inventory_events").await;
    assert_eq!(journaled, events.len() as i64, "each event once");
}

/// Every journal row, in a fixed order.
async fn snapshot(db: &tokio_postgres::Client) -> Vec<String> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT row_to_json(e)::text FROM inventory_events e ORDER BY partition, stream_id",
        "SELECT row_to_json(r)::text FROM reservations r ORDER BY reservation_id",
        "SELECT row_to_json(s)::text FROM stock_levels s ORDER BY sku, location",
    ] {
        for r in db.query(sql, &[]).await.unwrap() {
            rows.push(r.get(0));
        }
    }
    rows
}

async fn postgres_going_away_loses_nothing_acknowledged(backend: Backend) {
    let proxy = ChaosProxy::start(servers().postgres_port).await;
    let mut settings = test_settings(backend, &unique_prefix());
    let direct = settings.postgres.url.expose().to_owned();
    settings.postgres.url = direct
        .replace(
            &format!(":{}/", servers().postgres_port),
            &format!(":{}/", proxy.port),
        )
        .into();
    settings.postgres.connect_timeout_ms = 300;
    settings.postgres.acquire_timeout_ms = 300;
    settings.journal.retry_backoff_ms = 100;
    let app = spawn_app_with(settings).await;
    let db = journal_db(&direct).await;
    let sku = "J-OUTAGE";
    app.stock(sku, 100).await;
    let before = crowd(&app, sku, 20, 20).await;
    assert_eq!(before.len(), 20);

    proxy.cut();
    let during = crowd(&app, sku, 60, 30).await;
    assert_eq!(
        during.len(),
        60,
        "reservations keep succeeding without postgres"
    );
    let ready = app
        .send(reqwest::Method::GET, "/readyz", None, &[], None)
        .await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["redis"], "ok");
    assert_ne!(ready.body["postgres"], "ok");
    // A synchronous confirmation is not acknowledged before Postgres has it.
    let first = &during[0];
    let r = app
        .reservation(&first.token, &first.id, Some("confirm"))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.header("retry-after").is_some());

    proxy.restore();
    let r = app
        .reservation(&first.token, &first.id, Some("confirm"))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the retried confirmation lands: {:?}",
        r.body
    );
    let state: String = db
        .query_one(
            "SELECT state FROM reservations WHERE reservation_id = $1",
            &[&first.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        state, "confirmed",
        "a 200 confirm is in postgres when it is answered"
    );
    let all: Vec<Acked> = before.into_iter().chain(during).collect();
    assert_journal_catches_up(&app, &db, &[sku], &all).await;
    let rows = count(&db, "SELECT count(*) FROM reservations").await;
    assert_eq!(rows, 80, "one row per reservation, no duplicates");
    let ready = app
        .send(reqwest::Method::GET, "/readyz", None, &[], None)
        .await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
}

async fn a_gateway_killed_mid_load_loses_no_acknowledged_reservation(backend: Backend) {
    let settings = test_settings(backend, &unique_prefix());
    let mut gateway = GatewayProcess::start(&settings);
    let http = reqwest::Client::new();
    let base = format!("http://{}", gateway.addr);
    let start = Instant::now();
    while http.get(format!("{base}/readyz")).send().await.is_err() {
        let exited = gateway.child.try_wait().unwrap();
        assert!(
            start.elapsed() < CATCH_UP && exited.is_none(),
            "the gateway process never served ({exited:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sku = "J-CRASH";
    gateway.stock(sku, 5000).await;

    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Acked>::new()));
    let load = {
        let (acked, http, base) = (acked.clone(), http.clone(), base.clone());
        tokio::spawn(async move {
            stream::iter(0..3_000)
                .for_each_concurrent(32, |i| {
                    let (acked, http, base) = (acked.clone(), http.clone(), base.clone());
                    async move {
                        let t = token(&format!("crash-{}", i % 100));
                        let sent = http
                            .post(format!("{base}/v1/reservations"))
                            .bearer_auth(&t)
                            .json(&json!({ "sku": sku, "qty": 1 }))
                            .send()
                            .await;
                        let Ok(resp) = sent else { return };
                        if resp.status() != StatusCode::CREATED {
                            return;
                        }
                        let Ok(body) = resp.json::<Value>().await else {
                            return;
                        };
                        let id = body["reservation_id"].as_str().unwrap().to_owned();
                        acked.lock().unwrap().push(Acked { id, token: t });
                    }
                })
                .await;
        })
    };
    while acked.lock().unwrap().len() < 300 {
        assert!(start.elapsed() < CATCH_UP * 2, "the load never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gateway.kill_9();
    load.await.unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= 300);

    // A new instance on the same data: its reconciler brings what the dead
    // one's queue held.
    let app = spawn_app_with(settings).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let start = Instant::now();
    loop {
        let ids: Vec<&str> = acked.iter().map(|a| a.id.as_str()).collect();
        let found = db
            .query_one(
                "SELECT count(*) FROM reservations WHERE reservation_id = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if found == acked.len() as i64 {
            break;
        }
        assert!(
            start.elapsed() < CATCH_UP,
            "only {found} of {} acknowledged reservations reached postgres",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_journal_catches_up(&app, &db, &[sku], &acked).await;
}

async fn a_wiped_redis_is_rebuilt_from_the_journal(backend: Backend) {
    // The operator's tools, not the gateway's own recovery, are under test.
    let mut settings = test_settings(backend, &unique_prefix());
    settings.journal.auto_rebuild = false;
    let app = spawn_app_with(settings).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let sku = "J-REBUILD";
    app.stock(sku, 10).await;
    let r = app
        .set_stock(sku, "east", json!({ "on_hand": 4, "backorder_limit": 1 }))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.policy(sku, json!({ "max_per_account": 3 })).await;
    assert_eq!(r.status, StatusCode::OK);
    let buyer = token("j-capped");
    let mut held = Vec::new();
    for _ in 0..3 {
        let r = app
            .reserve(&buyer, json!({ "sku": sku, "qty": 1 }), None)
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        held.push(Acked::from_reply(&r, &buyer));
    }
    let r = app.reservation(&buyer, &held[0].id, Some("confirm")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_journal_catches_up(&app, &db, &[sku], &held).await;
    let before = app.view(sku).await.body;

    wipe_prefix(backend, &app.prefix);
    assert_eq!(app.view(sku).await.status, StatusCode::NOT_FOUND);

    // The loss is reported, not hidden.
    let (code, report) = run_tool(&app.settings, &["reconcile"]);
    assert_eq!(code, 3, "{report}");
    assert!(
        report.contains(&format!("{sku}  missing_in_redis")),
        "{report}"
    );

    let (code, out) = run_tool(&app.settings, &["rebuild"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("restored at version"), "{out}");
    assert!(out.contains("with 2 live holds"), "{out}");
    assert_eq!(
        app.view(sku).await.body,
        before,
        "counts equal the journal's"
    );
    let (redis, store) = backends(&app.settings).await;
    let parsed = Sku::parse(sku).unwrap();
    let again = rebuild_sku(&redis, &store, &parsed, Overwrite::OnlyOlder)
        .await
        .unwrap();
    assert!(matches!(again, Outcome::Current { .. }), "{again:?}");
    let (code, report) = run_tool(&app.settings, &["reconcile"]);
    assert_eq!(code, 0, "no drift after the rebuild: {report}");

    // Reservations continue: holds, the cap and the versions all survived.
    let r = app
        .reserve(&buyer, json!({ "sku": sku, "qty": 1 }), None)
        .await;
    assert_eq!(r.code(), "purchase-limit", "{:?}", r.body);
    let r = app.reservation(&buyer, &held[1].id, Some("release")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app.reservation(&buyer, &held[2].id, Some("confirm")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let other = token("j-other");
    let r = app
        .reserve(&other, json!({ "sku": sku, "qty": 2 }), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    held.push(Acked::from_reply(&r, &other));
    assert_journal_catches_up(&app, &db, &[sku], &held).await;
}

async fn instances_starting_together_share_one_journal(backend: Backend) {
    let settings = test_settings(backend, &unique_prefix());
    let (a, b) = tokio::join!(
        spawn_app_with(settings.clone()),
        spawn_app_with(settings.clone())
    );
    let db = journal_db(settings.postgres.url.expose()).await;
    let migrations = count(&db, "SELECT count(*) FROM flashgate_schema_history").await;
    let files = std::fs::read_dir(crate::harness::repo_file("src/journal/migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(migrations, files, "each migration was applied once");
    let sku = "J-TWO";
    a.stock(sku, 100).await;
    let (mut first, second) = tokio::join!(crowd(&a, sku, 80, 40), crowd(&b, sku, 80, 40));
    assert_eq!(first.len() + second.len(), 100);
    first.extend(second);
    settle_some(&b, &first).await;
    // Two writers and two reconcilers on the same partitions: still one row
    // per event and per reservation.
    assert_journal_catches_up(&a, &db, &[sku], &first).await;
    let rows = count(&db, "SELECT count(*) FROM reservations").await;
    assert_eq!(rows, 100);
}

on_both_topologies!(
    instances_starting_together_share_one_journal,
    steady_state_tables_agree_with_redis,
    a_queue_of_one_drops_events_and_the_reconciler_brings_them,
    a_pass_looks_up_only_the_entries_its_own_store_did_not_commit,
    replaying_the_same_events_twice_changes_nothing,
    postgres_going_away_loses_nothing_acknowledged,
    a_gateway_killed_mid_load_loses_no_acknowledged_reservation,
    a_wiped_redis_is_rebuilt_from_the_journal,
);
