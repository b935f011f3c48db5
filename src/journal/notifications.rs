//! Stock notifications, derived from the journal in the transaction that
//! writes it: each change of a SKU's top-level status becomes one row of
//! `stock_notifications`, and one pending delivery per matching webhook.
//!
//! A SKU's versions grow by one per event, so its status can be followed
//! exactly: `sku_status` holds the status and every location's counts after
//! `version`, and each journal write of the SKU (batch writer, confirmation
//! group, reconciler; any instance) locks that row, reads back the SKU's
//! journaled events past `version` in version order, and applies them while
//! no version is missing, classifying the SKU after each one. A status that
//! differs from the one before is a transition. Events past a missing
//! version (the queue dropped it, and the reconciler has not brought it yet)
//! wait: the write that brings it applies them all. Should a version never
//! come (entries lost before they were journaled), the waiting SKU is
//! advanced past the gap after `webhooks.gap_wait_seconds` by `sweep_gaps`.
//! A SKU's first state is no transition (there is no status to leave).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use deadpool_postgres::GenericClient;

use super::store::StoreError;
use crate::{
    events::Event,
    inventory::view::{Counts, InventoryView, StockStatus},
};

/// Events one call reads back per SKU at most; a SKU with more waiting is
/// marked as waiting, so that `sweep_gaps` carries on.
const EVENTS_PER_SKU_MAX: i64 = 10_000;

/// What to do at a missing version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gaps {
    /// Stop there: the missing event may still be journaled.
    Wait,
    /// Go on past it: it has been waited for long enough.
    Skip,
}

/// What a change from `from` to `to` is called, if anything.
pub fn notification_type(from: StockStatus, to: StockStatus) -> Option<&'static str> {
    use StockStatus::*;
    match (from, to) {
        (a, b) if a == b => None,
        (OutOfStock | Backorder, InStock | LowStock) => Some("stock.back_in"),
        (_, LowStock) => Some("stock.low"),
        (_, OutOfStock) => Some("stock.out"),
        (_, Backorder) => Some("stock.backorder"),
        // Back above the low-stock threshold: nobody needs telling.
        (_, InStock) => None,
    }
}

/// A SKU's locations at its considered version.
type Locations = BTreeMap<String, Counts>;

struct Transition {
    sku: String,
    kind: &'static str,
    from: StockStatus,
    to: StockStatus,
    version: i64,
    view: serde_json::Value,
    occurred_at_ms: i64,
}

/// One journaled event as the status follower needs it.
struct Step<'e> {
    /// Borrowed from the batch's events, owned when read back.
    location: std::borrow::Cow<'e, str>,
    version: i64,
    on_hand: i64,
    reserved: i64,
    /// None for rows journaled before these columns existed.
    settings: Option<(i64, i64, i64)>,
    occurred_at_ms: i64,
}

/// Follows the statuses of the SKUs that `inserted` (the events the
/// caller's transaction has just inserted, none of them there before)
/// touched; returns how many notifications were new.
pub async fn record(client: &impl GenericClient, inserted: &[&Event]) -> Result<u64, StoreError> {
    // A stock bucket's status is not its SKU's: buckets notify nothing.
    let skus: BTreeSet<&str> = inserted
        .iter()
        .map(|e| e.sku.as_str())
        .filter(|sku| !sku.contains(crate::inventory::BUCKET_MARK))
        .collect();
    if skus.is_empty() {
        return Ok(0);
    }
    let skus: Vec<&str> = skus.into_iter().collect();
    advance(client, &skus, Gaps::Wait, Source::Inserted(inserted)).await
}

/// Where the events past a SKU's considered version are read from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The journal table.
    Journal,
    /// These events, just inserted by the caller's transaction, where they
    /// are all there is: the SKU waits at no gap (so every event journaled
    /// before was considered) and they continue its considered version
    /// without a break. Otherwise the journal table.
    Inserted(&'a [&'a Event]),
}

/// The steps of `sku` in `inserted` if they are exactly the versions after
/// `considered`, in order; `None` when the journal must be read.
fn steps_in<'e>(inserted: &[&'e Event], sku: &str, considered: i64) -> Option<Vec<Step<'e>>> {
    let mut mine: Vec<&Event> = inserted
        .iter()
        .copied()
        .filter(|e| e.sku == sku && e.version > considered)
        .collect();
    mine.sort_by_key(|e| e.version);
    let contiguous = mine
        .iter()
        .enumerate()
        .all(|(i, e)| e.version == considered + 1 + i as i64);
    contiguous.then(|| {
        mine.iter()
            .map(|e| Step {
                location: std::borrow::Cow::Borrowed(e.location.as_str()),
                version: e.version,
                on_hand: e.on_hand,
                reserved: e.reserved,
                settings: Some((e.safety_stock, e.low_stock_threshold, e.backorder_limit)),
                occurred_at_ms: e.occurred_at_ms,
            })
            .collect()
    })
}

/// Advances each of `skus` (sorted) through its journaled events.
pub async fn advance(
    client: &impl GenericClient,
    skus: &[&str],
    gaps: Gaps,
    source: Source<'_>,
) -> Result<u64, StoreError> {
    const LOCK: &str = "SELECT sku, status, version, locations::text, gap_since IS NOT NULL
         FROM sku_status WHERE sku = ANY($1) ORDER BY sku FOR UPDATE";
    // Sorted, so that writers lock in one order.
    // Cached per connection: these run with every journal write.
    let lock = client.prepare_cached(LOCK).await?;
    let mut rows = client.query(&lock, &[&skus]).await?;
    if rows.len() < skus.len() {
        // SKUs seen for the first time (a statement only then, not per write).
        let known: BTreeSet<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let new: Vec<&str> = skus
            .iter()
            .copied()
            .filter(|s| !known.contains(*s))
            .collect();
        client
            .execute(
                "INSERT INTO sku_status (sku, status, version, locations, updated_at)
                 SELECT sku, NULL, 0, '{}', now() FROM unnest($1::text[]) AS t(sku)
                 ON CONFLICT DO NOTHING",
                &[&new],
            )
            .await?;
        rows.extend(client.query(&lock, &[&new]).await?);
    }
    let mut followed = Vec::with_capacity(rows.len());
    for row in &rows {
        let sku: String = row.try_get(0)?;
        let status: Option<String> = row.try_get(1)?;
        let considered: i64 = row.try_get(2)?;
        let locations: String = row.try_get(3)?;
        let waited: bool = row.try_get(4)?;
        let steps = match source {
            Source::Inserted(inserted) if !waited => steps_in(inserted, &sku, considered),
            _ => None,
        };
        followed.push((sku, status, considered, locations, steps));
    }
    // One read of the journal for every SKU its batch does not settle.
    let places: Vec<(&str, i64)> = followed
        .iter()
        .filter(|f| f.4.is_none())
        .map(|(sku, _, version, _, _)| (sku.as_str(), *version))
        .collect();
    let mut read = if places.is_empty() {
        HashMap::new()
    } else {
        steps_after(client, &places).await?
    };
    let mut transitions = Vec::new();
    let mut updates: Vec<(String, Option<&'static str>, i64, String, bool)> = Vec::new();
    for (sku, status, mut considered, locations, steps) in followed {
        let steps = match steps {
            Some(steps) => steps,
            None => read.remove(&sku).unwrap_or_default(),
        };
        let mut status = status.as_deref().and_then(StockStatus::parse);
        let mut locations = parse_locations(&locations);
        let mut waiting = steps.len() as i64 >= EVENTS_PER_SKU_MAX;
        for step in steps {
            if step.version <= considered {
                continue;
            }
            if step.version != considered + 1 && gaps == Gaps::Wait {
                waiting = true;
                break;
            }
            // `get_mut` first: the location is nearly always known, and
            // `entry` would allocate its name for every event.
            let counts = match locations.get_mut(step.location.as_ref()) {
                Some(counts) => counts,
                None => locations.entry(step.location.to_string()).or_default(),
            };
            counts.on_hand = step.on_hand;
            counts.reserved = step.reserved;
            if let Some((ss, lt, bl)) = step.settings {
                counts.safety_stock = ss;
                counts.low_stock_threshold = lt;
                counts.backorder_limit = bl;
            }
            considered = step.version;
            // Per event only the status; the whole view only at a change.
            let to = InventoryView::status_of(locations.values());
            if let Some(from) = status
                && let Some(kind) = notification_type(from, to)
            {
                let view = InventoryView::from_locations(
                    &sku,
                    u64::try_from(considered).unwrap_or(0),
                    locations.iter().map(|(name, c)| (name.as_str(), *c)),
                );
                transitions.push(Transition {
                    sku: sku.clone(),
                    kind,
                    from,
                    to,
                    version: considered,
                    view: serde_json::to_value(&view).unwrap_or_default(),
                    occurred_at_ms: step.occurred_at_ms,
                });
            }
            status = Some(to);
        }
        updates.push((
            sku,
            status.map(StockStatus::as_str),
            considered,
            render_locations(&locations),
            waiting,
        ));
    }
    let names: Vec<&str> = updates.iter().map(|u| u.0.as_str()).collect();
    let statuses: Vec<Option<&str>> = updates.iter().map(|u| u.1).collect();
    let versions: Vec<i64> = updates.iter().map(|u| u.2).collect();
    let locations: Vec<&str> = updates.iter().map(|u| u.3.as_str()).collect();
    let waiting: Vec<bool> = updates.iter().map(|u| u.4).collect();
    let update = client
        .prepare_cached(
            "UPDATE sku_status s SET status = t.status, version = t.version,
                 locations = t.locations::jsonb, updated_at = now(),
                 gap_since = CASE WHEN t.waiting THEN coalesce(s.gap_since, now()) END
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::bool[])
                 AS t(sku, status, version, locations, waiting)
             WHERE s.sku = t.sku",
        )
        .await?;
    client
        .execute(
            &update,
            &[&names, &statuses, &versions, &locations, &waiting],
        )
        .await?;
    insert(client, &transitions).await
}

/// Each SKU's journaled events past its version, in version order (at
/// most `EVENTS_PER_SKU_MAX` each), in one statement.
async fn steps_after(
    client: &impl GenericClient,
    places: &[(&str, i64)],
) -> Result<HashMap<String, Vec<Step<'static>>>, StoreError> {
    let skus: Vec<&str> = places.iter().map(|p| p.0).collect();
    let versions: Vec<i64> = places.iter().map(|p| p.1).collect();
    let rows = client
        .query(
            "SELECT t.sku, e.location, e.version, e.on_hand_after, e.reserved_after,
                 e.safety_stock_after, e.low_stock_threshold_after, e.backorder_limit_after,
                 (extract(epoch FROM e.occurred_at) * 1000)::int8
             FROM unnest($1::text[], $2::int8[]) AS t(sku, version)
             CROSS JOIN LATERAL (
                 SELECT * FROM inventory_events i
                 WHERE i.sku = t.sku AND i.version > t.version
                 ORDER BY i.version LIMIT $3
             ) e
             ORDER BY t.sku, e.version",
            &[&skus, &versions, &EVENTS_PER_SKU_MAX],
        )
        .await?;
    let mut steps: HashMap<String, Vec<Step<'static>>> = HashMap::with_capacity(places.len());
    for r in &rows {
        let ss: Option<i64> = r.try_get(5)?;
        let lt: Option<i64> = r.try_get(6)?;
        let bl: Option<i64> = r.try_get(7)?;
        let step = Step {
            location: std::borrow::Cow::Owned(r.try_get(1)?),
            version: r.try_get(2)?,
            on_hand: r.try_get(3)?,
            reserved: r.try_get(4)?,
            settings: ss.zip(lt).zip(bl).map(|((ss, lt), bl)| (ss, lt, bl)),
            occurred_at_ms: r.try_get(8)?,
        };
        steps.entry(r.try_get(0)?).or_default().push(step);
    }
    Ok(steps)
}

/// The inventory view of `sku` at `version` from `sku_status.locations`.
pub fn view_at(sku: &str, version: i64, locations: &str) -> InventoryView {
    let locations = parse_locations(locations);
    InventoryView::from_locations(
        sku,
        u64::try_from(version).unwrap_or(0),
        locations.iter().map(|(name, c)| (name.as_str(), *c)),
    )
}

/// `{"<location>": [on_hand, reserved, safety_stock, low_stock_threshold,
/// backorder_limit]}`, as `sku_status.locations` stores them.
fn parse_locations(text: &str) -> Locations {
    let parsed: BTreeMap<String, [i64; 5]> = serde_json::from_str(text).unwrap_or_default();
    parsed
        .into_iter()
        .map(|(name, [oh, rs, ss, lt, bl])| {
            let counts = Counts {
                on_hand: oh,
                reserved: rs,
                safety_stock: ss,
                low_stock_threshold: lt,
                backorder_limit: bl,
            };
            (name, counts)
        })
        .collect()
}

fn render_locations(locations: &Locations) -> String {
    let plain: BTreeMap<&str, [i64; 5]> = locations
        .iter()
        .map(|(name, c)| {
            let row = [
                c.on_hand,
                c.reserved,
                c.safety_stock,
                c.low_stock_threshold,
                c.backorder_limit,
            ];
            (name.as_str(), row)
        })
        .collect();
    serde_json::to_string(&plain).unwrap_or_else(|_| "{}".into())
}

/// SKUs whose events wait for a missing version: advanced as far as they
/// can go, and past the gap once it is older than `gap_wait`. Returns the
/// notifications made.
pub async fn sweep_gaps(
    client: &mut deadpool_postgres::Client,
    gap_wait: std::time::Duration,
) -> Result<u64, StoreError> {
    let waiting = client
        .query(
            "SELECT sku, gap_since < now() - make_interval(secs => $1) FROM sku_status
             WHERE gap_since IS NOT NULL ORDER BY gap_since LIMIT 100",
            &[&gap_wait.as_secs_f64()],
        )
        .await?;
    let mut made = 0;
    for row in waiting {
        let sku: String = row.try_get(0)?;
        let stale: bool = row.try_get(1)?;
        let gaps = if stale { Gaps::Skip } else { Gaps::Wait };
        let tx = client.transaction().await?;
        made += advance(&tx, &[sku.as_str()], gaps, Source::Journal).await?;
        tx.commit().await?;
        if stale {
            tracing::warn!(
                sku,
                "stock notifications went past versions the journal never got"
            );
        }
    }
    Ok(made)
}

/// Inserts the notifications and a pending delivery for every live webhook
/// that wants each.
async fn insert(
    client: &impl GenericClient,
    transitions: &[Transition],
) -> Result<u64, StoreError> {
    if transitions.is_empty() {
        return Ok(0);
    }
    let col = |f: fn(&Transition) -> String| transitions.iter().map(f).collect::<Vec<String>>();
    let ids = col(|t| format!("{}:{}", t.sku, t.version));
    let kinds = col(|t| t.kind.to_owned());
    let skus = col(|t| t.sku.clone());
    let from = col(|t| t.from.as_str().to_owned());
    let to = col(|t| t.to.as_str().to_owned());
    let versions: Vec<i64> = transitions.iter().map(|t| t.version).collect();
    let views: Vec<serde_json::Value> = transitions.iter().map(|t| t.view.clone()).collect();
    let times: Vec<i64> = transitions.iter().map(|t| t.occurred_at_ms).collect();
    let views = serde_json::Value::Array(views).to_string();
    let new: i64 = client
        .query_one(
            "WITH new AS (
                 INSERT INTO stock_notifications
                     (id, type, sku, previous_status, status, version, view, occurred_at)
                 SELECT id, type, sku, prev, status, version, $7::text::jsonb -> (ord - 1)::int,
                     to_timestamp(ts / 1000.0)
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::int8[], $8::int8[]) WITH ORDINALITY
                     AS t(id, type, sku, prev, status, version, ts, ord)
                 ON CONFLICT DO NOTHING
                 RETURNING id, type, sku
             ), deliveries AS (
                 INSERT INTO webhook_deliveries
                     (id, webhook_id, notification_id, status, next_attempt_at, created_at)
                 SELECT gen_random_uuid()::text, w.id, new.id, 'pending', now(), now()
                 FROM new JOIN webhooks w ON w.deleted_at IS NULL
                     AND new.type = ANY(w.events)
                     AND (w.skus IS NULL OR new.sku = ANY(w.skus))
                 ON CONFLICT DO NOTHING
             )
             SELECT count(*) FROM new",
            &[&ids, &kinds, &skus, &from, &to, &versions, &views, &times],
        )
        .await?
        .try_get(0)?;
    let new = u64::try_from(new).unwrap_or(0);
    metrics::counter!(crate::metrics::WEBHOOK_NOTIFICATIONS_TOTAL).increment(new);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use StockStatus::*;

    #[test]
    fn each_change_of_status_has_one_name() {
        assert_eq!(notification_type(InStock, LowStock), Some("stock.low"));
        assert_eq!(notification_type(LowStock, OutOfStock), Some("stock.out"));
        assert_eq!(notification_type(InStock, OutOfStock), Some("stock.out"));
        assert_eq!(
            notification_type(OutOfStock, LowStock),
            Some("stock.back_in")
        );
        assert_eq!(notification_type(Backorder, InStock), Some("stock.back_in"));
        assert_eq!(
            notification_type(LowStock, Backorder),
            Some("stock.backorder")
        );
        assert_eq!(notification_type(Backorder, OutOfStock), Some("stock.out"));
        assert_eq!(notification_type(LowStock, InStock), None);
        assert_eq!(notification_type(OutOfStock, OutOfStock), None);
    }
}
