//! The script registry: every file in `lua/`, with the shared prelude
//! prepended, identified by its SHA-1 and called with `EVALSHA`.
//!
//! Redis does not replicate its script cache, so a replica promoted after a
//! failover (or a `SCRIPT FLUSH`) answers NOSCRIPT: the caller reloads the
//! script on every primary and tries once more.

use fred::types::scripts::Script as FredScript;

const PRELUDE: &str = include_str!("../../lua/prelude.lua");

/// One variant per file in `lua/`; the file stem is also the script's name
/// in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptName {
    Reserve,
    Settle,
    Expire,
    Reservation,
    SetStock,
    Adjust,
    SetPolicy,
    Restore,
    Fence,
    RateLimit,
    Amend,
    Cart,
    Room,
    Bucket,
}

impl ScriptName {
    pub const ALL: [ScriptName; 14] = [
        Self::Reserve,
        Self::Settle,
        Self::Expire,
        Self::Reservation,
        Self::SetStock,
        Self::Adjust,
        Self::SetPolicy,
        Self::Restore,
        Self::Fence,
        Self::RateLimit,
        Self::Amend,
        Self::Cart,
        Self::Room,
        Self::Bucket,
    ];

    pub fn stem(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Settle => "settle",
            Self::Expire => "expire",
            Self::Reservation => "reservation",
            Self::SetStock => "set_stock",
            Self::Adjust => "adjust",
            Self::SetPolicy => "set_policy",
            Self::Restore => "restore",
            Self::Fence => "fence",
            Self::RateLimit => "rate_limit",
            Self::Amend => "amend",
            Self::Cart => "cart",
            Self::Room => "room",
            Self::Bucket => "bucket",
        }
    }

    /// Whether the script runs while the gateway holds the SKU's slot fenced
    /// after a failover (see `route`): the scripts that check and repair a
    /// SKU, and those that keep no stock (the rate limiter, cart records).
    pub fn runs_while_fenced(self) -> bool {
        matches!(
            self,
            Self::Restore | Self::Fence | Self::RateLimit | Self::Reservation | Self::Cart
        )
    }

    fn body(self) -> &'static str {
        match self {
            Self::Reserve => include_str!("../../lua/reserve.lua"),
            Self::Settle => include_str!("../../lua/settle.lua"),
            Self::Expire => include_str!("../../lua/expire.lua"),
            Self::Reservation => include_str!("../../lua/reservation.lua"),
            Self::SetStock => include_str!("../../lua/set_stock.lua"),
            Self::Adjust => include_str!("../../lua/adjust.lua"),
            Self::SetPolicy => include_str!("../../lua/set_policy.lua"),
            Self::Restore => include_str!("../../lua/restore.lua"),
            Self::Fence => include_str!("../../lua/fence.lua"),
            Self::RateLimit => include_str!("../../lua/rate_limit.lua"),
            Self::Amend => include_str!("../../lua/amend.lua"),
            Self::Cart => include_str!("../../lua/cart.lua"),
            Self::Room => include_str!("../../lua/room.lua"),
            Self::Bucket => include_str!("../../lua/bucket.lua"),
        }
    }
}

/// The compiled-in scripts with their hashes; cheap to share.
#[derive(Debug)]
pub struct Scripts {
    scripts: Vec<FredScript>,
}

impl Default for Scripts {
    fn default() -> Self {
        let scripts = ScriptName::ALL
            .iter()
            .map(|name| FredScript::from_lua(format!("{PRELUDE}\n{}", name.body())))
            .collect();
        Self { scripts }
    }
}

impl Scripts {
    pub fn get(&self, name: ScriptName) -> &FredScript {
        // ALL lists every variant in declaration order, so the index exists.
        &self.scripts[name as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (ScriptName, &FredScript)> {
        ScriptName::ALL.into_iter().zip(self.scripts.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_follows_declaration_order() {
        for (i, name) in ScriptName::ALL.iter().enumerate() {
            assert_eq!(*name as usize, i);
        }
    }

    #[test]
    fn every_script_file_opens_with_its_header() {
        for name in ScriptName::ALL {
            let first = name.body().lines().next().unwrap_or_default();
            assert!(
                first.starts_with(&format!("-- {}:", name.stem())),
                "lua/{}.lua starts with {first:?}",
                name.stem()
            );
        }
    }
}
