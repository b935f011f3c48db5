//! Bad input is refused at the edge: a 4xx problem, and Redis untouched.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Backend, admin_token, keys_under, spawn_app, token};
use crate::on_both_topologies;

/// What to send (name, method, path, token, headers, body) and the status expected.
type Case<'a> = (
    &'a str,
    Method,
    String,
    Option<&'a str>,
    Vec<(&'a str, &'a str)>,
    Option<String>,
    u16,
);

async fn invalid_requests_get_4xx_problems_and_leave_redis_untouched(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = keys_under(backend, &app.prefix);
    let t = token("fuzzer");
    let admin = admin_token();
    let huge = format!(r#"{{"sku":"A","qty":1,"pad":"{}"}}"#, "x".repeat(20_000));
    let long_key = "k".repeat(129);
    let cases: Vec<Case> = vec![
        ("brace in sku", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(json!({"sku":"A{p1}","qty":1}).to_string()), 422),
        ("closing brace", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(json!({"sku":"A}","qty":1}).to_string()), 422),
        ("empty sku", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(json!({"sku":"","qty":1}).to_string()), 422),
        ("long sku", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(json!({"sku":"S".repeat(65),"qty":1}).to_string()), 422),
        ("bar in location", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(json!({"sku":"A","qty":1,"location":"x|y"}).to_string()), 422),
        ("brace in location", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(json!({"sku":"A","qty":1,"location":"{x}"}).to_string()), 422),
        ("qty 0", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(json!({"sku":"A","qty":0}).to_string()), 422),
        ("qty 11", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(json!({"sku":"A","qty":11}).to_string()), 422),
        ("negative qty", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(json!({"sku":"A","qty":-1}).to_string()), 422),
        ("fractional qty", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(r#"{"sku":"A","qty":1.5}"#.into()), 422),
        ("string qty", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(r#"{"sku":"A","qty":"1"}"#.into()), 422),
        ("enormous qty", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(r#"{"sku":"A","qty":99999999999999999999}"#.into()), 422),
        ("missing qty", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(r#"{"sku":"A"}"#.into()), 422),
        ("unknown field", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(r#"{"sku":"A","qty":1,"price":0}"#.into()), 422),
        ("malformed json", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(r#"{"sku":"A","#.into()), 400),
        ("not an object", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some("[1,2]".into()), 422),
        ("array that fits the body", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(r#"["A",1]"#.into()), 422),
        ("bare number body", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some("7".into()), 422),
        ("admin stock as an array", Method::PUT, "/v1/admin/inventory/A/locations/default".into(), Some(&admin), vec![], Some("[1]".into()), 422),
        ("admin policy as an array", Method::PUT, "/v1/admin/inventory/A".into(), Some(&admin), vec![], Some("[null]".into()), 422),
        ("admin adjustment as an array", Method::POST, "/v1/admin/inventory/A/locations/default/adjustments".into(), Some(&admin), vec![], Some(r#"[1,"receipt"]"#.into()), 422),
        ("invalid utf-8 in path", Method::GET, "/v1/inventory/%ff".into(), None, vec![], None, 400),
        ("invalid utf-8 in reservation path", Method::GET, "/v1/reservations/%c3%28".into(), Some(&t), vec![], None, 400),
        ("admin invalid utf-8 in location", Method::PUT, "/v1/admin/inventory/A/locations/%ff".into(), Some(&admin), vec![], Some(json!({"on_hand":1}).to_string()), 400),
        ("empty body", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(String::new()), 400),
        ("oversized body", Method::POST, "/v1/reservations".into(), Some(&t), vec![], Some(huge), 413),
        ("long idempotency key", Method::POST, "/v1/reservations".into(), Some(&t), vec![("idempotency-key", &long_key)], Some(json!({"sku":"A","qty":1}).to_string()), 422),
        ("brace in path sku", Method::GET, "/v1/inventory/A%7Bp1%7D".into(), None, vec![], None, 422),
        ("admin brace in location", Method::PUT, "/v1/admin/inventory/A/locations/%7Bx%7D".into(), Some(&admin), vec![], Some(json!({"on_hand":1}).to_string()), 422),
        ("admin negative on_hand", Method::PUT, "/v1/admin/inventory/A/locations/default".into(), Some(&admin), vec![], Some(json!({"on_hand":-1}).to_string()), 422),
        ("admin unknown field", Method::PUT, "/v1/admin/inventory/A/locations/default".into(), Some(&admin), vec![], Some(json!({"on_hand":1,"reserved":0}).to_string()), 422),
        ("admin bad if-match", Method::PUT, "/v1/admin/inventory/A/locations/default".into(), Some(&admin), vec![("if-match", "seven")], Some(json!({"on_hand":1}).to_string()), 422),
        ("admin bad reason", Method::POST, "/v1/admin/inventory/A/locations/default/adjustments".into(), Some(&admin), vec![], Some(json!({"delta":1,"reason":"theft"}).to_string()), 422),
        ("admin zero delta", Method::POST, "/v1/admin/inventory/A/locations/default/adjustments".into(), Some(&admin), vec![], Some(json!({"delta":0,"reason":"receipt"}).to_string()), 422),
        ("admin policy ttl 0", Method::PUT, "/v1/admin/inventory/A".into(), Some(&admin), vec![], Some(json!({"reservation_ttl_seconds":0}).to_string()), 422),
        ("admin policy bad time", Method::PUT, "/v1/admin/inventory/A".into(), Some(&admin), vec![], Some(json!({"sale_opens_at":"tomorrow"}).to_string()), 422),
        ("admin window backwards", Method::PUT, "/v1/admin/inventory/A".into(), Some(&admin), vec![], Some(json!({"sale_opens_at":"2030-01-02T00:00:00Z","sale_closes_at":"2030-01-01T00:00:00Z"}).to_string()), 422),
        ("unknown route", Method::GET, "/v1/nothing".into(), None, vec![], None, 404),
        ("wrong method", Method::DELETE, "/v1/reservations".into(), Some(&t), vec![], None, 405),
    ];
    for (what, method, path, token, headers, body, status) in cases {
        let r = app.send(method, &path, token, &headers, body).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {:?}", r.body);
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
        assert_eq!(r.body["status"], status, "{what}");
        assert!(r.header("x-request-id").is_some(), "{what}");
        assert_eq!(
            r.body["request_id"].as_str(),
            r.header("x-request-id"),
            "{what}"
        );
    }
    assert_eq!(
        keys_under(backend, &app.prefix),
        before,
        "an invalid request reached Redis"
    );
}

async fn problems_carry_the_request_id_the_client_sent(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app
        .send(
            Method::GET,
            "/v1/inventory/NOPE",
            None,
            &[("x-request-id", "trace-123")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.body,
        json!({
            "type": "https://flashgate.dev/problems/unknown-sku",
            "title": "Unknown sku",
            "status": 404,
            "detail": "unknown sku",
            "request_id": "trace-123",
        })
    );
    assert_eq!(r.header("x-request-id"), Some("trace-123"));
    let generated = app
        .send(
            Method::GET,
            "/v1/inventory/NOPE",
            None,
            &[("x-request-id", "bad id{}")],
            None,
        )
        .await;
    assert_ne!(generated.header("x-request-id"), Some("bad id{}"));
    assert_eq!(
        generated.body["request_id"],
        generated.header("x-request-id").unwrap()
    );
}

async fn oversized_request_heads_get_a_431_problem(backend: Backend) {
    let app = spawn_app(backend).await;
    let names: Vec<String> = (0..150).map(|i| format!("x-extra-{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let big = "b".repeat(40 * 1024);
    for (what, headers) in [
        ("150 fields", many),
        ("40 KiB", vec![("x-big", big.as_str())]),
    ] {
        let r = app
            .send(Method::GET, "/v1/inventory/A", None, &headers, None)
            .await;
        assert_eq!(r.status.as_u16(), 431, "{what}: {:?}", r.body);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.code(), "header-fields-too-large", "{what}");
        assert_eq!(r.body["request_id"].as_str(), r.header("x-request-id"));
    }
    // Just under the limits: an ordinary answer.
    let fine: Vec<(&str, &str)> = names[..90].iter().map(|n| (n.as_str(), "1")).collect();
    let r = app
        .send(Method::GET, "/v1/inventory/A", None, &fine, None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "unknown-sku");
}

on_both_topologies!(
    invalid_requests_get_4xx_problems_and_leave_redis_untouched,
    problems_carry_the_request_id_the_client_sent,
    oversized_request_heads_get_a_431_problem,
);
