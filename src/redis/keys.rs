//! Every Redis key and channel name flashgate uses, built in one place.
//!
//! A SKU's keys, and its partition's due index, event stream, reservation and
//! idempotency records, all carry the partition's hash tag `{p<N>}`, so each
//! script touches one cluster slot. Scripts receive these names through
//! `KEYS`; they never build one. `Core::partition_call` lays out the leading
//! keys every SKU script takes (see lua/prelude.lua); each typed call adds
//! its own.

use crate::inventory::{AccountId, CartId, IdempotencyKey, Partition, ReservationId, Sku};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    partitions: u32,
}

impl Keys {
    pub fn new(prefix: &str, partitions: u32) -> Self {
        Self {
            prefix: prefix.to_owned(),
            partitions,
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn partition_of(&self, sku: &Sku) -> Partition {
        sku.partition(self.partitions)
    }

    fn tagged(&self, p: Partition, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}:{{p{}}}:{}", self.prefix, p.0, rest)
    }

    /// The partition count this data was created with (no hash tag: one key
    /// for the whole deployment).
    pub fn meta_partitions(&self) -> String {
        format!("{}:meta:partitions", self.prefix)
    }

    pub fn sku(&self, p: Partition, sku: &Sku) -> String {
        self.tagged(p, format_args!("sku:{sku}"))
    }

    /// A SKU's keys in the order of the partition convention: hash, holds,
    /// accounts.
    pub fn sku_keys(&self, p: Partition, sku: &Sku) -> [String; 3] {
        [self.sku(p, sku), self.holds(p, sku), self.accounts(p, sku)]
    }

    fn holds(&self, p: Partition, sku: &Sku) -> String {
        self.tagged(p, format_args!("holds:{sku}"))
    }

    fn accounts(&self, p: Partition, sku: &Sku) -> String {
        self.tagged(p, format_args!("acct:{sku}"))
    }

    pub fn reservation(&self, id: &ReservationId) -> String {
        self.tagged(id.partition(), format_args!("res:{}", id.as_str()))
    }

    pub fn idempotency(
        &self,
        p: Partition,
        sku: &Sku,
        account: &AccountId,
        key: &IdempotencyKey,
    ) -> String {
        self.tagged(p, format_args!("idem:{sku}:{account}:{}", key.as_str()))
    }

    /// The record that ties an account's `Idempotency-Key` to one request
    /// fingerprint whatever SKU it names. It lives in the partition of the
    /// account and key, not of the SKU.
    pub fn idempotency_claim(&self, account: &AccountId, key: &IdempotencyKey) -> String {
        let p = Partition::of(&format!("{account}|{}", key.as_str()), self.partitions);
        self.tagged(p, format_args!("idk:{account}:{}", key.as_str()))
    }

    pub fn operation(&self, p: Partition, sku: &Sku, op_id: &str) -> String {
        self.tagged(p, format_args!("op:{sku}:{op_id}"))
    }

    /// A SKU's waiting-room keys in the order lua/room.lua takes them:
    /// queue, tickets, accounts, admissions, token bucket.
    pub fn room(&self, p: Partition, sku: &Sku) -> [String; 5] {
        ["q", "t", "a", "adm", "tb"].map(|part| self.tagged(p, format_args!("room:{sku}:{part}")))
    }

    /// The hash of SKUs whose stock lives in buckets (no hash tag: one key
    /// for the deployment, read by every instance's rebalancer).
    pub fn bucketed_skus(&self) -> String {
        format!("{}:bucketed", self.prefix)
    }

    /// A SKU's claims hash: caps its accounts claimed for holds in other
    /// stock buckets (lua/bucket.lua).
    pub fn claims(&self, p: Partition, sku: &Sku) -> String {
        self.tagged(p, format_args!("claims:{sku}"))
    }

    /// The partition's transfers between stock buckets not completed yet.
    pub fn transfers(&self, p: Partition) -> String {
        self.tagged(p, format_args!("xfers"))
    }

    /// A transfer's record in one of its two buckets' slots (`side`: `out`
    /// in the source, `in` in the destination).
    pub fn transfer(&self, p: Partition, side: &str, id: &str) -> String {
        self.tagged(p, format_args!("xfer:{side}:{id}"))
    }

    /// A cart's record (lua/cart.lua), in the cart's own partition.
    pub fn cart(&self, id: &CartId) -> String {
        self.tagged(id.partition(), format_args!("cart:{}", id.as_str()))
    }

    /// Sorted set of the partition's carts a sweep may have to finish,
    /// scored by when it may take them over (lua/cart.lua).
    pub fn carts_due(&self, p: Partition) -> String {
        self.tagged(p, format_args!("carts"))
    }

    /// Sorted set of SKUs with holds, scored by their earliest deadline.
    pub fn due(&self, p: Partition) -> String {
        self.tagged(p, format_args!("due"))
    }

    /// The partition's event stream: the journal's outbox.
    pub fn events(&self, p: Partition) -> String {
        self.tagged(p, format_args!("events"))
    }

    /// The shared per-account rate limit's state (lua/rate_limit.lua). Its
    /// own slot: it is read apart from any SKU, and accounts spread over
    /// the cluster.
    pub fn shared_limit(&self, account: &AccountId) -> String {
        format!("{}:rl:{{{account}}}", self.prefix)
    }

    /// Sharded pub/sub channel announcing stock changes in the partition.
    pub fn stock_channel(&self, p: Partition) -> String {
        self.tagged(p, format_args!("stock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::util::redis_keyslot;

    fn one_slot(keys: &[String]) -> bool {
        let first = redis_keyslot(keys[0].as_bytes());
        keys.iter().all(|k| redis_keyslot(k.as_bytes()) == first)
    }

    #[test]
    fn every_script_key_set_hashes_to_one_slot() {
        let keys = Keys::new("fg", 256);
        let account = AccountId::parse("acct:1@x").unwrap();
        // Idempotency keys are printable ASCII and may hold braces themselves.
        let idem = IdempotencyKey::parse("k}{p9}{").unwrap();
        for name in ["ABC-1", "a", "sku.with.dots", &"Z".repeat(64)] {
            let sku = Sku::parse(name).unwrap();
            let id = ReservationId::generate(&sku, keys.partition_of(&sku));
            let p = keys.partition_of(&sku);
            let mut every = vec![
                keys.due(p),
                keys.events(p),
                keys.stock_channel(p),
                keys.reservation(&id),
                keys.idempotency(p, &sku, &account, &idem),
                keys.operation(p, &sku, "op-1"),
            ];
            every.extend(keys.sku_keys(p, &sku));
            every.extend(keys.room(p, &sku));
            let cart = CartId::for_key(&account, &idem, 256);
            let sets = [
                every,
                vec![keys.cart(&cart), keys.carts_due(cart.partition())],
            ];
            for set in &sets {
                assert!(one_slot(set), "{set:?} spans slots");
            }
        }
    }

    #[test]
    fn partitions_spread_over_many_slots() {
        let keys = Keys::new("fg", 256);
        let slots: std::collections::HashSet<u16> = (0..256)
            .map(|p| redis_keyslot(keys.due(Partition(p)).as_bytes()))
            .collect();
        assert!(slots.len() > 250, "only {} distinct slots", slots.len());
    }
}
