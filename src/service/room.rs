//! The waiting room's use cases: tickets (lua/room.lua) and the admission
//! tokens a reservation carries.
//!
//! An admission token is `<ticket>.<deadline ms>.<HMAC-SHA256, base64url>` over the
//! SKU, ticket, account and deadline, keyed by a key derived from
//! `auth.secret`: the edge refuses a token that is forged, expired, for
//! another SKU or of another account without touching Redis, and the
//! reserve script then checks that the ticket's admission is still
//! outstanding and uses it up with the hold (one reservation per
//! admission).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Inventory;
use crate::{
    inventory::{AccountId, Sku},
    redis::{
        RedisError,
        batch::Applied,
        calls::{RoomAction, RoomReply},
    },
};

/// Random places of tickets taken before the sale opens are drawn below this.
const DRAW_MAX: u64 = 1_000_000_000_000;

/// Signs and checks admission tokens.
pub struct Admissions {
    key: Vec<u8>,
}

impl Admissions {
    pub fn new(secret: &str) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| unreachable_mac());
        mac.update(b"flashgate admission tokens");
        Self {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    /// The MAC over what a token stands for, ready to finish or verify.
    fn mac(&self, sku: &Sku, ticket: &str, account: &AccountId, deadline_ms: i64) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable_mac());
        for part in [
            sku.as_str(),
            ticket,
            account.as_str(),
            &deadline_ms.to_string(),
        ] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    /// The token of `account`'s admission through `ticket`.
    pub fn sign(&self, sku: &Sku, ticket: &str, account: &AccountId, deadline_ms: i64) -> String {
        let tag = self
            .mac(sku, ticket, account, deadline_ms)
            .finalize()
            .into_bytes();
        format!("{ticket}.{deadline_ms}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The ticket of a token that `account` may use for `sku` now; `None`
    /// for anything else.
    pub fn check(
        &self,
        token: &str,
        sku: &Sku,
        account: &AccountId,
        now_ms: i64,
    ) -> Option<String> {
        let mut parts = token.splitn(3, '.');
        let (ticket, deadline, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if !is_ticket_id(ticket) {
            return None;
        }
        let deadline: i64 = deadline.parse().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // `verify_slice` compares in constant time.
        let genuine = self
            .mac(sku, ticket, account, deadline)
            .verify_slice(&tag)
            .is_ok();
        (genuine && deadline > now_ms).then(|| ticket.to_owned())
    }
}

/// HMAC takes keys of any length: this never runs.
fn unreachable_mac() -> Hmac<Sha256> {
    unreachable!("HMAC-SHA256 accepts keys of any length")
}

/// A ticket id: 32 lowercase hex digits.
pub fn is_ticket_id(raw: &str) -> bool {
    raw.len() == 32
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new ticket id.
pub fn new_ticket_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Inventory {
    /// Takes `account`'s ticket for `sku` (its existing one, if it has one)
    /// or reads `ticket`, admitting what may be admitted first.
    pub async fn ticket(
        &self,
        sku: &Sku,
        action: RoomAction,
        account: &AccountId,
        ticket: &str,
    ) -> Result<RoomReply, RedisError> {
        let draw = (uuid::Uuid::new_v4().as_u128() as u64) % DRAW_MAX;
        let Applied { reply, events } = self.redis.room(sku, action, account, ticket, draw).await?;
        // Lazy expiry of the SKU's overdue holds may have run.
        if !events.is_empty() {
            self.journal.queue.offer(events);
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admission_token_is_good_for_its_account_sku_and_time_only() {
        let admissions = Admissions::new("secret");
        let sku = Sku::parse("S").unwrap();
        let me = AccountId::parse("me").unwrap();
        let ticket = new_ticket_id();
        let token = admissions.sign(&sku, &ticket, &me, 2_000);
        assert_eq!(
            admissions.check(&token, &sku, &me, 1_000),
            Some(ticket.clone())
        );
        assert_eq!(admissions.check(&token, &sku, &me, 2_000), None);
        let other = AccountId::parse("other").unwrap();
        assert_eq!(admissions.check(&token, &sku, &other, 1_000), None);
        assert_eq!(
            admissions.check(&token, &Sku::parse("T").unwrap(), &me, 1_000),
            None
        );
        let later = token.replace(".2000.", ".9000.");
        assert_eq!(admissions.check(&later, &sku, &me, 1_000), None);
        let forged = Admissions::new("another").sign(&sku, &ticket, &me, 2_000);
        assert_eq!(admissions.check(&forged, &sku, &me, 1_000), None);
        assert_eq!(admissions.check("x.1.y", &sku, &me, 0), None);
    }
}
