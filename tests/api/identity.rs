//! Tokens from an identity provider: RS256 and ES256 verified against a
//! JWKS served on loopback or read from a file, `iss` and `aud` checked,
//! keys rotated without a restart; HS256 tokens keep working beside them.

use std::{
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, extract::State, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, spawn_app_with, test_settings, token, unique_prefix};

const ISSUER: &str = "https://idp.flashgate.test/";
const AUDIENCE: &str = "flashgate";

/// A signing key and its public half as a JWK.
struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    /// A 2048-bit RSA key made by `openssl` (PKCS#1 DER for signing).
    fn rsa(kid: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flashgate-jwks-{}", unique_prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("key.pem");
        let der = dir.join("key.der");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        run(&["genrsa", "-traditional", "-out", &path(&pem), "2048"]);
        run(&[
            "rsa",
            "-in",
            &path(&pem),
            "-traditional",
            "-outform",
            "DER",
            "-out",
            &path(&der),
        ]);
        let modulus = run(&["rsa", "-in", &path(&pem), "-noout", "-modulus"]);
        let hex = modulus.trim().strip_prefix("Modulus=").unwrap();
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let encoding = EncodingKey::from_rsa_der(&std::fs::read(&der).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        Self {
            kid: kid.into(),
            algorithm: Algorithm::RS256,
            encoding,
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": URL_SAFE_NO_PAD.encode(n), "e": "AQAB"}),
        }
    }

    /// A P-256 key made by rcgen (PKCS#8 DER for signing).
    fn ec(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!((point.len(), point[0]), (65, 4), "an uncompressed point");
        Self {
            kid: kid.into(),
            algorithm: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            // No `alg`: the key type and curve say ES256.
            jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256",
                        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                        "y": URL_SAFE_NO_PAD.encode(&point[33..])}),
        }
    }

    /// A token for `sub` with these extra claims over the standard ones.
    fn token(&self, sub: &str, claims: Value) -> String {
        let now = flashgate::clock::now_ms() / 1000;
        let mut body =
            json!({"sub": sub, "exp": now + 300, "iat": now, "iss": ISSUER, "aud": AUDIENCE});
        for (k, v) in claims.as_object().unwrap() {
            body[k] = v.clone();
        }
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &body, &self.encoding).unwrap()
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// A JWKS endpoint on loopback whose document the test can swap.
#[derive(Clone)]
struct Provider {
    document: Arc<Mutex<String>>,
    url: String,
}

impl Provider {
    async fn start(document: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let document = Arc::new(Mutex::new(document));
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let app = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|State(d): State<Arc<Mutex<String>>>| async move { d.lock().unwrap().clone() }),
            )
            .with_state(document.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { document, url }
    }

    fn serve(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }
}

/// The status a reservation made with `token` gets (201: the token passed).
async fn reserve_with(app: &TestApp, token: &str) -> StatusCode {
    app.reserve(token, json!({"sku": "IDP-1", "qty": 1}), None)
        .await
        .status
}

/// Waits until a reservation with `token` gets `want`.
async fn eventually(app: &TestApp, token: &str, want: StatusCode, within: Duration) {
    let started = Instant::now();
    loop {
        let got = reserve_with(app, token).await;
        if got == want {
            return;
        }
        assert!(started.elapsed() < within, "still {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_from_a_jwks_url_pass_and_a_rotation_needs_no_restart() {
    let (rsa, ec) = (SigningKey::rsa("rsa-1"), SigningKey::ec("ec-1"));
    let provider = Provider::start(jwks(&[&rsa, &ec])).await;
    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.auth.jwks_url = Some(provider.url.clone());
    settings.auth.issuer = Some(ISSUER.into());
    settings.auth.audience = Some(AUDIENCE.into());
    settings.auth.jwks_refresh_seconds = 3600;
    let app = spawn_app_with(settings).await;
    app.stock("IDP-1", 1_000).await;

    assert_eq!(
        reserve_with(&app, &rsa.token("idp-rsa", json!({}))).await,
        StatusCode::CREATED
    );
    assert_eq!(
        reserve_with(&app, &ec.token("idp-ec", json!({}))).await,
        StatusCode::CREATED
    );
    // The gateway's own HS256 tokens still pass.
    assert_eq!(
        reserve_with(&app, &token("hs-shopper")).await,
        StatusCode::CREATED
    );
    // A provider token's scope opens the admin endpoints as an HS256 one does.
    let admin = rsa.token("idp-admin", json!({"scope": "inventory:admin"}));
    let r = app
        .send(
            reqwest::Method::GET,
            "/v1/admin/events?limit=1",
            Some(&admin),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // Signed by a key not in the set (under a kid that is), or with the
    // wrong issuer or audience, or with neither: 401.
    let impostor = SigningKey::ec("ec-1");
    let refused = [
        impostor.token("idp-x", json!({})),
        SigningKey::ec("ec-9").token("idp-x", json!({})),
        rsa.token("idp-x", json!({"iss": "https://elsewhere.test/"})),
        rsa.token("idp-x", json!({"aud": "another-service"})),
        ec.token(
            "idp-x",
            json!({"exp": flashgate::clock::now_ms() / 1000 - 120}),
        ),
    ];
    for t in &refused {
        assert_eq!(reserve_with(&app, t).await, StatusCode::UNAUTHORIZED);
    }

    // The provider rotates: new tokens carry a new kid, which makes the
    // gateway read the set again (at most every 5 s), without a restart.
    let next = SigningKey::rsa("rsa-2");
    provider.serve(jwks(&[&next, &ec]));
    let rotated = next.token("idp-rotated", json!({}));
    eventually(&app, &rotated, StatusCode::CREATED, Duration::from_secs(15)).await;
    // The retired key's tokens no longer pass.
    assert_eq!(
        reserve_with(&app, &rsa.token("idp-rsa", json!({}))).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_rewritten_jwks_file_is_picked_up_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("flashgate-jwks-file-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    let first = SigningKey::ec("first");
    std::fs::write(&file, jwks(&[&first])).unwrap();
    let mut settings = test_settings(Backend::Standalone, &unique_prefix());
    settings.auth.jwks_file = Some(file.clone());
    settings.auth.jwks_refresh_seconds = 1;
    let app = spawn_app_with(settings.clone()).await;
    app.stock("IDP-1", 100).await;
    assert_eq!(
        reserve_with(&app, &first.token("file-1", json!({}))).await,
        StatusCode::CREATED
    );

    let second = SigningKey::ec("second");
    std::fs::write(&file, jwks(&[&second])).unwrap();
    eventually(
        &app,
        &second.token("file-2", json!({})),
        StatusCode::CREATED,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        reserve_with(&app, &first.token("file-1", json!({}))).await,
        StatusCode::UNAUTHORIZED
    );

    // A file that is not a key set does not start a gateway.
    std::fs::write(&file, "not json").unwrap();
    assert!(flashgate::app::App::build(settings).await.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
