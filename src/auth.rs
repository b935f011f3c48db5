//! Identity: HS256 JWTs whose `sub` is the account and whose `scope` may
//! grant `inventory:admin`.
//!
//! Only HS256 is accepted: a token signed with another algorithm (`none`
//! included) or another key is refused, as is one without `exp`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::inventory::AccountId;

/// The scope that opens the admin endpoints.
pub const ADMIN_SCOPE: &str = "inventory:admin";

/// Clock skew tolerated on `exp` between the token issuer and the gateway.
const EXP_LEEWAY_SECONDS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Shopper,
    Admin,
}

/// Who is calling, once the token checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid or expired token")]
    Invalid,
}

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = EXP_LEEWAY_SECONDS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Checks an `Authorization` header value.
    pub fn verify(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthError::Missing)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        let account = AccountId::parse(&claims.sub).map_err(|_| AuthError::Invalid)?;
        let admin = claims
            .scope
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|scope| scope == ADMIN_SCOPE));
        let role = if admin { Role::Admin } else { Role::Shopper };
        Ok(Caller { account, role })
    }

    /// Signs a token for `account`, valid for `ttl_seconds`.
    pub fn issue(&self, account: &AccountId, role: Role, ttl_seconds: u64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: account.to_string(),
            exp: now + ttl_seconds,
            scope: (role == Role::Admin).then(|| ADMIN_SCOPE.to_owned()),
        };
        // Encoding HS256 claims made of strings and integers cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_with_their_role() {
        let auth = Auth::new("0123456789abcdef0123");
        let acct = AccountId::parse("a-1").unwrap();
        let shopper = auth.issue(&acct, Role::Shopper, 60);
        let admin = auth.issue(&acct, Role::Admin, 60);
        let caller = auth.verify(Some(&format!("Bearer {shopper}"))).unwrap();
        assert_eq!(
            caller,
            Caller {
                account: acct.clone(),
                role: Role::Shopper
            }
        );
        let caller = auth.verify(Some(&format!("Bearer {admin}"))).unwrap();
        assert_eq!(caller.role, Role::Admin);
    }

    #[test]
    fn another_key_or_no_token_is_refused() {
        let acct = AccountId::parse("a-1").unwrap();
        let token = Auth::new("0123456789abcdef0123").issue(&acct, Role::Shopper, 60);
        let other = Auth::new("another-secret-0123456");
        assert_eq!(
            other.verify(Some(&format!("Bearer {token}"))),
            Err(AuthError::Invalid)
        );
        assert_eq!(other.verify(None), Err(AuthError::Missing));
        assert_eq!(other.verify(Some("Basic abc")), Err(AuthError::Missing));
    }
}
