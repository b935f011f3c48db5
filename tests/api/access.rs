//! Nobody touches another account's reservation; shoppers stay out of admin.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Backend, TEST_SECRET, admin_token, spawn_app, token};
use crate::on_both_topologies;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn another_account_gets_404_for_every_reservation_action(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("ACCESS-1", 5).await;
    let owner = token("owner");
    let r = app
        .reserve(&owner, json!({ "sku": "ACCESS-1", "qty": 1 }), None)
        .await;
    let id = r.body["reservation_id"].as_str().unwrap().to_owned();
    let intruder = token("intruder");
    for action in [None, Some("confirm"), Some("release")] {
        let r = app.reservation(&intruder, &id, action).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{action:?}");
        assert_eq!(r.code(), "reservation-not-found");
    }
    // Nothing changed, and the owner and an admin still read it.
    assert_eq!(
        app.reservation(&owner, &id, None).await.body["status"],
        "held"
    );
    let admin = app.reservation(&admin_token(), &id, None).await;
    assert_eq!(admin.status, StatusCode::OK);
    assert_eq!(admin.body["account_id"], "owner");
    // Unknown and malformed ids look the same as someone else's.
    for bogus in ["nope", "1.00000000000000000000000000000000.ACCESS-1"] {
        assert_eq!(
            app.reservation(&owner, bogus, None).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

async fn a_shopper_token_on_an_admin_route_is_forbidden(backend: Backend) {
    let app = spawn_app(backend).await;
    let shopper = token("shopper");
    let r = app
        .send(
            Method::PUT,
            "/v1/admin/inventory/ACCESS-2/locations/default",
            Some(&shopper),
            &[],
            Some(json!({ "on_hand": 5 }).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "forbidden");
    assert_eq!(app.view("ACCESS-2").await.status, StatusCode::NOT_FOUND);
}

async fn missing_expired_foreign_or_unsigned_tokens_get_401(backend: Backend) {
    let app = spawn_app(backend).await;
    app.stock("ACCESS-3", 5).await;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let claims =
        URL_SAFE_NO_PAD.encode(json!({ "sub": "mallory", "exp": now() + 600 }).to_string());
    let unsigned = format!("{header}.{claims}.");
    let expired = signed(
        Algorithm::HS256,
        TEST_SECRET,
        json!({ "sub": "a", "exp": now() - 120 }),
    );
    let foreign = signed(
        Algorithm::HS256,
        "some-other-secret-xyz",
        json!({ "sub": "a", "exp": now() + 600 }),
    );
    let other_alg = signed(
        Algorithm::HS384,
        TEST_SECRET,
        json!({ "sub": "a", "exp": now() + 600 }),
    );
    let no_exp = signed(Algorithm::HS256, TEST_SECRET, json!({ "sub": "a" }));
    let bad_sub = signed(
        Algorithm::HS256,
        TEST_SECRET,
        json!({ "sub": "a{b}", "exp": now() + 600 }),
    );
    let not_yet = signed(
        Algorithm::HS256,
        TEST_SECRET,
        json!({ "sub": "a", "exp": now() + 600, "nbf": now() + 300 }),
    );
    let year_3000 = signed(
        Algorithm::HS256,
        TEST_SECRET,
        json!({ "sub": "a", "exp": 32_503_680_000_u64 }),
    );
    let two_days = signed(
        Algorithm::HS256,
        TEST_SECRET,
        json!({ "sub": "a", "exp": now() + 600, "iat": now() - 2 * 86_400 }),
    );
    let body = json!({ "sku": "ACCESS-3", "qty": 1 });
    for (what, t) in [
        ("nbf ahead", Some(not_yet)),
        ("lives until 3000", Some(year_3000)),
        ("lives two days", Some(two_days)),
        ("missing", None),
        ("expired", Some(expired)),
        ("foreign key", Some(foreign)),
        ("alg none", Some(unsigned)),
        ("HS384", Some(other_alg)),
        ("no exp", Some(no_exp)),
        ("bad sub", Some(bad_sub)),
        ("garbage", Some("not.a.token".to_owned())),
    ] {
        let r = app
            .send(
                Method::POST,
                "/v1/reservations",
                t.as_deref(),
                &[],
                Some(body.to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(r.code(), "unauthorized", "{what}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    assert_eq!(app.view("ACCESS-3").await.body["reserved"], 0);
    // Within the default lifetime (a day), with nbf passed: accepted.
    let fine = signed(
        Algorithm::HS256,
        TEST_SECRET,
        json!({ "sub": "a", "exp": now() + 3600, "iat": now(), "nbf": now() - 1 }),
    );
    let r = app.reserve(&fine, body, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

on_both_topologies!(
    another_account_gets_404_for_every_reservation_action,
    a_shopper_token_on_an_admin_route_is_forbidden,
    missing_expired_foreign_or_unsigned_tokens_get_401,
);

/// A token of the test secret for `account` with this `scope` claim.
fn scoped(account: &str, scope: &str) -> String {
    signed(
        Algorithm::HS256,
        TEST_SECRET,
        json!({"sub": account, "exp": now() + 600, "scope": scope}),
    )
}

async fn scoped_tokens_reach_only_what_their_scopes_grant(backend: Backend) {
    let app = spawn_app(backend).await;
    for location in ["east", "west"] {
        let r = app
            .set_stock("SCOPE-1", location, json!({"on_hand": 10}))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let shopper = token("scoped-shopper");
    let r = app
        .reserve(&shopper, json!({"sku": "SCOPE-1", "qty": 1}), None)
        .await;
    let held = r.body["reservation_id"].as_str().unwrap().to_owned();

    // A location's stock keeper writes there and nowhere else.
    let east = scoped("keeper-east", "openid inventory:write:location:east");
    let put = |location: &str| format!("/v1/admin/inventory/SCOPE-1/locations/{location}");
    let body = Some(json!({"on_hand": 12}).to_string());
    let r = app
        .send(Method::PUT, &put("east"), Some(&east), &[], body.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .send(Method::PUT, &put("west"), Some(&east), &[], body.clone())
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let adjust = |location: &str| format!("{}/adjustments", put(location));
    let delta = Some(json!({"delta": -1, "reason": "shrinkage"}).to_string());
    let r = app
        .send(
            Method::POST,
            &adjust("east"),
            Some(&east),
            &[],
            delta.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .send(
            Method::POST,
            &adjust("west"),
            Some(&east),
            &[],
            delta.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // ...and is no operator otherwise.
    let policy = Some(json!({"max_per_account": 1}).to_string());
    let r = app
        .send(
            Method::PUT,
            "/v1/admin/inventory/SCOPE-1",
            Some(&east),
            &[],
            policy.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .send(
            Method::GET,
            "/v1/admin/inventory/SCOPE-1",
            Some(&east),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A read-only token reads every admin GET and any reservation, and
    // writes nothing.
    let reader = scoped("auditor", "inventory:read");
    for path in [
        "/v1/admin/inventory/SCOPE-1",
        "/v1/admin/events?limit=5",
        "/v1/admin/reservations?sku=SCOPE-1",
        "/v1/admin/inventory?status=IN_STOCK",
        "/v1/admin/webhooks",
        &format!("/v1/reservations/{held}"),
    ] {
        let r = app.send(Method::GET, path, Some(&reader), &[], None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    }
    for (method, path, body) in [
        (Method::PUT, put("east"), body.clone()),
        (Method::POST, adjust("west"), delta.clone()),
        (
            Method::PUT,
            "/v1/admin/inventory/SCOPE-1".to_owned(),
            policy.clone(),
        ),
        (
            Method::POST,
            "/v1/admin/webhooks".to_owned(),
            Some(json!({"url": "https://hooks.example.com/", "events": ["stock.out"]}).to_string()),
        ),
    ] {
        let r = app
            .send(method.clone(), &path, Some(&reader), &[], body)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    // A read token cannot act on another's reservation either.
    let r = app.reservation(&reader, &held, Some("release")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Shoppers still reach none of it.
    let r = app
        .send(Method::GET, "/v1/admin/events", Some(&shopper), &[], None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .send(Method::PUT, &put("east"), Some(&shopper), &[], body)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The admin scope still opens everything.
    let r = app
        .send(
            Method::PUT,
            "/v1/admin/inventory/SCOPE-1",
            Some(&admin_token()),
            &[],
            policy,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Every stock change is in the SKU's history with who made it and
    // through which request, newest first.
    let traced = [("x-request-id", "trace-east-1")];
    let r = app
        .send(
            Method::PUT,
            &put("east"),
            Some(&east),
            &traced,
            Some(json!({"on_hand": 20}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let started = std::time::Instant::now();
    let changes = loop {
        let r = app
            .send(
                Method::GET,
                "/v1/admin/inventory/SCOPE-1/history?limit=2",
                Some(&reader),
                &[],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        if r.body["changes"][0]["request_id"] == "trace-east-1" {
            break r.body;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            r.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let newest = &changes["changes"][0];
    assert_eq!(
        (newest["kind"].as_str(), newest["location"].as_str()),
        (Some("stock_set"), Some("east"))
    );
    assert_eq!(
        (newest["actor"].as_str(), newest["delta"].as_i64()),
        (Some("keeper-east"), Some(9))
    );
    // The admin's policy change before it (a policy change keeps the
    // version, and sorts after the stock change that made it), then the
    // page ends at the limit.
    assert_eq!(changes["changes"][1]["kind"], "policy");
    assert_eq!(changes["changes"][1]["actor"], "ops-admin");
    assert_eq!(changes["changes"][1]["location"], serde_json::Value::Null);
    let next = changes["next"].as_str().unwrap();
    let r = app
        .send(
            Method::GET,
            &format!("/v1/admin/inventory/SCOPE-1/history?cursor={next}"),
            Some(&reader),
            &[],
            None,
        )
        .await;
    let older = r.body["changes"].as_array().unwrap();
    // The keeper's adjustment and first write, and the admin's two first
    // stockings.
    let actors: Vec<&str> = older.iter().map(|c| c["actor"].as_str().unwrap()).collect();
    assert_eq!(
        actors,
        ["keeper-east", "keeper-east", "ops-admin", "ops-admin"],
        "{older:?}"
    );
    assert_eq!(older[0]["kind"], "adjusted");
    // The change feed names the actor too.
    let r = app
        .send(
            Method::GET,
            "/v1/admin/events?sku=SCOPE-1&limit=1000",
            Some(&reader),
            &[],
            None,
        )
        .await;
    let events = r.body["events"].as_array().unwrap();
    let traced = events.iter().find(|e| e["request_id"] == "trace-east-1");
    assert_eq!(traced.unwrap()["actor"], "keeper-east");
}

on_both_topologies!(scoped_tokens_reach_only_what_their_scopes_grant);

async fn a_seller_reaches_only_its_own_skus(backend: Backend) {
    let app = spawn_app(backend).await;
    for sku in ["SELL-A", "SELL-B"] {
        app.stock(sku, 10).await;
    }
    for (sku, seller) in [("SELL-A", "acme"), ("SELL-B", "other")] {
        let r = app.policy(sku, json!({ "seller": seller })).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["seller"], seller);
    }
    let auth = flashgate::auth::Auth::new(TEST_SECRET);
    let staff = flashgate::inventory::AccountId::parse("acme-staff").unwrap();
    let acme = flashgate::inventory::SellerId::parse("acme").unwrap();
    let seller = auth.issue_with(&staff, Some("inventory:seller"), Some(&acme), 3600);
    let no_claim = auth.issue_with(&staff, Some("inventory:seller"), None, 3600);
    let send = |method: Method, path: String, t: String, body: Option<serde_json::Value>| {
        let app = &app;
        async move {
            app.send(method, &path, Some(&t), &[], body.map(|b| b.to_string()))
                .await
        }
    };

    // Reads: its own SKU, nothing of another's.
    let r = send(
        Method::GET,
        "/v1/admin/inventory/SELL-A".into(),
        seller.clone(),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["policy"]["seller"], "acme");
    for path in [
        "/v1/admin/inventory/SELL-B",
        "/v1/admin/inventory/SELL-NONE",
        "/v1/admin/inventory/SELL-B/history",
    ] {
        let r = send(Method::GET, path.into(), seller.clone(), None).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "unknown-sku"),
            "{path}"
        );
    }
    let r = send(
        Method::GET,
        "/v1/admin/inventory/SELL-A".into(),
        no_claim,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for path in ["/v1/admin/events", "/v1/admin/webhooks"] {
        let r = send(Method::GET, path.into(), seller.clone(), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }

    // Writes: stock, adjustments and policy of its own SKU only; never the
    // seller field.
    let stock = json!({ "on_hand": 12 });
    let r = send(
        Method::PUT,
        "/v1/admin/inventory/SELL-A/locations/default".into(),
        seller.clone(),
        Some(stock.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = send(
        Method::PUT,
        "/v1/admin/inventory/SELL-B/locations/default".into(),
        seller.clone(),
        Some(stock),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let adjust = json!({ "delta": -1, "reason": "shrinkage" });
    let r = send(
        Method::POST,
        "/v1/admin/inventory/SELL-B/locations/default/adjustments".into(),
        seller.clone(),
        Some(adjust),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(
        Method::PUT,
        "/v1/admin/inventory/SELL-A".into(),
        seller.clone(),
        Some(json!({ "max_per_account": 2 })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = send(
        Method::PUT,
        "/v1/admin/inventory/SELL-A".into(),
        seller.clone(),
        Some(json!({ "seller": "acme" })),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send(
        Method::PUT,
        "/v1/admin/inventory/SELL-B".into(),
        seller.clone(),
        Some(json!({ "max_per_account": 2 })),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Holds: it releases its own SKU's, and lists only those.
    let shopper = token("sell-shopper");
    let mut ids = Vec::new();
    for sku in ["SELL-A", "SELL-B"] {
        let r = app
            .reserve(&shopper, json!({ "sku": sku, "qty": 1 }), None)
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        ids.push(r.body["reservation_id"].as_str().unwrap().to_owned());
    }
    let why = json!({ "reason": "seller cancelled" });
    let r = send(
        Method::POST,
        format!("/v1/admin/reservations/{}/release", ids[0]),
        seller.clone(),
        Some(why.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = send(
        Method::POST,
        format!("/v1/admin/reservations/{}/release", ids[1]),
        seller.clone(),
        Some(why),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let started = std::time::Instant::now();
    loop {
        let all = send(
            Method::GET,
            "/v1/admin/reservations".into(),
            admin_token(),
            None,
        )
        .await;
        if all.body["reservations"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            all.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mine = send(
        Method::GET,
        "/v1/admin/reservations".into(),
        seller.clone(),
        None,
    )
    .await;
    let skus: Vec<&str> = mine.body["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["SELL-A"]);
    let started = std::time::Instant::now();
    loop {
        let r = send(
            Method::GET,
            "/v1/admin/inventory?status=IN_STOCK".into(),
            seller.clone(),
            None,
        )
        .await;
        let listed: Vec<&str> = r.body["skus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sku"].as_str().unwrap())
            .collect();
        if listed == ["SELL-A"] {
            break;
        }
        assert!(!listed.contains(&"SELL-B"), "{listed:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{listed:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // An import applies its own SKU's lines; another's fail alone.
    let lines = format!(
        "{}\n{}\n",
        json!({ "sku": "SELL-A", "on_hand": 30 }),
        json!({ "sku": "SELL-B", "on_hand": 30 })
    );
    let r = app
        .http
        .post(app.url("/v1/admin/inventory/import"))
        .bearer_auth(&seller)
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["applied"], 1, "{report}");
    assert_eq!(report["failed"][0]["code"], "unknown-sku");
    assert_eq!(app.view("SELL-B").await.body["on_hand"], 10);

    // The SKU's history shows both policy changes, each with its actor.
    let r = send(
        Method::GET,
        "/v1/admin/inventory/SELL-A/history".into(),
        seller,
        None,
    )
    .await;
    let policies: Vec<(&str, &serde_json::Value)> = r.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "policy")
        .map(|c| (c["actor"].as_str().unwrap(), &c["policy"]))
        .collect();
    assert_eq!(policies.len(), 2, "{:?}", r.body);
    assert_eq!(policies[0].0, "acme-staff");
    assert_eq!(policies[0].1["max_per_account"], 2);
    assert_eq!(policies[1].0, "ops-admin");
    assert_eq!(policies[1].1["seller"], "acme");
}

on_both_topologies!(a_seller_reaches_only_its_own_skus);
