//! An identity provider's signing keys: a JWKS document read from
//! `auth.jwks_file` or fetched from `auth.jwks_url`, for RS256 and ES256
//! tokens.
//!
//! The set in use is swapped whole (readers take an `Arc` of it, never a
//! lock across a verification). It is read again every
//! `auth.jwks_refresh_seconds`, and sooner when a token names a key the set
//! does not hold, as after a rotation, but at most once per
//! `UNKNOWN_KEY_REFRESH_MIN`, so a stream of tokens with made-up `kid`s
//! cannot make the gateway hammer the provider. A read that fails keeps the
//! keys it has, and says so.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock, RwLock},
    time::Duration,
};

use anyhow::Context;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics as names,
    outbound::{self, Outbound, target::Reach},
};

/// Soonest a second read after an unknown key.
const UNKNOWN_KEY_REFRESH_MIN: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const DOCUMENT_BYTES_MAX: usize = 1 << 20;
/// Keys kept from one document at most.
const KEYS_MAX: usize = 100;
/// How long a fetch of `auth.jwks_url` may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Url(String),
}

/// One key that verifies signatures.
struct VerifyingKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys of one JWKS document that flashgate can use.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

impl KeySet {
    /// The usable keys of a JWKS document: signature keys (no `use`, or
    /// `sig`) for RS256, or for ES256 on P-256, whatever else it holds.
    pub fn parse(document: &[u8]) -> anyhow::Result<Self> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(document).context("a JWKS document is {\"keys\": [...]}")?;
        let keys = document
            .keys
            .into_iter()
            // A key of a type this version does not know is skipped, not
            // the whole set.
            .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
            .filter_map(|jwk| usable(&jwk))
            .take(KEYS_MAX)
            .collect();
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that may have signed a token of `algorithm` naming `kid`
    /// (every key of the algorithm when the token names none; keys without
    /// a `kid` match any).
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        algorithm: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.algorithm == algorithm)
            .filter(move |k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .map(|k| &k.key)
    }
}

fn usable(jwk: &Jwk) -> Option<VerifyingKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return None,
    };
    Some(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// The keys in use, and their refreshing.
pub struct Jwks {
    source: Source,
    keys: RwLock<Arc<KeySet>>,
    /// A token named a key the set does not hold.
    unknown: Notify,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl Jwks {
    /// Reads the keys once. A file that cannot be read or parsed is a
    /// start-up error; a URL that does not answer is retried in the
    /// background (RS256/ES256 tokens get 401 until it does).
    pub async fn load(source: Source) -> anyhow::Result<Arc<Self>> {
        let jwks = Arc::new(Self {
            source,
            keys: RwLock::default(),
            unknown: Notify::new(),
            tls: OnceLock::new(),
        });
        match (&jwks.source, jwks.refresh().await) {
            (_, Ok(_)) => {}
            (Source::File(path), Err(e)) => {
                return Err(e.context(format!("reading auth.jwks_file {}", path.display())));
            }
            (Source::Url(url), Err(e)) => tracing::warn!(
                url,
                error = format!("{e:#}"),
                "the JWKS could not be fetched; RS256/ES256 tokens are refused until it is"
            ),
        }
        Ok(jwks)
    }

    /// The keys in use now.
    pub fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A token named a key the set does not hold: read the set again soon.
    pub fn unknown_key(&self) {
        self.unknown.notify_one();
    }

    /// Reads the document and swaps the keys in; how many there are.
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        let document = match &self.source {
            Source::File(path) => {
                let file = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(file))
                    .await
                    .context("reading the JWKS file")?
                    .with_context(|| format!("reading {}", path.display()))?
            }
            Source::Url(url) => self.fetch(url).await?,
        };
        let set = KeySet::parse(&document)?;
        anyhow::ensure!(
            !set.is_empty(),
            "the JWKS holds no RS256 or P-256 ES256 signing key"
        );
        let n = set.len();
        let set = Arc::new(set);
        match self.keys.write() {
            Ok(mut keys) => *keys = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
        metrics::gauge!(names::AUTH_JWKS_KEYS).set(n as f64);
        Ok(n)
    }

    async fn fetch(&self, url: &str) -> anyhow::Result<Vec<u8>> {
        let request = Outbound {
            method: axum::http::Method::GET,
            url,
            headers: vec![("accept", "application/json".to_owned())],
            json: None,
            body_bytes_max: DOCUMENT_BYTES_MAX,
        };
        let tls = || {
            self.tls
                .get_or_init(|| {
                    crate::tls::client_config(None)
                        .map(Arc::new)
                        .map_err(|e| format!("{e:#}"))
                })
                .clone()
        };
        // The operator configured this URL: it may be inside the network.
        let answer = outbound::send(request, Reach::Anywhere, &tls, FETCH_TIMEOUT).await?;
        anyhow::ensure!(
            answer.status == 200,
            "the JWKS URL answered {}",
            answer.status
        );
        let body = answer
            .body
            .with_context(|| format!("the JWKS is over {DOCUMENT_BYTES_MAX} bytes"))?;
        Ok(body.to_vec())
    }

    /// Reads the keys every `every`, and soon after an unknown key, until
    /// `stop`.
    pub async fn run(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(last + every) => {}
                _ = self.unknown.notified() => {
                    // One read per window, however many unknown keys.
                    let soonest = last + UNKNOWN_KEY_REFRESH_MIN;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep_until(soonest) => {}
                    }
                }
            }
            last = Instant::now();
            let outcome = match self.refresh().await {
                Ok(_) => "ok",
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "the JWKS could not be read again; keeping the keys in use"
                    );
                    "error"
                }
            };
            metrics::counter!(names::AUTH_JWKS_REFRESHES_TOTAL, "outcome" => outcome).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 public key (the RFC 7517 example's coordinates).
    const EC_X: &str = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
    const EC_Y: &str = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";

    #[test]
    fn only_signature_keys_for_rs256_and_p256_es256_are_kept() {
        let document = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "ec"},
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "enc", "use": "enc"},
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "es384", "alg": "ES384"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"},
            {"kty": "made-up", "kid": "future"},
        ]});
        let set = KeySet::parse(document.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.candidates(Some("ec"), Algorithm::ES256).count(), 1);
        assert_eq!(set.candidates(None, Algorithm::ES256).count(), 1);
        assert_eq!(set.candidates(Some("other"), Algorithm::ES256).count(), 0);
        assert_eq!(set.candidates(Some("ec"), Algorithm::RS256).count(), 0);
    }

    #[test]
    fn a_document_that_is_not_a_key_set_is_an_error() {
        assert!(KeySet::parse(b"[]").is_err());
        assert!(KeySet::parse(b"{\"keys\": {}}").is_err());
        assert!(KeySet::parse(b"{\"keys\": []}").unwrap().is_empty());
    }
}
