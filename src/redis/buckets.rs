//! Calls of lua/bucket.lua: a SKU's bucket layout, caps claimed in an
//! account's home bucket, and the steps of a transfer between buckets.

use serde::Serialize;

use super::{Caller, Redis, RedisError, batch::Applied, scripts::ScriptName};
use crate::inventory::{AccountId, Location, Partition, Sku, view::Counts};

/// How long a transfer's records are kept after its last step: a step
/// re-sent within it is recognised and changes nothing.
const TRANSFER_RECORD_TTL_MS: u64 = 7 * 24 * 3_600_000;

/// The policy fields every bucket keeps a copy of (what lua/reserve.lua
/// reads: the cap, the sale window, the hold TTL).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BucketPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
}

/// Why a layout was not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutReply {
    Set,
    /// The SKU holds units.
    HasHolds,
    AlreadyBucketed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimReply {
    Claimed,
    /// The SKU has no cap: nothing to count.
    Uncapped,
    PurchaseLimit {
        limit: i64,
        already: i64,
    },
}

/// A move of units of one location between two buckets of a SKU (see
/// lua/bucket.lua for the protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub id: String,
    pub from: Sku,
    pub to: Sku,
    pub location: Location,
    pub qty: i64,
    /// Safety stock, low-stock threshold and backorder limit that move with
    /// the units (a SKU's own stock moving into its buckets).
    pub settings: [i64; 3],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WithdrawReply {
    /// The units left the source (now, or by an earlier attempt).
    Withdrawn,
    /// The transfer was completed before.
    Done,
    /// The source cannot spare that many.
    Insufficient {
        free: i64,
    },
    UnknownLocation,
}

impl Transfer {
    pub fn new(from: Sku, to: Sku, location: Location, qty: i64) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            from,
            to,
            location,
            qty,
            settings: [0; 3],
        }
    }

    /// Reads a pending transfer from its source's record
    /// (`<destination>|<location>|<qty>|<source>|<ss>|<lt>|<bo>`; the
    /// settings absent in a record of an older gateway).
    pub fn from_record(id: &str, record: &str) -> Option<Self> {
        let mut parts = record.split('|');
        let to = Sku::parse_stored(parts.next()?).ok()?;
        let location = Location::parse(parts.next()?).ok()?;
        let qty = parts.next()?.parse().ok()?;
        let from = Sku::parse_stored(parts.next()?).ok()?;
        let mut settings = [0; 3];
        for s in &mut settings {
            *s = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
        Some(Self {
            id: id.to_owned(),
            from,
            to,
            location,
            qty,
            settings,
        })
    }
}

/// The actor transfers are journaled with.
const TRANSFER_ACTOR: &str = "flashgate";

impl Redis {
    /// Adds `sku` to the bucketed SKUs (`Keys::bucketed_skus`, a hash).
    pub async fn note_bucketed(&self, sku: &Sku) -> Result<(), RedisError> {
        let key = &self.keys().bucketed_skus();
        self.command(key, "bucketed_skus", Caller::Request, |client| async move {
            use fred::interfaces::HashesInterface;
            client.hset::<i64, _, _>(key, (sku.as_str(), "1")).await
        })
        .await
        .map(drop)
    }

    /// The SKUs whose stock lives in buckets.
    pub async fn bucketed_skus(&self) -> Result<Vec<Sku>, RedisError> {
        let key = &self.keys().bucketed_skus();
        let names: Vec<String> = self
            .command(
                key,
                "bucketed_skus",
                Caller::Background,
                |client| async move {
                    use fred::interfaces::HashesInterface;
                    client.hkeys(key).await
                },
            )
            .await?;
        Ok(names.iter().filter_map(|n| Sku::parse(n).ok()).collect())
    }

    /// A bucket's version and one location's counts (zero when it has none).
    pub async fn bucket_counts(
        &self,
        bucket: &Sku,
        location: &Location,
    ) -> Result<(u64, Counts), RedisError> {
        let key = self.keys().sku(self.keys().partition_of(bucket), bucket);
        let key = &key;
        let fields: Vec<String> = ["ver", "oh", "rs", "ss", "lt", "bo"]
            .iter()
            .enumerate()
            .map(|(i, f)| match i {
                0 => (*f).to_owned(),
                _ => format!("l:{location}:{f}"),
            })
            .collect();
        let values: Vec<Option<i64>> = self
            .command(key, "bucket_counts", Caller::Request, |client| async move {
                use fred::interfaces::HashesInterface;
                client.hmget(key, fields).await
            })
            .await?;
        let v = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
        Ok((
            v(0) as u64,
            Counts {
                on_hand: v(1),
                reserved: v(2),
                safety_stock: v(3),
                low_stock_threshold: v(4),
                backorder_limit: v(5),
            },
        ))
    }

    /// A SKU's hash (field, value pairs; empty when it does not exist);
    /// for a bucketed SKU its own fields (policy, layout) with every
    /// bucket's counts and versions summed in.
    pub async fn summed_fields(
        &self,
        sku: &Sku,
        caller: Caller,
    ) -> Result<Vec<(String, String)>, RedisError> {
        let own = self.hash_of(sku, caller).await?;
        let Some(bk) = own.iter().find(|(f, _)| f == "bk").map(|(_, v)| v.clone()) else {
            return Ok(own);
        };
        let buckets: Vec<Sku> = bk
            .split(',')
            .filter_map(|p| p.parse().ok().map(|p| sku.bucket(Partition(p))))
            .collect();
        let hashes =
            futures_util::future::try_join_all(buckets.iter().map(|b| self.hash_of(b, caller)))
                .await?;
        // Counts and versions add up over the SKU's own hash and its
        // buckets'; the rest (policy, layout) is the SKU's own.
        let mut sums: std::collections::BTreeMap<String, i64> = Default::default();
        let mut fields: Vec<(String, String)> = Vec::new();
        let buckets_fields = hashes.into_iter().flatten().map(|f| (f, false));
        for ((field, value), own) in own.into_iter().map(|f| (f, true)).chain(buckets_fields) {
            if field == "ver" || field.starts_with("l:") {
                *sums.entry(field).or_default() += value.parse::<i64>().unwrap_or(0);
            } else if own {
                fields.push((field, value));
            }
        }
        fields.extend(sums.into_iter().map(|(f, v)| (f, v.to_string())));
        Ok(fields)
    }

    pub async fn hash_of(
        &self,
        sku: &Sku,
        caller: Caller,
    ) -> Result<Vec<(String, String)>, RedisError> {
        let key = &self.keys().sku(self.keys().partition_of(sku), sku);
        let fields: std::collections::HashMap<String, String> = self
            .command(key, "inventory", caller, |client| async move {
                use fred::interfaces::HashesInterface;
                client.hgetall(key).await
            })
            .await?;
        Ok(fields.into_iter().collect())
    }

    /// Runs one operation of lua/bucket.lua on `sku`; `record` names the
    /// transfer record in the SKU's slot (`side` and transfer id).
    async fn bucket_op(
        &self,
        sku: &Sku,
        record: (&str, &str),
        args: &[&str],
    ) -> Result<Applied<String>, RedisError> {
        let keys = self.keys();
        let p = keys.partition_of(sku);
        let (mut k, mut a) = self.partition_call(p, &[sku]);
        k.extend([
            keys.claims(p, sku),
            keys.transfers(p),
            keys.transfer(p, record.0, record.1),
        ]);
        a.extend(args.iter().map(|s| (*s).to_owned()));
        self.eval_one(ScriptName::Bucket, p, k, a).await
    }

    /// Lays a SKU's stock out in buckets in `partitions` (lua/bucket.lua
    /// `layout`).
    pub async fn set_layout(
        &self,
        sku: &Sku,
        partitions: &[Partition],
    ) -> Result<LayoutReply, RedisError> {
        let list = partitions
            .iter()
            .map(|p| p.0.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let applied = self
            .bucket_op(sku, ("out", "-"), &["layout", &list])
            .await?;
        Ok(match applied.reply.as_str() {
            "ok" => LayoutReply::Set,
            "holds" => LayoutReply::HasHolds,
            _ => LayoutReply::AlreadyBucketed,
        })
    }

    /// Gives a bucket its SKU's policy, creating the bucket when needed.
    pub async fn set_bucket_policy(
        &self,
        bucket: &Sku,
        policy: &BucketPolicy,
    ) -> Result<(), RedisError> {
        let json = serde_json::to_string(policy).unwrap_or_else(|_| "{}".into());
        self.bucket_op(bucket, ("out", "-"), &["policy", &json])
            .await
            .map(drop)
    }

    /// Counts `qty` units against `account`'s cap in its home bucket for a
    /// hold elsewhere (`id`: the hold's claim id).
    pub async fn claim(
        &self,
        home: &Sku,
        account: &AccountId,
        id: &str,
        qty: u32,
    ) -> Result<ClaimReply, RedisError> {
        let qty = qty.to_string();
        let applied = self
            .bucket_op(home, ("out", "-"), &["claim", account.as_str(), id, &qty])
            .await?;
        let reply = applied.reply;
        Ok(match reply.split('|').collect::<Vec<_>>().as_slice() {
            ["claimed"] => ClaimReply::Claimed,
            ["uncapped"] => ClaimReply::Uncapped,
            ["purchase_limit", limit, already] => ClaimReply::PurchaseLimit {
                limit: limit.parse().unwrap_or(0),
                already: already.parse().unwrap_or(0),
            },
            _ => {
                return Err(super::reply::not_understood(ScriptName::Bucket, reply));
            }
        })
    }

    /// Ends a claim: its units go back to the account's cap (`keep` false:
    /// the hold was released or expired), or stay counted (a confirmation).
    /// Returns whether the claim was still there.
    pub async fn unclaim(&self, home: &Sku, id: &str, keep: bool) -> Result<bool, RedisError> {
        let how = if keep { "keep" } else { "give" };
        let applied = self
            .bucket_op(home, ("out", "-"), &["unclaim", id, how])
            .await?;
        Ok(applied.reply == "ok")
    }

    /// A transfer's first step, in its source's slot.
    pub async fn withdraw(&self, t: &Transfer) -> Result<Applied<WithdrawReply>, RedisError> {
        let (qty, ttl) = (t.qty.to_string(), TRANSFER_RECORD_TTL_MS.to_string());
        let [ss, lt, bo] = t.settings.map(|v| v.to_string());
        let applied = self
            .bucket_op(
                &t.from,
                ("out", &t.id),
                &[
                    "withdraw",
                    t.location.as_str(),
                    &qty,
                    &t.id,
                    t.to.as_str(),
                    &ttl,
                    TRANSFER_ACTOR,
                    &ss,
                    &lt,
                    &bo,
                ],
            )
            .await?;
        let reply = match applied.reply.split_once('|') {
            None if applied.reply == "withdrawn" => WithdrawReply::Withdrawn,
            None if applied.reply == "done" => WithdrawReply::Done,
            None if applied.reply == "unknown_location" => WithdrawReply::UnknownLocation,
            Some(("insufficient_stock", free)) => WithdrawReply::Insufficient {
                free: free.parse().unwrap_or(0),
            },
            _ => {
                return Err(super::reply::not_understood(
                    ScriptName::Bucket,
                    applied.reply,
                ));
            }
        };
        Ok(Applied {
            reply,
            events: applied.events,
        })
    }

    /// A transfer's second step, in its destination's slot; once only,
    /// however often it is sent.
    pub async fn deposit(&self, t: &Transfer) -> Result<Applied<String>, RedisError> {
        let (qty, ttl) = (t.qty.to_string(), TRANSFER_RECORD_TTL_MS.to_string());
        let [ss, lt, bo] = t.settings.map(|v| v.to_string());
        self.bucket_op(
            &t.to,
            ("in", &t.id),
            &[
                "deposit",
                t.location.as_str(),
                &qty,
                &t.id,
                t.from.as_str(),
                &ttl,
                TRANSFER_ACTOR,
                &ss,
                &lt,
                &bo,
            ],
        )
        .await
    }

    /// A transfer's last step: its source's record says it is done.
    pub async fn complete(&self, t: &Transfer) -> Result<(), RedisError> {
        let ttl = TRANSFER_RECORD_TTL_MS.to_string();
        self.bucket_op(&t.from, ("out", &t.id), &["complete", &t.id, &ttl])
            .await
            .map(drop)
    }

    /// A bucket's cap claims: claim id and `acct|qty|claimed at ms`.
    pub async fn claims_of(&self, bucket: &Sku) -> Result<Vec<(String, String)>, RedisError> {
        let key = &self.keys().claims(self.keys().partition_of(bucket), bucket);
        let claims: std::collections::HashMap<String, String> = self
            .command(key, "claims", Caller::Background, |client| async move {
                use fred::interfaces::HashesInterface;
                client.hgetall(key).await
            })
            .await?;
        Ok(claims.into_iter().collect())
    }

    /// Whether any of these buckets' partitions has a transfer withdrawn
    /// and not completed.
    pub async fn transfers_in_flight(&self, buckets: &[Sku]) -> Result<bool, RedisError> {
        let counts = buckets.iter().map(|bucket| async move {
            let key = &self.keys().transfers(self.keys().partition_of(bucket));
            self.command(
                key,
                "transfers_in_flight",
                Caller::Request,
                |client| async move {
                    use fred::interfaces::SortedSetsInterface;
                    client.zcard::<i64, _>(key).await
                },
            )
            .await
        });
        let counts = futures_util::future::try_join_all(counts).await?;
        Ok(counts.iter().any(|n| *n > 0))
    }

    /// Transfers of partition `p` withdrawn before `before_ms` and not
    /// completed, with their source records (at most `limit`).
    pub async fn pending_transfers(
        &self,
        p: Partition,
        before_ms: i64,
        limit: i64,
        caller: Caller,
    ) -> Result<Vec<(String, Option<String>)>, RedisError> {
        let keys = self.keys();
        let set = keys.transfers(p);
        let set = &set;
        let ids: Vec<String> = self
            .command(set, "pending_transfers", caller, |client| async move {
                use fred::interfaces::SortedSetsInterface;
                client
                    .zrangebyscore(set, "-inf", before_ms, false, Some((0, limit)))
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let key = keys.transfer(p, "out", &id);
            let key = &key;
            let record: Option<String> = self
                .command(key, "transfer_record", caller, |client| async move {
                    use fred::interfaces::KeysInterface;
                    client.get(key).await
                })
                .await?;
            out.push((id, record));
        }
        Ok(out)
    }
}
