//! Locations, safety stock, statuses, backorders, sale windows, adjustments
//! and optimistic concurrency on admin writes.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, admin_token, spawn_app, token};
use crate::on_both_topologies;

fn location<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["locations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["location"] == name)
        .unwrap()
}

async fn reserve(app: &TestApp, who: &str, body: Value) -> (StatusCode, Value) {
    let r = app.reserve(&token(who), body, None).await;
    (r.status, r.body)
}

async fn without_a_location_the_one_with_most_available_serves(backend: Backend) {
    let app = spawn_app(backend).await;
    app.set_stock("MULTI", "north", json!({ "on_hand": 3 }))
        .await;
    app.set_stock("MULTI", "south", json!({ "on_hand": 5 }))
        .await;
    let (s, b) = reserve(&app, "a", json!({ "sku": "MULTI", "qty": 4 })).await;
    assert_eq!(
        (s, b["location"].clone()),
        (StatusCode::CREATED, json!("south"))
    );
    // north has 3, south 1: a request for 2 goes north.
    let (_, b) = reserve(&app, "b", json!({ "sku": "MULTI", "qty": 2 })).await;
    assert_eq!(b["location"], "north");
    // No single location can serve 3 (north 1, south 1), though 2 are left in all.
    let (s, b) = reserve(&app, "c", json!({ "sku": "MULTI", "qty": 3 })).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["available"], 2);
    let (s, b) = reserve(
        &app,
        "d",
        json!({ "sku": "MULTI", "qty": 1, "location": "south" }),
    )
    .await;
    assert_eq!(
        (s, b["location"].clone()),
        (StatusCode::CREATED, json!("south"))
    );
    let (s, b) = reserve(
        &app,
        "e",
        json!({ "sku": "MULTI", "qty": 1, "location": "west" }),
    )
    .await;
    assert_eq!(
        (s, b["type"].clone()),
        (
            StatusCode::NOT_FOUND,
            json!("https://flashgate.dev/problems/unknown-location")
        )
    );
    let view = app.view("MULTI").await.body;
    assert_eq!(
        (
            view["on_hand"].clone(),
            view["reserved"].clone(),
            view["available"].clone()
        ),
        (json!(8), json!(7), json!(1))
    );
    assert_eq!(location(&view, "north")["available"], 1);
    assert_eq!(location(&view, "south")["status"], "OUT_OF_STOCK");
}

async fn safety_stock_is_never_sold_and_statuses_follow_availability(backend: Backend) {
    let app = spawn_app(backend).await;
    app.set_stock(
        "SAFE",
        "default",
        json!({ "on_hand": 10, "safety_stock": 2, "low_stock_threshold": 3 }),
    )
    .await;
    assert_eq!(app.view("SAFE").await.body["status"], "IN_STOCK");
    let (s, _) = reserve(&app, "a", json!({ "sku": "SAFE", "qty": 5 })).await;
    assert_eq!(s, StatusCode::CREATED);
    let view = app.view("SAFE").await.body;
    assert_eq!(
        (view["available"].clone(), view["status"].clone()),
        (json!(3), json!("LOW_STOCK"))
    );
    let (s, b) = reserve(&app, "b", json!({ "sku": "SAFE", "qty": 4 })).await;
    assert_eq!(
        (s, b["available"].clone()),
        (StatusCode::CONFLICT, json!(3))
    );
    let (s, _) = reserve(&app, "b", json!({ "sku": "SAFE", "qty": 3 })).await;
    assert_eq!(s, StatusCode::CREATED);
    let view = app.view("SAFE").await.body;
    assert_eq!(
        (view["available"].clone(), view["status"].clone()),
        (json!(0), json!("OUT_OF_STOCK"))
    );
    assert_eq!(view["on_hand"], 10);
    assert_eq!(location(&view, "default")["safety_stock"], 2);
}

async fn backorders_are_held_up_to_the_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    app.set_stock(
        "BACK",
        "default",
        json!({ "on_hand": 1, "backorder_limit": 2 }),
    )
    .await;
    let (s, b) = reserve(&app, "a", json!({ "sku": "BACK", "qty": 1 })).await;
    assert_eq!(
        (s, b["backorder"].clone()),
        (StatusCode::CREATED, json!(false))
    );
    assert_eq!(app.view("BACK").await.body["status"], "BACKORDER");
    let t = token("b");
    let r = app
        .reserve(&t, json!({ "sku": "BACK", "qty": 2 }), None)
        .await;
    assert_eq!(
        (r.status, r.body["backorder"].clone()),
        (StatusCode::CREATED, json!(true))
    );
    let (s, _) = reserve(&app, "c", json!({ "sku": "BACK", "qty": 1 })).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(app.view("BACK").await.body["status"], "OUT_OF_STOCK");
    // Confirming a backorder leaves on_hand negative: units owed.
    let id = r.body["reservation_id"].as_str().unwrap();
    let c = app.reservation(&t, id, Some("confirm")).await;
    assert_eq!(
        (c.status, c.body["backorder"].clone()),
        (StatusCode::OK, json!(true))
    );
    let view = app.view("BACK").await.body;
    assert_eq!(
        (view["on_hand"].clone(), view["reserved"].clone()),
        (json!(-1), json!(1))
    );
    // A receipt pays the debt first.
    let receipt = json!({ "delta": 4, "reason": "receipt", "reference": "po-1" });
    let adj = app.adjust("BACK", "default", receipt).await;
    assert_eq!(adj.status, StatusCode::OK);
    assert_eq!(
        (adj.body["on_hand"].clone(), adj.body["available"].clone()),
        (json!(3), json!(2))
    );
}

async fn sale_windows_refuse_early_and_late_shoppers(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("DROP", 5).await;
    let r = app
        .policy("DROP", json!({ "sale_opens_at": "2099-01-01T10:00:00Z" }))
        .await;
    assert_eq!(r.body["sale_opens_at"], "2099-01-01T10:00:00Z");
    let (s, b) = reserve(&app, "early", json!({ "sku": "DROP", "qty": 1 })).await;
    assert_eq!(
        (s, b["type"].clone()),
        (
            StatusCode::CONFLICT,
            json!("https://flashgate.dev/problems/sale-not-open")
        )
    );
    assert_eq!(b["opens_at"], "2099-01-01T10:00:00Z");
    let r = app
        .policy(
            "DROP",
            json!({ "sale_opens_at": null, "sale_closes_at": "2020-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(
        (r.body["sale_opens_at"].clone(), r.status),
        (Value::Null, StatusCode::OK)
    );
    let (s, b) = reserve(&app, "late", json!({ "sku": "DROP", "qty": 1 })).await;
    assert_eq!(
        (s, b["type"].clone()),
        (
            StatusCode::CONFLICT,
            json!("https://flashgate.dev/problems/sale-closed")
        )
    );
    app.policy("DROP", json!({ "sale_closes_at": null })).await;
    let (s, _) = reserve(&app, "on-time", json!({ "sku": "DROP", "qty": 1 })).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = reserve(&app, "x", json!({ "sku": "NO-SUCH-SKU", "qty": 1 })).await;
    assert_eq!(
        (s, b["type"].clone()),
        (
            StatusCode::NOT_FOUND,
            json!("https://flashgate.dev/problems/unknown-sku")
        )
    );
}

async fn adjustments_never_leave_fewer_units_than_held(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("ADJ", 5).await;
    let (s, _) = reserve(&app, "a", json!({ "sku": "ADJ", "qty": 4 })).await;
    assert_eq!(s, StatusCode::CREATED);
    let shrink = |delta: i64| json!({ "delta": delta, "reason": "shrinkage" });
    let r = app.adjust("ADJ", "default", shrink(-2)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "insufficient-stock")
    );
    let r = app.adjust("ADJ", "default", shrink(-1)).await;
    assert_eq!(
        (r.status, r.body["on_hand"].clone()),
        (StatusCode::OK, json!(4))
    );
    let r = app
        .set_stock("ADJ", "default", json!({ "on_hand": 3 }))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "insufficient-stock")
    );
    let r = app.adjust("ADJ", "nowhere", shrink(1)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

async fn a_stale_if_match_is_refused_with_412(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("OCC", 5).await;
    let view = app.view("OCC").await;
    let etag = view.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", view.body["version"]));
    reserve(&app, "a", json!({ "sku": "OCC", "qty": 1 })).await;
    let path = "/v1/admin/inventory/OCC/locations/default";
    let body = Some(json!({ "on_hand": 9 }).to_string());
    let stale = app
        .send(
            Method::PUT,
            path,
            Some(&admin_token()),
            &[("if-match", &etag)],
            body.clone(),
        )
        .await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::PRECONDITION_FAILED, "precondition-failed")
    );
    let current = format!("\"{}\"", stale.body["version"]);
    let ok = app
        .send(
            Method::PUT,
            path,
            Some(&admin_token()),
            &[("if-match", &current)],
            body,
        )
        .await;
    assert_eq!(
        (
            ok.status,
            ok.body["on_hand"].clone(),
            ok.body["reserved"].clone()
        ),
        (StatusCode::OK, json!(9), json!(1))
    );
}

on_both_topologies!(
    without_a_location_the_one_with_most_available_serves,
    safety_stock_is_never_sold_and_statuses_follow_availability,
    backorders_are_held_up_to_the_limit,
    sale_windows_refuse_early_and_late_shoppers,
    adjustments_never_leave_fewer_units_than_held,
    a_stale_if_match_is_refused_with_412,
);
