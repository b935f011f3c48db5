//! Identity: JWTs whose `sub` is the account and whose `scope` may grant
//! `inventory:admin`.
//!
//! HS256 tokens are signed with `auth.secret`; RS256 and ES256 tokens by an
//! identity provider whose keys are in `auth.jwks_file` or at
//! `auth.jwks_url` (`jwks`), and carry `auth.issuer` and `auth.audience`
//! when those are set. Any other algorithm (`none` included) or key is
//! refused, as is a token without `exp`, one whose `nbf` is still ahead, and
//! one that lives longer than `auth.max_token_lifetime_seconds` (from its
//! `iat`, or from now when it has none).

pub mod jwks;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::inventory::{AccountId, SellerId};

/// The scope that opens every admin endpoint.
pub const ADMIN_SCOPE: &str = "inventory:admin";
/// The scope that opens every admin `GET` and the change feed.
pub const READ_SCOPE: &str = "inventory:read";
/// `inventory:write:location:<location>`: stock writes and adjustments at
/// that location only.
pub const LOCATION_WRITE_SCOPE_PREFIX: &str = "inventory:write:location:";
/// `inventory:seller` with a `seller` claim: the admin endpoints of the SKUs
/// whose policy names that seller (other SKUs answer 404).
pub const SELLER_SCOPE: &str = "inventory:seller";
/// Location scopes one token may carry at most (the rest are ignored).
const LOCATION_SCOPES_MAX: usize = 64;

/// Clock skew tolerated on `exp`, `nbf` and the lifetime between the token
/// issuer and the gateway.
const LEEWAY_SECONDS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// The seller an `inventory:seller` token acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seller: Option<String>,
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
    /// `Admin` with `inventory:admin`; everyone else is a shopper, whatever
    /// narrower grants they hold.
    pub role: Role,
    pub grants: Grants,
}

/// What a token's `scope` claim (space-separated, as in OAuth) grants
/// beyond a shopper's own reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `inventory:admin`: everything.
    pub admin: bool,
    /// `inventory:read`: every admin `GET`, the change feed, any reservation.
    pub read: bool,
    /// `inventory:write:location:<location>`: stock writes and adjustments
    /// at these locations.
    pub write_locations: Vec<String>,
    /// `inventory:seller` with a valid `seller` claim: the admin endpoints
    /// of that seller's SKUs.
    pub seller: Option<SellerId>,
}

impl Grants {
    pub fn parse(scope: Option<&str>) -> Self {
        Self::parse_with_seller(scope, None)
    }

    /// The grants of a token's `scope` and `seller` claims (a `seller`
    /// claim counts only with the `inventory:seller` scope).
    pub fn parse_with_seller(scope: Option<&str>, seller: Option<&str>) -> Self {
        let mut grants = Self::default();
        for scope in scope.unwrap_or_default().split(' ') {
            if scope == SELLER_SCOPE {
                grants.seller = seller.and_then(|s| SellerId::parse(s).ok());
            } else if scope == ADMIN_SCOPE {
                grants.admin = true;
            } else if scope == READ_SCOPE {
                grants.read = true;
            } else if let Some(location) = scope.strip_prefix(LOCATION_WRITE_SCOPE_PREFIX)
                && !location.is_empty()
                && grants.write_locations.len() < LOCATION_SCOPES_MAX
            {
                grants.write_locations.push(location.to_owned());
            }
        }
        grants
    }

    /// Whether the admin `GET`s are open to this token.
    pub fn reads(&self) -> bool {
        self.admin || self.read
    }

    /// Whether stock at `location` may be written with this token.
    pub fn writes_location(&self, location: &str) -> bool {
        self.admin || self.write_locations.iter().any(|l| l == location)
    }

    /// Whether some location's stock may be written with this token.
    pub fn writes_stock(&self) -> bool {
        self.admin || !self.write_locations.is_empty()
    }

    /// The seller whose SKUs alone this token may reach through the admin
    /// endpoints; `None` for every other token.
    pub fn seller_only(&self) -> Option<&SellerId> {
        if self.admin {
            return None;
        }
        self.seller.as_ref()
    }
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
    /// Longest a token may live, in seconds; `None`: no limit.
    max_lifetime_seconds: Option<u64>,
    /// The identity provider's keys, when configured.
    provider: Option<Provider>,
}

/// RS256/ES256 tokens: the keys and what their claims must say.
struct Provider {
    jwks: Arc<jwks::Jwks>,
    rs256: Validation,
    es256: Validation,
}

/// The checks every token gets, for one algorithm.
fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation
}

fn now_seconds() -> u64 {
    u64::try_from(crate::clock::now_ms() / 1000).unwrap_or_default()
}

impl Auth {
    /// Tokens signed with `secret`, of any lifetime.
    pub fn new(secret: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation: validation(Algorithm::HS256),
            max_lifetime_seconds: None,
            provider: None,
        }
    }

    /// Also accepts RS256 and ES256 tokens signed by a key of `jwks`, with
    /// this `iss` and `aud` when given.
    pub fn with_provider(
        mut self,
        jwks: Arc<jwks::Jwks>,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Self {
        let checks = |algorithm| {
            let mut v = validation(algorithm);
            if let Some(issuer) = issuer {
                v.set_issuer(&[issuer]);
                v.set_required_spec_claims(&["exp", "sub", "iss"]);
            }
            match audience {
                Some(audience) => v.set_audience(&[audience]),
                // Not configured: a token's `aud`, if any, is not checked.
                None => v.validate_aud = false,
            }
            v
        };
        self.provider = Some(Provider {
            jwks,
            rs256: checks(Algorithm::RS256),
            es256: checks(Algorithm::ES256),
        });
        self
    }

    /// The identity provider's keys, when configured (for their refresher).
    pub fn jwks(&self) -> Option<&Arc<jwks::Jwks>> {
        self.provider.as_ref().map(|p| &p.jwks)
    }

    /// The claims of a token that checks out.
    fn claims(&self, token: &str) -> Result<Claims, AuthError> {
        let decode = |key: &DecodingKey, validation: &Validation| {
            jsonwebtoken::decode::<Claims>(token, key, validation).map(|d| d.claims)
        };
        // Without an identity provider only HS256 can pass, and `decode`
        // refuses any other algorithm: the header is not read twice.
        if self.provider.is_none() {
            return decode(&self.decoding, &self.validation).map_err(|_| AuthError::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let (provider, validation) = match (header.alg, &self.provider) {
            (Algorithm::HS256, _) => {
                return decode(&self.decoding, &self.validation).map_err(|_| AuthError::Invalid);
            }
            (Algorithm::RS256, Some(p)) => (p, &p.rs256),
            (Algorithm::ES256, Some(p)) => (p, &p.es256),
            _ => return Err(AuthError::Invalid),
        };
        let keys = provider.jwks.current();
        let mut known = false;
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            known = true;
            if let Ok(claims) = decode(key, validation) {
                return Ok(claims);
            }
        }
        if !known {
            provider.jwks.unknown_key();
        }
        Err(AuthError::Invalid)
    }

    /// Refuses tokens that live longer than `seconds` (0: no limit).
    pub fn with_max_lifetime(mut self, seconds: u64) -> Self {
        self.max_lifetime_seconds = (seconds > 0).then_some(seconds);
        self
    }

    /// Whether a token that expires at `exp` (issued at `iat`, if it says)
    /// lives longer than the limit.
    fn lives_too_long(&self, exp: u64, iat: Option<u64>) -> bool {
        let Some(max) = self.max_lifetime_seconds else {
            return false;
        };
        let from = iat.unwrap_or_else(now_seconds);
        exp.saturating_sub(from) > max + LEEWAY_SECONDS
    }

    /// Checks an `Authorization` header value.
    pub fn verify(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AuthError::Missing)?;
        let claims = self.claims(token)?;
        if self.lives_too_long(claims.exp, claims.iat) {
            return Err(AuthError::Invalid);
        }
        let account = AccountId::parse(&claims.sub).map_err(|_| AuthError::Invalid)?;
        let grants = Grants::parse_with_seller(claims.scope.as_deref(), claims.seller.as_deref());
        let role = if grants.admin {
            Role::Admin
        } else {
            Role::Shopper
        };
        Ok(Caller {
            account,
            role,
            grants,
        })
    }

    /// Signs a token for `account`, valid for `ttl_seconds`.
    pub fn issue(&self, account: &AccountId, role: Role, ttl_seconds: u64) -> String {
        let scope = (role == Role::Admin).then_some(ADMIN_SCOPE);
        self.issue_scoped(account, scope, ttl_seconds)
    }

    /// Signs a token for `account` with this `scope` claim.
    pub fn issue_scoped(
        &self,
        account: &AccountId,
        scope: Option<&str>,
        ttl_seconds: u64,
    ) -> String {
        self.issue_with(account, scope, None, ttl_seconds)
    }

    /// Signs a token for `account` with these `scope` and `seller` claims.
    pub fn issue_with(
        &self,
        account: &AccountId,
        scope: Option<&str>,
        seller: Option<&SellerId>,
        ttl_seconds: u64,
    ) -> String {
        let now = now_seconds();
        let claims = Claims {
            sub: account.to_string(),
            exp: now + ttl_seconds,
            iat: Some(now),
            scope: scope.map(str::to_owned),
            seller: seller.map(SellerId::to_string),
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
                role: Role::Shopper,
                grants: Grants::default(),
            }
        );
        let caller = auth.verify(Some(&format!("Bearer {admin}"))).unwrap();
        assert_eq!(caller.role, Role::Admin);
    }

    #[test]
    fn a_seller_claim_counts_only_with_the_seller_scope() {
        let g = Grants::parse_with_seller(Some("inventory:seller"), Some("acme"));
        assert_eq!(g.seller_only().map(SellerId::as_str), Some("acme"));
        assert!(!g.reads() && !g.writes_stock());
        let without_scope = Grants::parse_with_seller(Some("inventory:read"), Some("acme"));
        assert_eq!(without_scope.seller, None);
        let bad_claim = Grants::parse_with_seller(Some("inventory:seller"), Some("a b"));
        assert_eq!(bad_claim.seller, None);
        let admin =
            Grants::parse_with_seller(Some("inventory:seller inventory:admin"), Some("acme"));
        assert_eq!(admin.seller_only(), None);
    }

    #[test]
    fn scopes_grant_reading_and_writing_at_named_locations() {
        let g = Grants::parse(Some(
            "openid inventory:read inventory:write:location:east inventory:write:location:",
        ));
        assert!(g.reads() && !g.admin);
        assert!(g.writes_location("east") && !g.writes_location("west"));
        assert_eq!(g.write_locations, ["east"]);
        let admin = Grants::parse(Some("inventory:admin"));
        assert!(admin.reads() && admin.writes_location("anywhere") && admin.writes_stock());
        let none = Grants::parse(None);
        assert!(!none.reads() && !none.writes_stock());
        // A scope is a whole word: no prefix or suffix tricks.
        assert!(!Grants::parse(Some("inventory:admin2 xinventory:read")).reads());
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

    fn signed(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(b"0123456789abcdef0123");
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        )
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let auth = Auth::new("0123456789abcdef0123");
        let now = now_seconds();
        let early = signed(serde_json::json!({"sub": "a-1", "exp": now + 600, "nbf": now + 300}));
        assert_eq!(auth.verify(Some(&early)), Err(AuthError::Invalid));
        let ready = signed(serde_json::json!({"sub": "a-1", "exp": now + 600, "nbf": now - 1}));
        assert!(auth.verify(Some(&ready)).is_ok());
    }

    #[test]
    fn a_token_that_lives_too_long_is_refused() {
        let auth = Auth::new("0123456789abcdef0123").with_max_lifetime(3600);
        let now = now_seconds();
        let year_3000 = signed(serde_json::json!({"sub": "a-1", "exp": 32_503_680_000_u64}));
        assert_eq!(auth.verify(Some(&year_3000)), Err(AuthError::Invalid));
        // Measured from `iat` when the token has one, from now when not.
        let long = signed(serde_json::json!({"sub": "a-1", "exp": now + 600, "iat": now - 7200}));
        assert_eq!(auth.verify(Some(&long)), Err(AuthError::Invalid));
        let hour = signed(serde_json::json!({"sub": "a-1", "exp": now + 3600, "iat": now}));
        assert!(auth.verify(Some(&hour)).is_ok());
        let no_iat = signed(serde_json::json!({"sub": "a-1", "exp": now + 3000}));
        assert!(auth.verify(Some(&no_iat)).is_ok());
        // 0 means no limit.
        let unlimited = Auth::new("0123456789abcdef0123").with_max_lifetime(0);
        assert!(unlimited.verify(Some(&year_3000)).is_ok());
    }
}
