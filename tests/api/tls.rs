//! TLS to Redis (standalone and a cluster, `rediss://`) and to Postgres
//! (`sslmode=require`), against servers of the test's own that speak TLS
//! only, with certificates the test makes: a reservation goes through end
//! to end, and a gateway that does not trust the CA does not start.

use std::path::Path;

use flashgate_dev::devstack::{self, DevStack, Durability, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, TestApp, spawn_app_with, test_settings, token, unique_prefix};

/// A CA and a certificate it signed for 127.0.0.1 and localhost, as PEM
/// files in `dir`.
fn certificates(dir: &Path) -> ServerTls {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "flashgate test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "flashgate test server");
    let cert = params.signed_by(&key, &*ca).unwrap();
    let tls = ServerTls {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        ca: dir.join("ca.crt"),
    };
    std::fs::write(&tls.cert, cert.pem()).unwrap();
    std::fs::write(&tls.key, key.serialize_pem()).unwrap();
    std::fs::write(&tls.ca, ca.pem()).unwrap();
    tls
}

/// Makes a hold through a gateway on `settings` and reads it back; the
/// gateway keeps running while the caller holds it.
async fn a_reservation_goes_through(settings: flashgate::config::Settings) -> TestApp {
    let app = spawn_app_with(settings).await;
    app.stock("TLS-1", 10).await;
    let r = app
        .reserve(
            &token("tls-shopper"),
            json!({"sku": "TLS-1", "qty": 1}),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let view = app.view("TLS-1").await;
    assert_eq!(view.body["reserved"], 1, "{:?}", view.body);
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_standalone_and_cluster() {
    let mut stack = DevStack::create("tls-redis").unwrap();
    let tls = certificates(stack.dir());
    stack.with_tls(tls.clone());
    let standalone = stack.redis().unwrap();
    let cluster = stack.redis_cluster(3).unwrap();

    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.redis.url = format!("rediss://127.0.0.1:{standalone}").into();
    settings.redis.tls_ca_file = Some(tls.ca.clone());
    a_reservation_goes_through(settings.clone()).await;

    let mut clustered = test_settings(Backend::Cluster, &unique_prefix());
    clustered.redis.url = devstack::cluster_url(&cluster)
        .replacen("redis-cluster://", "rediss-cluster://", 1)
        .into();
    clustered.redis.tls_ca_file = Some(tls.ca.clone());
    a_reservation_goes_through(clustered).await;

    // Without the CA the server's certificate is not trusted: no start.
    settings.redis.tls_ca_file = None;
    settings.redis.connect_timeout_ms = 1_000;
    let refused = flashgate::app::App::build(settings).await;
    assert!(refused.is_err(), "a gateway trusted an unknown CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_sslmode_require() {
    let mut stack = DevStack::create("tls-postgres").unwrap();
    let tls = certificates(stack.dir());
    stack.with_tls(tls.clone());
    let port = stack.postgres(Durability::Throwaway).unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{port}/flashgate");

    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.postgres.url = format!("{url}?sslmode=require").into();
    settings.postgres.tls_ca_file = Some(tls.ca.clone());
    let _app = a_reservation_goes_through(settings.clone()).await;
    let over_tls = devstack::psql(
        port,
        "flashgate",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE s.ssl AND a.application_name = 'flashgate'",
    );
    assert!(
        over_tls.is_some_and(|n| n.trim() != "0"),
        "no flashgate connection used TLS"
    );

    // The server takes TLS only: a URL without sslmode stays plaintext
    // and is refused; without the CA the certificate is not trusted.
    for (what, url, ca) in [
        ("plaintext", url.clone(), Some(tls.ca.clone())),
        ("an unknown CA", format!("{url}?sslmode=require"), None),
    ] {
        let mut s = settings.clone();
        s.postgres.url = url.into();
        s.postgres.tls_ca_file = ca;
        s.postgres.connect_timeout_ms = 1_000;
        let store = flashgate::journal::store::Store::new(&s.postgres).unwrap();
        assert!(
            store.pool().get().await.is_err(),
            "{what}: the connection was accepted"
        );
    }
}
