//! Stock notifications: each change of a SKU's status is derived once from
//! the journal, whichever instance, writer or reconciler journals it.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, journal_db, spawn_app_with, test_settings, token, unique_prefix};

/// Notifications of `sku` in version order: `(type, previous, status)`.
async fn notifications(db: &tokio_postgres::Client, sku: &str) -> Vec<(String, String, String)> {
    db.query(
        "SELECT type, previous_status, status FROM stock_notifications
         WHERE sku = $1 ORDER BY version",
        &[&sku],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn each_status_change_is_one_notification_across_two_instances(backend: Backend) {
    let settings = test_settings(backend, &unique_prefix());
    // The second instance's queue overflows: the reconciler journals much
    // of what it holds, late and out of order with the first's writes.
    let mut small = settings.clone();
    small.journal.queue_capacity = 2;
    let apps = [
        spawn_app_with(settings.clone()).await,
        spawn_app_with(small).await,
    ];
    let db = journal_db(settings.postgres.url.expose()).await;
    let sku = "HOOK-1";
    let r = apps[0]
        .set_stock(
            sku,
            "default",
            json!({"on_hand": 40, "low_stock_threshold": 10}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Sold down through both instances at once.
    let held = stream::iter(0..40)
        .map(|i| {
            let app = &apps[i % 2];
            async move {
                app.reserve(
                    &token(&format!("hook-{i}")),
                    json!({"sku": sku, "qty": 1}),
                    None,
                )
                .await
                .status
            }
        })
        .buffer_unordered(8)
        .filter(|s| std::future::ready(*s == StatusCode::CREATED))
        .count()
        .await;
    assert_eq!(held, 40);
    // Restocked through the second.
    let r = apps[1]
        .set_stock(
            sku,
            "default",
            json!({"on_hand": 70, "low_stock_threshold": 10}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let want = vec![
        (
            "stock.low".to_owned(),
            "IN_STOCK".to_owned(),
            "LOW_STOCK".to_owned(),
        ),
        (
            "stock.out".to_owned(),
            "LOW_STOCK".to_owned(),
            "OUT_OF_STOCK".to_owned(),
        ),
        (
            "stock.back_in".to_owned(),
            "OUT_OF_STOCK".to_owned(),
            "IN_STOCK".to_owned(),
        ),
    ];
    let started = Instant::now();
    loop {
        let journaled: i64 = db
            .query_one(
                "SELECT count(*) FROM inventory_events WHERE sku = $1",
                &[&sku],
            )
            .await
            .unwrap()
            .get(0);
        if journaled == 42 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{journaled} of 42 journaled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(notifications(&db, sku).await, want);
    // The view at the transition is the one at that version.
    let out = db
        .query_one(
            "SELECT view::text FROM stock_notifications WHERE sku = $1 AND type = 'stock.out'",
            &[&sku],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["status"], "OUT_OF_STOCK");
    assert_eq!(out["available"], 0);
    assert_eq!(out["reserved"], 40);
}

crate::on_both_topologies!(each_status_change_is_one_notification_across_two_instances);
