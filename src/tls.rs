//! Client TLS for Redis and Postgres (rustls with the ring provider).
//!
//! A `rediss://` or `rediss-cluster://` URL, or a `postgres.url` with
//! `sslmode=require` (or `prefer`), connects over TLS. Servers' certificates
//! are always verified, names included (like libpq's `verify-full`): against
//! the CAs in `redis.tls_ca_file` / `postgres.tls_ca_file` when set, else
//! against the system's roots. A Postgres URL without `sslmode` stays
//! plaintext, as before TLS was supported (`tokio-postgres` would otherwise
//! default to `prefer`, and fail against a server whose certificate is not
//! trusted).

use std::{path::Path, sync::Arc};

use anyhow::Context;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};

/// A client configuration trusting the CAs of `ca_file` (PEM), or the
/// system's roots when `None`.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "the CA file {} holds no certificate",
                path.display()
            );
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("a CA of {} is not usable", path.display()))?;
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            for cert in system.certs {
                // A system root rustls cannot parse is skipped, as every
                // rustls client does; the others still verify.
                let _ = roots.add(cert);
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "no system CA certificates found; set a tls_ca_file"
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether a Postgres URL (or key-value string) names an `sslmode`.
pub fn names_sslmode(url: &str) -> bool {
    url.contains("sslmode=")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sslmode_is_found_in_urls_and_key_value_strings() {
        assert!(names_sslmode("postgres://h/db?sslmode=require"));
        assert!(names_sslmode(
            "postgres://h/db?application_name=x&sslmode=disable"
        ));
        assert!(names_sslmode("host=h sslmode=require"));
        assert!(!names_sslmode("postgres://h/db"));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("flashgate-empty-ca-{}", std::process::id()));
        std::fs::write(&path, "not a certificate").unwrap();
        let err = client_config(Some(&path)).unwrap_err();
        assert!(format!("{err:#}").contains("no certificate"), "{err:#}");
        let _ = std::fs::remove_file(&path);
    }
}
