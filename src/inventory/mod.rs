//! Domain types, parsed once at the edge.
//!
//! A `Sku`, `Location`, `AccountId`, `Qty`, `IdempotencyKey` or
//! `ReservationId` that exists is valid: inner code never checks again. The
//! character sets exclude `{`, `}` and `|`, so no value can break a Redis hash
//! tag or the `|`-separated hold members the scripts keep.

pub mod view;

use std::fmt;

use uuid::Uuid;

/// Why a raw value was refused; the message names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn charset_ok(s: &str, extra: &[u8]) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
}

macro_rules! string_id {
    ($name:ident, $what:literal, $max:literal, $extra:expr, $rule:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                if (1..=$max).contains(&raw.len()) && charset_ok(raw, $extra) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(InvalidValue(format!(concat!(
                        $what,
                        " must be 1-",
                        $max,
                        " characters of ",
                        $rule
                    ))))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(Sku, "sku", 64, b"", "[A-Za-z0-9._-]");
string_id!(Location, "location", 32, b"", "[A-Za-z0-9._-]");
string_id!(AccountId, "account id", 64, b":@", "[A-Za-z0-9._:@-]");
// The owner of a SKU in a marketplace (policy `seller`, token claim `seller`).
string_id!(SellerId, "seller", 64, b":@", "[A-Za-z0-9._:@-]");

/// The largest count an operator may set for a location.
impl AccountId {
    /// The actor the journal names for changes flashgate makes on its own
    /// (moving stock between buckets).
    pub fn system() -> Self {
        Self("flashgate".to_owned())
    }
}

/// The mark between a SKU and the partition of one of its stock buckets:
/// bucket `ABC-1~17` holds part of `ABC-1`'s stock in partition 17. Public
/// SKUs never contain it, so a bucket's name is never a client's SKU.
pub const BUCKET_MARK: char = '~';

/// The SKU a client knows a stored name by: a stock bucket's owner, or the
/// name itself.
pub fn client_sku(stored: &str) -> &str {
    stored
        .split_once(BUCKET_MARK)
        .map_or(stored, |(sku, _)| sku)
}

impl Sku {
    /// The name of this SKU's stock bucket in partition `p`.
    pub fn bucket(&self, p: Partition) -> Sku {
        Sku(format!("{}{BUCKET_MARK}{}", self.parent_str(), p.0))
    }

    /// The partition a bucket names; `None` for a SKU itself.
    pub fn bucket_partition(&self) -> Option<Partition> {
        let (_, p) = self.0.rsplit_once(BUCKET_MARK)?;
        p.parse().ok().map(Partition)
    }

    /// The name of the SKU clients know (`parent` without a copy).
    pub fn parent_str(&self) -> &str {
        self.0
            .split_once(BUCKET_MARK)
            .map_or(self.0.as_str(), |(parent, _)| parent)
    }

    /// The SKU clients know: itself, or the SKU a bucket belongs to.
    pub fn parent(&self) -> Sku {
        Sku(self.parent_str().to_owned())
    }

    pub fn is_bucket(&self) -> bool {
        self.0.contains(BUCKET_MARK)
    }

    /// A SKU as flashgate stores it: a client's SKU or one of its buckets
    /// (in reservation ids, due indexes, the journal).
    pub fn parse_stored(raw: &str) -> Result<Self, InvalidValue> {
        match raw.split_once(BUCKET_MARK) {
            Some((parent, p))
                if !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Sku::parse(parent).map(|_| Self(raw.to_owned()))
            }
            Some(_) => Err(InvalidValue(format!("{raw:?} is not a stock bucket"))),
            None => Sku::parse(raw),
        }
    }

    /// The partition whose slot holds the SKU's keys: a bucket's own, or
    /// the hash of the name.
    pub fn partition(&self, partitions: u32) -> Partition {
        self.bucket_partition()
            .unwrap_or_else(|| Partition::of(&self.0, partitions))
    }
}

pub const STOCK_COUNT_MAX: i64 = 1_000_000_000_000;

/// Units in one request: from 1 to `reservation.max_qty_per_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qty(u32);

impl Qty {
    pub fn parse(raw: i64, max: u32) -> Result<Self, InvalidValue> {
        match u32::try_from(raw) {
            Ok(q) if (1..=max).contains(&q) => Ok(Self(q)),
            _ => Err(InvalidValue(format!(
                "qty must be an integer from 1 to {max}"
            ))),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A client's `Idempotency-Key`: 1-128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if (1..=128).contains(&raw.len()) && raw.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidValue(
                "Idempotency-Key must be 1-128 printable ASCII characters".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A SKU's partition: every key of the SKU lives in this partition's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition(pub u32);

impl Partition {
    /// FNV-1a (32-bit) of the text, modulo the partition count. The function
    /// is part of the data layout: changing it would move every SKU.
    pub fn of(text: &str, partitions: u32) -> Self {
        let mut hash: u32 = 0x811c_9dc5;
        for b in text.bytes() {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        Self(hash % partitions)
    }
}

/// A reservation id: `<partition>.<32 hex>.<sku>`. It carries the partition
/// and the SKU so confirm and release reach the right slot without a lookup.
/// Clients treat it as opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationId {
    text: String,
    partition: Partition,
    sku: Sku,
}

impl ReservationId {
    pub fn generate(sku: &Sku, partition: Partition) -> Self {
        let text = format!("{}.{}.{}", partition.0, Uuid::new_v4().simple(), sku);
        Self {
            text,
            partition,
            sku: sku.clone(),
        }
    }

    /// Parses an id and checks that its partition is the SKU's; anything
    /// else is `None` (the caller answers 404).
    pub fn parse(raw: &str, partitions: u32) -> Option<Self> {
        let (p, rest) = raw.split_once('.')?;
        let (random, sku) = rest.split_once('.')?;
        let partition = Partition(p.parse().ok()?);
        let sku = Sku::parse_stored(sku).ok()?;
        let random_ok = random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit());
        let canonical = p == partition.0.to_string();
        (random_ok && canonical && sku.partition(partitions) == partition).then(|| Self {
            text: raw.to_owned(),
            partition,
            sku,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    pub fn sku(&self) -> &Sku {
        &self.sku
    }

    /// The 32 hex digits between the partition and the SKU.
    pub fn random_part(&self) -> &str {
        self.text.split('.').nth(1).unwrap_or_default()
    }

    /// The id the same request takes in another stock bucket of its SKU:
    /// the same random part, so every attempt of one reservation across
    /// buckets is recognisable (see `service::buckets`).
    pub fn in_bucket(&self, bucket: &Sku, partitions: u32) -> Self {
        Self::compose(bucket, partitions, self.random_part())
    }

    /// The id with random part `random` (32 hex digits, else `None`) in
    /// `sku`'s partition: an id derived from a client's key, or a claim's.
    pub fn with_random(sku: &Sku, partitions: u32, random: &str) -> Option<Self> {
        let hex = random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| Self::compose(sku, partitions, random))
    }

    fn compose(sku: &Sku, partitions: u32, random: &str) -> Self {
        let partition = sku.partition(partitions);
        Self {
            text: format!("{}.{random}.{sku}", partition.0),
            partition,
            sku: sku.clone(),
        }
    }
}

/// 32 lowercase hex digits of SHA-256 over `parts`, each ended by a newline:
/// the stable ids derived from a client's `Idempotency-Key` (carts, their
/// lines, import lines).
pub fn digest_hex(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update(b"\n");
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A cart id: `<partition>.<32 hex>`, the partition being the hex digits'.
/// The cart's record lives in that partition's slot; its lines are
/// reservations in their SKUs' partitions, with ids derived from the cart
/// id (`CartId::line`), so whoever drives the cart (the request, a retry
/// with the same `Idempotency-Key`, the recovery sweep) names the same
/// reservations. Clients treat it as opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartId {
    text: String,
    partition: Partition,
}

impl CartId {
    fn from_hex(hex: String, partitions: u32) -> Self {
        let partition = Partition::of(&hex, partitions);
        Self {
            text: format!("{}.{hex}", partition.0),
            partition,
        }
    }

    /// A new cart's id, when the request has no `Idempotency-Key`.
    pub fn generate(partitions: u32) -> Self {
        Self::from_hex(Uuid::new_v4().simple().to_string(), partitions)
    }

    /// The cart an account's `Idempotency-Key` names: the same on every
    /// retry, so a retry finds the cart the first attempt placed.
    pub fn for_key(account: &AccountId, key: &IdempotencyKey, partitions: u32) -> Self {
        Self::from_hex(
            digest_hex(&["cart", account.as_str(), key.as_str()]),
            partitions,
        )
    }

    /// Parses an id; anything not made by `CartId` is `None` (404).
    pub fn parse(raw: &str, partitions: u32) -> Option<Self> {
        let (p, hex) = raw.split_once('.')?;
        let hex_ok = hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        let id = hex_ok.then(|| Self::from_hex(hex.to_ascii_lowercase(), partitions))?;
        (id.text == raw && p == id.partition.0.to_string()).then_some(id)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The reservation id of the cart's line `index` (its SKU `sku`).
    pub fn line(&self, index: usize, sku: &Sku, partitions: u32) -> ReservationId {
        let hex = digest_hex(&["line", &self.text, &index.to_string()]);
        ReservationId::compose(sku, partitions, &hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_refuse_braces_and_bars_that_would_break_keys() {
        for bad in ["", "a{b", "a}b", "a|b", "a b", "é", &"x".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Sku::parse("ABC-1.x_y").is_ok());
    }

    #[test]
    fn account_ids_allow_colon_and_at() {
        assert!(AccountId::parse("user:42@shop").is_ok());
        assert!(AccountId::parse("user{42}").is_err());
    }

    #[test]
    fn qty_is_bounded_by_the_configured_maximum() {
        assert!(Qty::parse(0, 10).is_err());
        assert!(Qty::parse(11, 10).is_err());
        assert!(Qty::parse(-1, 10).is_err());
        assert_eq!(Qty::parse(10, 10).unwrap().get(), 10);
    }

    #[test]
    fn cart_ids_parse_back_and_name_their_lines_alike_every_time() {
        let account = AccountId::parse("a1").unwrap();
        let key = IdempotencyKey::parse("k-1").unwrap();
        let cart = CartId::for_key(&account, &key, 256);
        assert_eq!(cart, CartId::for_key(&account, &key, 256));
        assert_eq!(CartId::parse(cart.as_str(), 256), Some(cart.clone()));
        let other = AccountId::parse("a2").unwrap();
        assert_ne!(cart, CartId::for_key(&other, &key, 256));
        let sku = Sku::parse("ABC-1").unwrap();
        let line = cart.line(0, &sku, 256);
        assert_eq!(line, cart.line(0, &sku, 256));
        assert_ne!(line, cart.line(1, &sku, 256));
        assert_eq!(ReservationId::parse(line.as_str(), 256), Some(line));
        let wrong = format!(
            "{}.{}",
            (cart.partition().0 + 1) % 256,
            &cart.as_str()[cart.as_str().find('.').unwrap() + 1..]
        );
        assert_eq!(CartId::parse(&wrong, 256), None);
        assert_eq!(CartId::parse("1.xyz", 256), None);
    }

    #[test]
    fn partition_hash_is_stable() {
        // FNV-1a 32-bit of "a" is 0xe40c292c.
        assert_eq!(Partition::of("a", 1 << 31).0, 0xe40c_292c % (1 << 31));
        assert_eq!(Partition::of("ABC-1", 256), Partition::of("ABC-1", 256));
    }

    #[test]
    fn reservation_ids_round_trip_and_refuse_forgeries() {
        let sku = Sku::parse("ABC-1").unwrap();
        let id = ReservationId::generate(&sku, Partition::of("ABC-1", 256));
        let parsed = ReservationId::parse(id.as_str(), 256).unwrap();
        assert_eq!(parsed, id);
        let wrong_partition = (id.partition().0 + 1) % 256;
        let forged = id.as_str().replacen(
            &id.partition().0.to_string(),
            &wrong_partition.to_string(),
            1,
        );
        assert!(ReservationId::parse(&forged, 256).is_none());
        assert!(ReservationId::parse("1.zz.ABC-1", 256).is_none());
        assert!(ReservationId::parse("nonsense", 256).is_none());
    }
}
