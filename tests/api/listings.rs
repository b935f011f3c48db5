//! Listings read from the journal: a shopper's own reservations and an
//! operator's, page by page with `cursor`, never repeating or skipping one
//! however many are journaled between pages; SKUs by stock status.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, admin_token, journal_db, spawn_app, token};

/// Holds `n` units one by one for `account`, over two SKUs; their ids.
async fn hold(app: &TestApp, account: &str, n: usize) -> Vec<String> {
    let shopper = token(account);
    stream::iter(0..n)
        .map(|i| {
            let shopper = shopper.clone();
            async move {
                let sku = if i % 2 == 0 { "LIST-1" } else { "LIST-2" };
                let r = app
                    .reserve(&shopper, json!({"sku": sku, "qty": 1}), None)
                    .await;
                assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
                r.body["reservation_id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// Every page of `path` (which takes `cursor` and `limit`) as `token`.
async fn every_page(app: &TestApp, path: &str, token: &str, key: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}cursor={c}"),
            None => path.to_owned(),
        };
        let r = app.send(Method::GET, &url, Some(token), &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{url}: {:?}", r.body);
        items.extend(r.body[key].as_array().unwrap().iter().cloned());
        match r.body["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|r| r["reservation_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn journaled(app: &TestApp, want: i64) {
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let started = Instant::now();
    loop {
        let n: i64 = db
            .query_one("SELECT count(*) FROM reservations", &[])
            .await
            .unwrap()
            .get(0);
        if n == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{n} of {want} journaled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn listings_page_through_thousands_without_repeats_or_gaps(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("LIST-1", 10_000).await;
    app.stock("LIST-2", 10_000).await;
    let a = hold(&app, "lister-a", 1_500).await;
    let b = hold(&app, "lister-b", 500).await;
    for id in &a[..100] {
        let r = app
            .reservation(&token("lister-a"), id, Some("confirm"))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for id in &b[..100] {
        let r = app
            .reservation(&token("lister-b"), id, Some("release"))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    journaled(&app, 2_000).await;
    let db = journal_db(app.settings.postgres.url.expose()).await;
    let started = Instant::now();
    // The confirmations and releases, journaled too.
    while db
        .query_one(
            "SELECT count(*) FROM reservations WHERE state <> 'held'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 200
    {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A's listing, 333 at a time, while A keeps reserving: every one of the
    // first 1,500 once, newer ones at most once, nothing of B's.
    let shopper_a = token("lister-a");
    let paging = every_page(
        &app,
        "/v1/reservations?limit=333",
        &shopper_a,
        "reservations",
    );
    let (listed, extra) = tokio::join!(paging, hold(&app, "lister-a", 50));
    let listed_ids = ids(&listed);
    let unique: HashSet<&String> = listed_ids.iter().collect();
    assert_eq!(
        unique.len(),
        listed_ids.len(),
        "no reservation listed twice"
    );
    let known: HashSet<&String> = a.iter().chain(extra.iter()).collect();
    assert!(unique.iter().all(|id| known.contains(id)), "only A's");
    assert!(
        a.iter().all(|id| unique.contains(id)),
        "none of A's first 1,500 skipped"
    );
    assert!(listed.iter().all(|r| r["account_id"] == "lister-a"));
    let confirmed = listed.iter().filter(|r| r["status"] == "confirmed").count();
    assert_eq!(confirmed, 100);

    // B sees its own, filtered by status.
    let held = every_page(
        &app,
        "/v1/reservations?status=held&limit=1000",
        &token("lister-b"),
        "reservations",
    )
    .await;
    assert_eq!(held.len(), 400);
    assert!(
        held.iter()
            .all(|r| r["account_id"] == "lister-b" && r["status"] == "held")
    );

    // Operators filter by SKU, status and account.
    let path = "/v1/admin/reservations?account=lister-b&sku=LIST-1&status=released&limit=7";
    let released = every_page(&app, path, &admin_token(), "reservations").await;
    let want = db
        .query_one(
            "SELECT count(*) FROM reservations WHERE account_id = 'lister-b' AND sku = 'LIST-1' AND state = 'released'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(released.len() as i64, want);
    assert!(want > 0);
    let everyone = every_page(
        &app,
        "/v1/admin/reservations?limit=1000",
        &admin_token(),
        "reservations",
    )
    .await;
    assert_eq!(everyone.len(), 2_050);

    // Shoppers cannot list others'; bad parameters are 422.
    let r = app
        .send(
            Method::GET,
            "/v1/admin/reservations",
            Some(&token("lister-a")),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for bad in ["?limit=0", "?limit=1001", "?cursor=abc", "?status=lost"] {
        let r = app
            .send(
                Method::GET,
                &format!("/v1/reservations{bad}"),
                Some(&token("lister-a")),
                &[],
                None,
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed"),
            "{bad}"
        );
    }
    let r = app
        .send(Method::GET, "/v1/reservations", None, &[], None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn skus_are_listed_by_stock_status(backend: Backend) {
    let app = spawn_app(backend).await;
    for (sku, on_hand) in [
        ("STATUS-LOW-1", 3),
        ("STATUS-LOW-2", 2),
        ("STATUS-FULL", 100),
    ] {
        let r = app
            .set_stock(
                sku,
                "default",
                json!({"on_hand": on_hand + 10, "low_stock_threshold": 5}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        // Down to `on_hand` available: LOW_STOCK for the first two.
        let r = app
            .adjust(sku, "default", json!({"delta": -10, "reason": "shrinkage"}))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let started = Instant::now();
    let low = loop {
        let low = every_page(
            &app,
            "/v1/admin/inventory?status=LOW_STOCK&limit=1",
            &admin_token(),
            "skus",
        )
        .await;
        if low.len() == 2 {
            break low;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{low:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(low[0]["sku"], "STATUS-LOW-1");
    assert_eq!(low[0]["available"], 3);
    assert_eq!(low[1]["sku"], "STATUS-LOW-2");
    assert_eq!(low[1]["locations"][0]["low_stock_threshold"], 5);
    let full = every_page(
        &app,
        "/v1/admin/inventory?status=IN_STOCK",
        &admin_token(),
        "skus",
    )
    .await;
    assert_eq!(full.len(), 1);
    let r = app
        .send(
            Method::GET,
            "/v1/admin/inventory?status=low",
            Some(&admin_token()),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

crate::on_both_topologies!(listings_page_through_thousands_without_repeats_or_gaps);
crate::on_both_topologies!(skus_are_listed_by_stock_status);

async fn an_operator_reads_a_sku_with_its_policy(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("ADMIN-READ", 25).await;
    let r = app
        .policy(
            "ADMIN-READ",
            json!({"max_per_account": 2, "reservation_ttl_seconds": 120,
                   "sale_opens_at": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .reserve(
            &token("reader"),
            json!({"sku": "ADMIN-READ", "qty": 2}),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    let r = app
        .send(
            Method::GET,
            "/v1/admin/inventory/ADMIN-READ",
            Some(&admin_token()),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        (r.body["available"].clone(), r.body["reserved"].clone()),
        (json!(23), json!(2))
    );
    assert_eq!(
        r.body["policy"],
        json!({"sku": "ADMIN-READ", "max_per_account": 2, "reservation_ttl_seconds": 120, "buckets": 1,
               "sale_opens_at": "2026-01-01T00:00:00Z", "sale_closes_at": null, "seller": null,
               "waiting_room": null})
    );
    let r = app
        .send(
            Method::GET,
            "/v1/admin/inventory/NO-SUCH-SKU",
            Some(&admin_token()),
            &[],
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "unknown-sku"));
    let r = app
        .send(
            Method::GET,
            "/v1/admin/inventory/ADMIN-READ",
            Some(&token("reader")),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

crate::on_both_topologies!(an_operator_reads_a_sku_with_its_policy);
