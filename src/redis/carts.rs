//! Cart records (lua/cart.lua): the one place a cart's status lives, in the
//! cart's own slot, moved one atomic step at a time. The protocol that
//! drives them is `service::carts`.

use serde::{Deserialize, Serialize};

use super::{Redis, RedisError, ScriptName, reply};
use crate::inventory::{AccountId, CartId, Partition};

/// Where a cart is in its life. `Pending` and `Recovering` are the placing
/// steps (a request holds its lines; a sweep rolls back a cart whose
/// request stopped); `Confirming` and `Releasing` are on their way to
/// `Confirmed` and `Released`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    Pending,
    Recovering,
    Held,
    Failed,
    Confirming,
    Confirmed,
    Releasing,
    Released,
    Expired,
}

impl CartStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Recovering => "recovering",
            Self::Held => "held",
            Self::Failed => "failed",
            Self::Confirming => "confirming",
            Self::Confirmed => "confirmed",
            Self::Releasing => "releasing",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "recovering" => Self::Recovering,
            "held" => Self::Held,
            "failed" => Self::Failed,
            "confirming" => Self::Confirming,
            "confirmed" => Self::Confirmed,
            "releasing" => Self::Releasing,
            "released" => Self::Released,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// One line of a cart: a reservation in its SKU's partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub reservation_id: String,
    pub sku: String,
    pub qty: u32,
    /// The location asked for, then the one the hold took.
    pub location: Option<String>,
    #[serde(default)]
    pub backorder: bool,
}

/// A line that could not be held, as the 409 `cart-unavailable` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailedLine {
    /// The line's index in the request (0-based).
    pub index: usize,
    pub sku: String,
    /// The problem code a single reservation of that line would get.
    pub code: String,
    /// `insufficient-stock`: units available then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
}

/// A cart record as lua/cart.lua keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartRecord {
    pub account: String,
    pub status: CartStatus,
    /// What makes two requests "the same body" for an `Idempotency-Key`.
    pub fingerprint: String,
    pub created_ms: i64,
    /// The cart's one deadline, once held.
    pub expires_at_ms: Option<i64>,
    pub lines: Vec<CartLine>,
    pub failed: Vec<FailedLine>,
}

impl CartRecord {
    fn from_pairs(flat: &[String]) -> Result<Self, String> {
        let field = |name: &str| {
            flat.chunks_exact(2)
                .find(|kv| kv[0] == name)
                .map(|kv| kv[1].as_str())
        };
        let need = |name: &str| field(name).ok_or_else(|| format!("missing {name}"));
        let status = need("status")?;
        Ok(Self {
            account: need("acct")?.to_owned(),
            status: CartStatus::parse(status).ok_or_else(|| format!("status {status:?}"))?,
            fingerprint: need("fp")?.to_owned(),
            created_ms: need("created")?.parse().map_err(|_| "created")?,
            expires_at_ms: field("exp").and_then(|v| v.parse().ok()),
            lines: serde_json::from_str(need("lines")?).map_err(|e| e.to_string())?,
            failed: match field("failed") {
                Some(json) => serde_json::from_str(json).map_err(|e| e.to_string())?,
                None => Vec::new(),
            },
        })
    }

    /// Field/value pairs for `open` and `move`.
    fn pairs(&self) -> Vec<String> {
        let mut pairs = vec![
            "acct".to_owned(),
            self.account.clone(),
            "status".to_owned(),
            self.status.as_str().to_owned(),
            "fp".to_owned(),
            self.fingerprint.clone(),
            "created".to_owned(),
            self.created_ms.to_string(),
            "lines".to_owned(),
            serde_json::to_string(&self.lines).unwrap_or_default(),
        ];
        if let Some(exp) = self.expires_at_ms {
            pairs.extend(["exp".to_owned(), exp.to_string()]);
        }
        if !self.failed.is_empty() {
            pairs.extend([
                "failed".to_owned(),
                serde_json::to_string(&self.failed).unwrap_or_default(),
            ]);
        }
        pairs
    }
}

/// What a step of lua/cart.lua found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartStep {
    /// Done (or already done): the record after it.
    Done(CartRecord),
    /// The cart was in another status than the step may leave.
    Conflict(CartRecord),
    /// Held past, or too near, its deadline.
    TooLate(CartRecord),
    /// `open` found a cart with this id already.
    Exists(CartRecord),
    NotFound,
}

/// A `move` of a cart record.
#[derive(Debug, Clone)]
pub struct Move<'a> {
    pub from: &'a [CartStatus],
    pub to: CartStatus,
    /// How long the record is kept from now (ms).
    pub ttl_ms: u64,
    /// When a sweep may take the cart over (ms from now); `None`: never.
    pub due_in_ms: Option<u64>,
    /// Refuse when fewer ms than this remain before the cart's deadline.
    pub guard_ms: Option<u64>,
    /// The record's new lines, deadline and failed lines, when they change.
    pub record: Option<&'a CartRecord>,
}

impl Redis {
    async fn cart_call(
        &self,
        id: &CartId,
        action: &str,
        account: Option<&AccountId>,
        rest: Vec<String>,
    ) -> Result<CartStep, RedisError> {
        let keys = vec![self.keys().cart(id), self.keys().carts_due(id.partition())];
        let mut args = vec![
            action.to_owned(),
            id.as_str().to_owned(),
            account.map_or(String::new(), |a| a.as_str().to_owned()),
        ];
        args.extend(rest);
        let reply: Vec<String> = self.eval(ScriptName::Cart, keys, args).await?;
        let (outcome, flat) = reply
            .split_first()
            .ok_or_else(|| reply::not_understood(ScriptName::Cart, "empty reply".into()))?;
        if outcome == "not_found" {
            return Ok(CartStep::NotFound);
        }
        let record =
            CartRecord::from_pairs(flat).map_err(|e| reply::not_understood(ScriptName::Cart, e))?;
        Ok(match outcome.as_str() {
            "created" | "ok" => CartStep::Done(record),
            "exists" => CartStep::Exists(record),
            "conflict" => CartStep::Conflict(record),
            "too_late" => CartStep::TooLate(record),
            other => {
                return Err(reply::not_understood(
                    ScriptName::Cart,
                    format!("outcome {other:?}"),
                ));
            }
        })
    }

    /// Creates the cart's record unless one exists (then `Exists`), due
    /// for a sweep `due_in_ms` from now.
    pub async fn open_cart(
        &self,
        id: &CartId,
        record: &CartRecord,
        ttl_ms: u64,
        due_in_ms: u64,
    ) -> Result<CartStep, RedisError> {
        let mut rest = vec![ttl_ms.to_string(), due_in_ms.to_string()];
        rest.extend(record.pairs());
        self.cart_call(id, "open", None, rest).await
    }

    /// The cart, if it exists and (with `owner`) is that account's.
    pub async fn cart(
        &self,
        id: &CartId,
        owner: Option<&AccountId>,
    ) -> Result<Option<CartRecord>, RedisError> {
        Ok(match self.cart_call(id, "read", owner, Vec::new()).await? {
            CartStep::Done(record) => Some(record),
            _ => None,
        })
    }

    /// Moves the cart from one of `step.from` to `step.to` (see `Move`).
    pub async fn move_cart(
        &self,
        id: &CartId,
        owner: Option<&AccountId>,
        step: &Move<'_>,
    ) -> Result<CartStep, RedisError> {
        let from: Vec<&str> = step.from.iter().map(|s| s.as_str()).collect();
        let mut rest = vec![
            from.join(","),
            step.to.as_str().to_owned(),
            step.ttl_ms.max(1).to_string(),
            step.due_in_ms.map_or(String::new(), |ms| ms.to_string()),
            step.guard_ms.map_or(String::new(), |ms| ms.to_string()),
        ];
        if let Some(record) = step.record {
            // The status is the script's to set; the rest is the caller's.
            let pairs = record.pairs();
            rest.extend(
                pairs
                    .chunks_exact(2)
                    .filter(|kv| kv[0] != "status")
                    .flat_map(|kv| kv.iter().cloned()),
            );
        }
        self.cart_call(id, "move", owner, rest).await
    }

    /// Takes the cart out of its partition's due index.
    pub async fn forget_cart(&self, id: &CartId) -> Result<(), RedisError> {
        let keys = vec![self.keys().cart(id), self.keys().carts_due(id.partition())];
        let args = vec!["forget".to_owned(), id.as_str().to_owned(), String::new()];
        let _: Vec<String> = self.eval(ScriptName::Cart, keys, args).await?;
        Ok(())
    }

    /// Up to `max` carts of partition `p` a sweep may take over now.
    pub async fn due_carts(&self, p: Partition, max: u32) -> Result<Vec<String>, RedisError> {
        use fred::{prelude::*, types::Limit};
        let key = self.keys().carts_due(p);
        let key = &key;
        let now = crate::clock::now_ms();
        self.command(
            key,
            "carts_due",
            super::Caller::Background,
            |client| async move {
                client
                    .zrangebyscore(
                        key,
                        "-inf",
                        now,
                        false,
                        Some(Limit::from((0, i64::from(max)))),
                    )
                    .await
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cart_record_reads_back_what_it_wrote() {
        let record = CartRecord {
            account: "a1".into(),
            status: CartStatus::Held,
            fingerprint: "fp".into(),
            created_ms: 5,
            expires_at_ms: Some(9),
            lines: vec![CartLine {
                reservation_id: "1.ab.S".into(),
                sku: "S".into(),
                qty: 2,
                location: Some("east".into()),
                backorder: false,
            }],
            failed: vec![FailedLine {
                index: 1,
                sku: "T".into(),
                code: "insufficient-stock".into(),
                available: Some(0),
            }],
        };
        assert_eq!(CartRecord::from_pairs(&record.pairs()), Ok(record));
        assert!(CartRecord::from_pairs(&["acct".into(), "a".into()]).is_err());
    }
}
