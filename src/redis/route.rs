//! Slot routing over one client pool per Redis Cluster master, so that a
//! dead or unreachable master only affects the slots it served.
//!
//! fred's clustered client runs every node's connection through one router
//! task: when one node's connection drops, that task reconnects to the whole
//! cluster and keeps trying while the dead node is still listed as a
//! master, and commands for the healthy nodes wait behind it until they
//! time out (measured: every SKU answered 503 for ~1.5 s after a master was
//! killed). Scripts, the request path's only Redis calls, go through
//! `Slots` instead: a table from slot to a centralized fred pool of the
//! master that serves it, each pool reconnecting on its own.
//!
//! The table comes from `CLUSTER SLOTS`, asked of the masters already known
//! (then of the configured nodes), and is refreshed every `REFRESH_INTERVAL`,
//! when a routed command answers `MOVED`/`ASK` (then it is retried on the
//! new owner) and when one fails to reach its node (in the background, at
//! most every `REFRESH_INTERVAL_MIN`): after a failover the promoted replica
//! gets its own pool and the dead master's pool is closed, failing the
//! commands still queued on it at once.
//!
//! A slot whose master changed (a failover, a manual takeover, a resharding)
//! is fenced in the same step that routes it to its new master, before any
//! command can reach it there: the promoted replica may lack writes the old
//! master acknowledged. Scripts that change stock refuse a fenced slot
//! (`RedisError::Fenced`) until the failover check (`service::recovery`)
//! has compared its SKUs with the journal, fenced and rebuilt those that
//! lost writes, and lifted the slot's fence.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use fred::{prelude::*, types::config::Server};
use tokio::time::Instant;

use super::health::Health;
use crate::config::RedisSettings;

/// Slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// Shortest time between two topology refreshes.
pub const REFRESH_INTERVAL_MIN: Duration = Duration::from_millis(200);

/// How often the table is read again when nothing failed: a failover is
/// noticed within this even by slots no request is touching.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait for one node's `CLUSTER SLOTS` answer during a refresh.
const TOPOLOGY_TIMEOUT: Duration = Duration::from_millis(500);

/// One master, the pool of connections to it, and how it has answered.
struct Node {
    server: Server,
    pool: Pool,
    health: Arc<Health>,
}

/// Which master serves each slot.
struct Table {
    nodes: Vec<Arc<Node>>,
    /// Index into `nodes` per slot; `None` while no master serves it.
    slots: Vec<Option<u16>>,
}

impl Table {
    fn empty() -> Self {
        Self {
            nodes: Vec::new(),
            slots: vec![None; SLOTS],
        }
    }
}

/// Slots whose master changed and that the failover check has not yet
/// cleared: one bit per slot, so bounded by `SLOTS`.
struct Fence {
    bits: Vec<AtomicU64>,
    /// When the oldest fence still up was raised; `None` while none is.
    since: std::sync::Mutex<Option<Instant>>,
    /// Woken when slots are fenced.
    raised: tokio::sync::Notify,
    /// Bumped by every raise, so a check that began before a newer fence
    /// does not lift it.
    generation: AtomicU64,
}

impl Fence {
    fn new() -> Self {
        Self {
            bits: (0..SLOTS / 64).map(|_| AtomicU64::new(0)).collect(),
            since: std::sync::Mutex::new(None),
            raised: tokio::sync::Notify::new(),
            generation: AtomicU64::new(0),
        }
    }

    fn word(&self, slot: u16) -> Option<(&AtomicU64, u64)> {
        let slot = usize::from(slot);
        Some((self.bits.get(slot / 64)?, 1 << (slot % 64)))
    }

    fn holds(&self, slot: u16) -> bool {
        self.word(slot)
            .is_some_and(|(word, bit)| word.load(Ordering::Acquire) & bit != 0)
    }

    fn raise(&self, slots: &[u16]) {
        if slots.is_empty() {
            return;
        }
        if let Ok(mut since) = self.since.lock() {
            since.get_or_insert_with(Instant::now);
        }
        for &slot in slots {
            if let Some((word, bit)) = self.word(slot) {
                word.fetch_or(bit, Ordering::AcqRel);
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.raised.notify_one();
    }

    /// Lifts `slots` unless a raise came after `generation` was read.
    fn lift(&self, slots: &[u16], generation: u64) {
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        for &slot in slots {
            if let Some((word, bit)) = self.word(slot) {
                word.fetch_and(!bit, Ordering::AcqRel);
            }
        }
        if self.bits.iter().all(|w| w.load(Ordering::Acquire) == 0)
            && let Ok(mut since) = self.since.lock()
        {
            *since = None;
        }
    }

    fn raised_slots(&self) -> Vec<u16> {
        let mut slots = Vec::new();
        for (i, word) in self.bits.iter().enumerate() {
            let mut bits = word.load(Ordering::Acquire);
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                slots.extend(u16::try_from(i * 64 + bit).ok());
            }
        }
        slots
    }
}

/// What `Slots::fenced_slots` reads.
#[derive(Debug, Clone, Default)]
pub struct FencedSlots {
    pub slots: Vec<u16>,
    pub since: Option<Instant>,
    pub generation: u64,
}

pub struct Slots {
    /// The connection settings every node's pool shares (URL options,
    /// timeouts, TLS), with the node's address put in.
    base: Config,
    settings: RedisSettings,
    /// The nodes named in `redis.url`, asked when no known master answers.
    seeds: Vec<Server>,
    table: RwLock<Arc<Table>>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    fence: Fence,
}

/// A slot range and the master serving it, from `CLUSTER SLOTS`.
type Range = (u16, u16, Server);

impl Slots {
    /// Connects to every master of the cluster at `settings.url`.
    pub async fn connect(settings: &RedisSettings, base: Config) -> anyhow::Result<Arc<Self>> {
        let seeds = match &base.server {
            ServerConfig::Clustered { hosts, .. } => hosts.clone(),
            _ => anyhow::bail!("slot routing needs a redis-cluster:// URL"),
        };
        let slots = Arc::new(Self {
            base,
            settings: settings.clone(),
            seeds,
            table: RwLock::new(Arc::new(Table::empty())),
            last_refresh: tokio::sync::Mutex::new(None),
            fence: Fence::new(),
        });
        // Never refreshed yet: this reads the table.
        slots
            .refresh()
            .await
            .context("reading the cluster's slots")?;
        let watched = Arc::downgrade(&slots);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(slots) = watched.upgrade() else {
                    return;
                };
                if let Err(e) = slots.refresh().await {
                    tracing::debug!(error = %e, "refreshing the cluster's slots failed");
                }
            }
        });
        Ok(slots)
    }

    /// A client of the master serving `slot` and that master's health, or
    /// `None` while no known master serves it.
    pub fn client_for(&self, slot: u16) -> Option<(Client, Arc<Health>)> {
        let table = self.table.read().ok()?;
        let node = table
            .nodes
            .get(usize::from(table.slots.get(usize::from(slot)).copied()??))?;
        Some((node.pool.next().clone(), node.health.clone()))
    }

    /// The master serving `slot`, as its address, or `None` while no known
    /// master serves it.
    pub fn master_of(&self, slot: u16) -> Option<String> {
        let table = self.table.read().ok()?;
        let node = table
            .nodes
            .get(usize::from(table.slots.get(usize::from(slot)).copied()??))?;
        Some(node.health.node().to_owned())
    }

    /// Whether `slot` is fenced: its master changed and the failover check
    /// has not cleared it yet.
    pub fn fenced(&self, slot: u16) -> bool {
        self.fence.holds(slot)
    }

    /// Every fenced slot now, since when the oldest fence has been up, and
    /// the fence's generation (for `unfence`).
    pub fn fenced_slots(&self) -> FencedSlots {
        let generation = self.fence.generation.load(Ordering::Acquire);
        FencedSlots {
            since: self.fence.since.lock().ok().and_then(|s| *s),
            slots: self.fence.raised_slots(),
            generation,
        }
    }

    /// Lifts the fence of `slots` (the failover check found nothing lost
    /// there, or has fenced and rebuilt the SKUs that lost writes), unless
    /// slots were fenced again after `generation` was read: then the next
    /// check looks again.
    pub fn unfence(&self, slots: &[u16], generation: u64) {
        self.fence.lift(slots, generation);
    }

    /// Returns when slots are fenced (at once if some were since the last
    /// call).
    pub async fn fence_raised(&self) {
        self.fence.raised.notified().await;
    }

    /// One client per known master (for commands every master must run).
    pub fn masters(&self) -> Vec<Client> {
        self.table.read().map_or_else(
            |_| Vec::new(),
            |t| t.nodes.iter().map(|n| n.pool.next().clone()).collect(),
        )
    }

    /// Every connection of every known master.
    pub fn all_clients(&self) -> Vec<Client> {
        self.table.read().map_or_else(
            |_| Vec::new(),
            |t| {
                t.nodes
                    .iter()
                    .flat_map(|n| n.pool.clients().to_vec())
                    .collect()
            },
        )
    }

    /// Refreshes the table in the background, unless a refresh ran less
    /// than `REFRESH_INTERVAL_MIN` ago.
    pub fn refresh_soon(self: &Arc<Self>) {
        let slots = self.clone();
        tokio::spawn(async move {
            if let Err(e) = slots.refresh().await {
                tracing::debug!(error = %e, "refreshing the cluster's slots failed");
            }
        });
    }

    /// Refreshes the table unless a refresh ran less than
    /// `REFRESH_INTERVAL_MIN` ago (then waits for it).
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL_MIN) {
            return Ok(());
        }
        let result = self.rebuild().await;
        *last = Some(Instant::now());
        result
    }

    /// Asks the known masters, then the seeds, for the slot table and
    /// swaps it in: pools are kept for masters that stay, made for new
    /// ones, and closed for nodes that no longer serve slots.
    async fn rebuild(&self) -> anyhow::Result<()> {
        let current = self.table.read().map(|t| t.clone()).ok();
        let ranges = self.read_ranges(current.as_deref()).await?;
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        let mut index: HashMap<Server, u16> = HashMap::new();
        let mut slots = vec![None; SLOTS];
        for (start, end, server) in ranges {
            let i = match index.get(&server) {
                Some(&i) => i,
                None => {
                    let kept = current
                        .as_ref()
                        .and_then(|t| t.nodes.iter().find(|n| n.server == server).cloned());
                    let node = match kept {
                        Some(node) => node,
                        None => Arc::new(self.open(&server)?),
                    };
                    let i = u16::try_from(nodes.len()).unwrap_or(u16::MAX);
                    nodes.push(node);
                    index.insert(server, i);
                    i
                }
            };
            let last = usize::from(end).min(SLOTS - 1);
            if let Some(range) = slots.get_mut(usize::from(start)..=last) {
                range.fill(Some(i));
            }
        }
        let changed = current.as_ref().is_none_or(|t| {
            t.slots != slots
                || t.nodes
                    .iter()
                    .map(|n| &n.server)
                    .ne(nodes.iter().map(|n| &n.server))
        });
        if let Some(old) = &current {
            for gone in old.nodes.iter().filter(|n| !index.contains_key(&n.server)) {
                tracing::info!(node = %gone.server, "a redis node serves no slots any more; closing its connections");
                let pool = gone.pool.clone();
                tokio::spawn(async move {
                    let _ = pool.quit().await;
                });
            }
        }
        if changed && let Some(old) = current.as_ref().filter(|t| !t.nodes.is_empty()) {
            let masters: Vec<String> = nodes.iter().map(|n| n.server.to_string()).collect();
            let moved = moved_slots(old, &nodes, &slots);
            tracing::info!(
                ?masters,
                slots_with_a_new_master = moved.len(),
                "the cluster's slot table changed"
            );
            // Fenced before the new table routes anything to the new masters.
            self.fence.raise(&moved);
        }
        if let Ok(mut table) = self.table.write() {
            *table = Arc::new(Table { nodes, slots });
        }
        Ok(())
    }

    /// `CLUSTER SLOTS` from the first node that answers.
    async fn read_ranges(&self, current: Option<&Table>) -> anyhow::Result<Vec<Range>> {
        let known = current.map(|t| t.nodes.clone()).unwrap_or_default();
        let mut last_error = None;
        for node in &known {
            match ranges_from(node.pool.next()).await {
                Ok(ranges) => return Ok(ranges),
                Err(e) => last_error = Some(e),
            }
        }
        for seed in self
            .seeds
            .iter()
            .filter(|s| !known.iter().any(|n| &n.server == *s))
        {
            let node = self.open(seed)?;
            let answer = ranges_from(node.pool.next()).await;
            let _ = node.pool.quit().await;
            match answer {
                Ok(ranges) => return Ok(ranges),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no redis node to ask")))
    }

    /// A pool of `redis.pool_size` connections to one node, connecting in
    /// the background (a command waits for it, within its timeout).
    fn open(&self, server: &Server) -> anyhow::Result<Node> {
        let mut config = self.base.clone();
        config.server = ServerConfig::Centralized {
            server: server.clone(),
        };
        let pool = super::pool_from(&self.settings, config)?;
        pool.connect();
        Ok(Node {
            health: Arc::new(Health::new(server.to_string())),
            server: server.clone(),
            pool,
        })
    }

    pub async fn quit(&self) {
        let nodes = self
            .table
            .read()
            .map(|t| t.nodes.clone())
            .unwrap_or_default();
        for node in nodes {
            let _ = node.pool.quit().await;
        }
    }
}

/// Slots that a master other than `old`'s serves in the table being built
/// (`nodes`, `slots`), counting a slot that had no master before.
fn moved_slots(old: &Table, nodes: &[Arc<Node>], slots: &[Option<u16>]) -> Vec<u16> {
    let server = |nodes: &[Arc<Node>], i: Option<u16>| {
        i.and_then(|i| nodes.get(usize::from(i)))
            .map(|n| n.server.clone())
    };
    (0..SLOTS)
        .filter(|&slot| {
            let now = server(nodes, slots.get(slot).copied().flatten());
            let before = server(&old.nodes, old.slots.get(slot).copied().flatten());
            now.is_some() && now != before
        })
        .filter_map(|slot| u16::try_from(slot).ok())
        .collect()
}

async fn ranges_from(client: &Client) -> anyhow::Result<Vec<Range>> {
    let value: Value = tokio::time::timeout(TOPOLOGY_TIMEOUT, client.cluster_slots())
        .await
        .context("CLUSTER SLOTS timed out")??;
    parse_ranges(value).context("parsing CLUSTER SLOTS")
}

/// `[[start, end, [host, port, id, …], replicas…], …]` → (start, end, master).
fn parse_ranges(value: Value) -> anyhow::Result<Vec<Range>> {
    let Value::Array(items) = value else {
        anyhow::bail!("not an array");
    };
    let mut ranges = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(parts) = item else {
            anyhow::bail!("a slot range is not an array");
        };
        let number = |v: Option<&Value>| {
            v.and_then(Value::as_i64)
                .and_then(|n| u16::try_from(n).ok())
        };
        let (Some(start), Some(end)) = (number(parts.first()), number(parts.get(1))) else {
            anyhow::bail!("a slot range without bounds");
        };
        let Some(Value::Array(master)) = parts.get(2) else {
            anyhow::bail!("a slot range without a master");
        };
        let host = master
            .first()
            .and_then(Value::as_string)
            .context("a master without a host")?;
        let port = number(master.get(1)).context("a master without a port")?;
        ranges.push((start, end, Server::new(host, port)));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_replies_become_ranges_of_masters() {
        let node = |host: &str, port: i64, id: &str| {
            Value::Array(vec![host.into(), Value::Integer(port), id.into()])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Integer(0),
                Value::Integer(5460),
                node("127.0.0.1", 7101, "a"),
                node("127.0.0.1", 7104, "d"),
            ]),
            Value::Array(vec![
                Value::Integer(5461),
                Value::Integer(16383),
                node("127.0.0.1", 7102, "b"),
            ]),
        ]);
        let ranges = parse_ranges(reply).unwrap();
        assert_eq!(
            ranges,
            vec![
                (0, 5460, Server::new("127.0.0.1", 7101)),
                (5461, 16383, Server::new("127.0.0.1", 7102)),
            ]
        );
        assert!(parse_ranges(Value::Integer(1)).is_err());
    }

    #[test]
    fn a_fence_holds_exactly_the_slots_raised_until_each_is_lifted() {
        let fence = Fence::new();
        assert!(fence.raised_slots().is_empty());
        fence.raise(&[0, 63, 64, 16_383]);
        assert!(fence.holds(63) && fence.holds(64) && fence.holds(16_383));
        assert!(!fence.holds(1) && !fence.holds(65));
        assert_eq!(fence.raised_slots(), vec![0, 63, 64, 16_383]);
        let since = *fence.since.lock().unwrap();
        assert!(since.is_some());
        let generation = fence.generation.load(Ordering::Acquire);
        fence.lift(&[0, 63, 64], generation);
        assert_eq!(fence.raised_slots(), vec![16_383]);
        assert_eq!(
            *fence.since.lock().unwrap(),
            since,
            "the oldest fence is still up"
        );
        fence.raise(&[5]);
        fence.lift(&[16_383], generation);
        assert!(
            fence.holds(16_383),
            "a check older than the last raise lifts nothing"
        );
        let generation = fence.generation.load(Ordering::Acquire);
        fence.lift(&[5, 16_383], generation);
        assert!(fence.raised_slots().is_empty());
        assert!(fence.since.lock().unwrap().is_none());
    }
}
