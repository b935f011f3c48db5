//! The inventory view clients see, computed from a SKU's Redis hash.
//!
//! Field names follow `lua/prelude.lua`: `ver`, policy fields, and
//! `l:<location>:<oh|rs|ss|lt|bo>` per location.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StockStatus {
    InStock,
    LowStock,
    OutOfStock,
    Backorder,
}

impl StockStatus {
    /// The name clients see (and the journal's `sku_status` stores).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InStock => "IN_STOCK",
            Self::LowStock => "LOW_STOCK",
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::Backorder => "BACKORDER",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::InStock,
            Self::LowStock,
            Self::OutOfStock,
            Self::Backorder,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// `available` units now, `low` the threshold, `backorder_room` units that
    /// can still be held beyond what is available.
    fn classify(available: i64, low: i64, backorder_room: i64) -> Self {
        match available {
            a if a > low => Self::InStock,
            a if a > 0 => Self::LowStock,
            _ if backorder_room > 0 => Self::Backorder,
            _ => Self::OutOfStock,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LocationView {
    pub location: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub safety_stock: i64,
    pub available: i64,
    pub status: StockStatus,
    pub low_stock_threshold: i64,
    pub backorder_limit: i64,
}

/// `GET /v1/inventory/{sku}`: totals over locations, then each location.
/// The top-level status compares the total available with the sum of the
/// locations' low-stock thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct InventoryView {
    pub sku: String,
    pub available: i64,
    pub on_hand: i64,
    pub reserved: i64,
    pub status: StockStatus,
    pub version: u64,
    pub locations: Vec<LocationView>,
}

/// One location's stored counts: what the Redis hash and the journal's
/// `stock_levels` both keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub on_hand: i64,
    pub reserved: i64,
    pub safety_stock: i64,
    pub low_stock_threshold: i64,
    pub backorder_limit: i64,
}

impl Counts {
    /// Units that can be sold now, never below 0 (lua/prelude.lua `available`).
    pub fn available(&self) -> i64 {
        (self.on_hand - self.reserved - self.safety_stock).max(0)
    }

    /// Units that can still be held, backorders included; negative while
    /// more is held than that (lua/prelude.lua `room`).
    pub fn room(&self) -> i64 {
        self.on_hand - self.safety_stock + self.backorder_limit - self.reserved
    }
}

impl InventoryView {
    /// Builds the view from `HGETALL` of the SKU hash; `None` when it is empty.
    pub fn from_hash<S: AsRef<str>>(sku: &str, fields: &[(S, S)]) -> Option<Self> {
        if fields.is_empty() {
            return None;
        }
        let mut version = 0;
        let mut locs: std::collections::BTreeMap<&str, Counts> = Default::default();
        for (field, value) in fields {
            let (field, value) = (field.as_ref(), value.as_ref());
            if field == "ver" {
                version = value.parse().unwrap_or(0);
                continue;
            }
            let Some((loc, attr)) = field.strip_prefix("l:").and_then(|f| f.rsplit_once(':'))
            else {
                continue;
            };
            let counts = locs.entry(loc).or_default();
            let n = value.parse().unwrap_or(0);
            match attr {
                "oh" => counts.on_hand = n,
                "rs" => counts.reserved = n,
                "ss" => counts.safety_stock = n,
                "lt" => counts.low_stock_threshold = n,
                "bo" => counts.backorder_limit = n,
                _ => {}
            }
        }
        Some(Self::from_locations(sku, version, locs))
    }

    /// Builds the view from each location's counts, in location order.
    /// The top-level status of these locations, as `from_locations`
    /// computes it, without building the view.
    pub fn status_of<'c>(locations: impl IntoIterator<Item = &'c Counts>) -> StockStatus {
        let (mut available, mut low, mut room) = (0, 0, 0);
        for c in locations {
            let avail = c.available();
            let holdable = c.room().max(0);
            available += avail;
            low += c.low_stock_threshold;
            room += holdable - avail;
        }
        StockStatus::classify(available, low, room)
    }

    pub fn from_locations<'l>(
        sku: &str,
        version: u64,
        locations: impl IntoIterator<Item = (&'l str, Counts)>,
    ) -> Self {
        let (mut available, mut on_hand, mut reserved, mut low, mut room) = (0, 0, 0, 0, 0);
        let locations = locations
            .into_iter()
            .map(|(name, c)| {
                let avail = c.available();
                let holdable = c.room().max(0);
                available += avail;
                on_hand += c.on_hand;
                reserved += c.reserved;
                low += c.low_stock_threshold;
                room += holdable - avail;
                LocationView {
                    location: name.to_owned(),
                    on_hand: c.on_hand,
                    reserved: c.reserved,
                    safety_stock: c.safety_stock,
                    available: avail,
                    status: StockStatus::classify(avail, c.low_stock_threshold, holdable - avail),
                    low_stock_threshold: c.low_stock_threshold,
                    backorder_limit: c.backorder_limit,
                }
            })
            .collect();
        Self {
            sku: sku.to_owned(),
            available,
            on_hand,
            reserved,
            status: StockStatus::classify(available, low, room),
            version,
            locations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(fields: &[(&str, &str)]) -> InventoryView {
        InventoryView::from_hash("S", fields).unwrap()
    }

    #[test]
    fn available_subtracts_reserved_and_safety_stock_and_sums_locations() {
        let v = view(&[
            ("ver", "7"),
            ("l:a:oh", "50"),
            ("l:a:rs", "13"),
            ("l:a:ss", "2"),
            ("l:b:oh", "5"),
            ("l:b:rs", "5"),
        ]);
        assert_eq!(
            (v.available, v.on_hand, v.reserved, v.version),
            (35, 55, 18, 7)
        );
        assert_eq!(v.locations[0].available, 35);
        assert_eq!(v.locations[1].status, StockStatus::OutOfStock);
        assert_eq!(v.status, StockStatus::InStock);
    }

    #[test]
    fn status_reads_low_stock_and_backorder() {
        let low = view(&[("l:a:oh", "3"), ("l:a:lt", "5")]);
        assert_eq!(low.status, StockStatus::LowStock);
        let bo = view(&[("l:a:oh", "2"), ("l:a:rs", "2"), ("l:a:bo", "3")]);
        assert_eq!(bo.status, StockStatus::Backorder);
        let owed = view(&[("l:a:oh", "-3"), ("l:a:bo", "3")]);
        assert_eq!(owed.status, StockStatus::OutOfStock);
        assert_eq!(owed.available, 0);
    }

    #[test]
    fn a_policy_only_sku_has_no_locations() {
        let v = view(&[("ver", "0"), ("max", "2")]);
        assert!(v.locations.is_empty());
        assert_eq!(v.status, StockStatus::OutOfStock);
    }
}
