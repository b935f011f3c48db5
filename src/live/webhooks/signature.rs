//! Standard Webhooks signing: `webhook-signature: v1,<base64 HMAC-SHA256>`
//! over `"<webhook-id>.<webhook-timestamp>.<body>"`, keyed by the bytes of
//! the webhook's secret (`whsec_<base64>`).

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The secret's text form starts with this, as Standard Webhooks has it.
const PREFIX: &str = "whsec_";
/// Key bytes of a generated secret.
const GENERATED_BYTES: usize = 32;
/// Key bytes a given secret may have: long enough to be a key, short enough
/// to be one.
const KEY_BYTES_MIN: usize = 24;
const KEY_BYTES_MAX: usize = 64;

/// A webhook's signing key.
pub struct Secret {
    key: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "secret must be \"whsec_\" followed by the base64 of {KEY_BYTES_MIN} to {KEY_BYTES_MAX} bytes"
)]
pub struct BadSecret;

impl Secret {
    /// A new random secret and its text form.
    pub fn generate() -> Result<(Self, String), getrandom::Error> {
        let mut key = vec![0u8; GENERATED_BYTES];
        getrandom::fill(&mut key)?;
        let text = format!("{PREFIX}{}", STANDARD.encode(&key));
        Ok((Self { key }, text))
    }

    pub fn parse(text: &str) -> Result<Self, BadSecret> {
        let encoded = text.strip_prefix(PREFIX).ok_or(BadSecret)?;
        let key = STANDARD.decode(encoded).map_err(|_| BadSecret)?;
        if !(KEY_BYTES_MIN..=KEY_BYTES_MAX).contains(&key.len()) {
            return Err(BadSecret);
        }
        Ok(Self { key })
    }

    /// The `webhook-signature` header value for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC accepts keys of every length")
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_parses_back_to_the_same_key() {
        let (secret, text) = Secret::generate().unwrap();
        assert!(text.starts_with("whsec_"));
        assert_eq!(Secret::parse(&text).unwrap().key, secret.key);
    }

    #[test]
    fn secrets_without_the_prefix_or_of_the_wrong_size_are_refused() {
        assert!(Secret::parse("c2VjcmV0").is_err());
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 8]))).is_err());
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 65]))).is_err());
        assert!(Secret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 24]))).is_ok());
    }

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
