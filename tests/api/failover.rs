//! A master of a Redis Cluster with replicas dies under load (`kill -9`):
//! only the SKUs in its slots notice, and they are served again once its
//! replica is promoted.

use std::time::{Duration, Instant};

use flashgate::{
    config::Settings,
    devstack::{self, ClusterNode, DevStack, redis_cli},
    inventory::Sku,
    redis::keys::Keys,
};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, TestApp, spawn_app_with, test_settings, token, unique_prefix};

/// `cluster-node-timeout` of the devstack's cluster nodes.
const NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// The master port serving `key`'s slot, from `CLUSTER NODES` of `port`.
fn master_of(port: u16, key: &str) -> u16 {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    let nodes = redis_cli(port, &["cluster", "nodes"]);
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        let node_port: u16 = fields[1]
            .split(['@', ':'])
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap();
        for range in &fields[8..] {
            let (start, end) = match range.split_once('-') {
                Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                None => (range.parse().unwrap(), range.parse().unwrap()),
            };
            if (start..=end).contains(&slot) {
                return node_port;
            }
        }
    }
    panic!("no master serves slot {slot}");
}

/// One reservation's answer and when it was sent.
struct Sent {
    at: Instant,
    status: StatusCode,
}

/// Sends reservations of `sku` at `per_second` for `length` over
/// `workers` connections; every answer with its send time.
async fn load(app: &TestApp, sku: &str, per_second: u32, length: Duration) -> Vec<Sent> {
    let workers = 8;
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let http = app.http.clone();
            let url = app.url("/v1/reservations");
            let sku = sku.to_owned();
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut i = w;
                loop {
                    let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(per_second));
                    if due > start + length {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let at = Instant::now();
                    let status = http
                        .post(&url)
                        .bearer_auth(token(&format!("shopper-{}", i % 5_000)))
                        .json(&json!({ "sku": sku, "qty": 1 }))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await
                        .map_or(StatusCode::BAD_GATEWAY, |r| r.status());
                    sent.push(Sent { at, status });
                    i += workers;
                }
                sent
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_by_key(|s| s.at);
    all
}

fn two_skus_on_two_masters(any_node: u16, keys: &Keys) -> (String, String, u16) {
    let master = |sku: &str| {
        let sku = Sku::parse(sku).unwrap();
        master_of(any_node, &keys.sku(keys.partition_of(&sku), &sku))
    };
    let victim = "FAILOVER-VICTIM-0".to_owned();
    let victim_master = master(&victim);
    let control = (0..100)
        .map(|i| format!("FAILOVER-CONTROL-{i}"))
        .find(|s| master(s) != victim_master)
        .unwrap();
    (victim, control, victim_master)
}

/// A cluster of three masters with a replica each, of the test's own, and
/// gateway settings for it.
struct Cluster {
    stack: DevStack,
    nodes: Vec<ClusterNode>,
    settings: Settings,
    keys: Keys,
}

impl Cluster {
    fn start(label: &str) -> Self {
        let mut stack = DevStack::create(label).unwrap();
        let nodes = stack.redis_cluster_with_replicas(3, 1).unwrap();
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let mut settings = test_settings(Backend::Cluster, &unique_prefix());
        settings.redis.url = devstack::cluster_url(&ports[..3]);
        let keys = Keys::new(&settings.redis.key_prefix, settings.redis.partitions);
        Self {
            stack,
            nodes,
            settings,
            keys,
        }
    }

    /// Kills the node on `port` as a crash would.
    fn kill(&mut self, port: u16) {
        let pid = self.nodes.iter().find(|n| n.port == port).unwrap().pid;
        self.stack.kill(pid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_master_only_stops_its_own_slots_until_its_replica_takes_over() {
    let mut cluster = Cluster::start("failover");
    let (victim, control, victim_master) =
        two_skus_on_two_masters(cluster.nodes[0].port, &cluster.keys);
    let app = spawn_app_with(cluster.settings.clone()).await;
    app.stock(&victim, 1_000_000).await;
    app.stock(&control, 1_000_000).await;

    let length = Duration::from_secs(12);
    let victim_load = load(&app, &victim, 100, length);
    let control_load = load(&app, &control, 100, length);
    let kill = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let killed_at = Instant::now();
        cluster.kill(victim_master);
        killed_at
    };
    let (victim_sent, control_sent, killed_at) = tokio::join!(victim_load, control_load, kill);

    for (what, sent) in [("victim", &victim_sent), ("control", &control_sent)] {
        let unexpected: Vec<_> = sent
            .iter()
            .filter(|s| {
                s.status != StatusCode::CREATED && s.status != StatusCode::SERVICE_UNAVAILABLE
            })
            .map(|s| s.status)
            .collect();
        assert!(
            unexpected.is_empty(),
            "{what}: answers other than 201 and 503: {unexpected:?}"
        );
    }
    // The control SKU's master never stopped: its SKU barely notices.
    let after_kill: Vec<_> = control_sent.iter().filter(|s| s.at >= killed_at).collect();
    let served = after_kill
        .iter()
        .filter(|s| s.status == StatusCode::CREATED)
        .count();
    assert!(
        served * 100 >= after_kill.len() * 99,
        "the control SKU on a healthy master was answered 201 for only {served} of {} requests after the kill",
        after_kill.len()
    );
    // The victim's SKU is served again once the replica is promoted.
    let failed = victim_sent
        .iter()
        .filter(|s| s.at >= killed_at && s.status != StatusCode::CREATED)
        .count();
    assert!(failed > 0, "the victim SKU never noticed its master die");
    let back = victim_sent
        .iter()
        .filter(|s| s.at >= killed_at)
        .skip_while(|s| s.status == StatusCode::CREATED)
        .find(|s| s.status == StatusCode::CREATED)
        .map(|s| s.at - killed_at)
        .expect("the victim SKU was not served again");
    assert!(
        back <= NODE_TIMEOUT + Duration::from_secs(5),
        "the victim SKU was served again only {back:?} after the kill"
    );
    eprintln!(
        "failover: control {served}/{} 201 after the kill; victim served again {back:?} after it ({failed} refused)",
        after_kill.len()
    );
}

/// With `redis.confirm_wait_replicas = 1` a confirmation is acknowledged
/// only once a replica has it: every acknowledged one survives its master's
/// death, and with no replica left a confirmation answers 503 (it is
/// applied on the master; the retry answers the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_acknowledged_confirmations_survive_their_master() {
    let mut cluster = Cluster::start("failover-wait");
    cluster.settings.redis.confirm_wait_replicas = 1;
    cluster.settings.redis.wait_timeout_ms = 200;
    let settings = cluster.settings.clone();
    let (sku, _, master) = two_skus_on_two_masters(cluster.nodes[0].port, &cluster.keys);
    let app = spawn_app_with(settings.clone()).await;
    app.stock(&sku, 100).await;

    let mut confirmed = Vec::new();
    for i in 0..20 {
        let t = token(&format!("waiter-{i}"));
        let held = app.reserve(&t, json!({ "sku": sku, "qty": 1 }), None).await;
        assert_eq!(held.status, StatusCode::CREATED, "{:?}", held.body);
        let id = held.body["reservation_id"].as_str().unwrap().to_owned();
        let r = app.reservation(&t, &id, Some("confirm")).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        confirmed.push((t, id));
    }
    // One more hold, to confirm once no replica is left.
    let last_token = token("waiter-last");
    let last = app
        .reserve(&last_token, json!({ "sku": sku, "qty": 1 }), None)
        .await;
    assert_eq!(last.status, StatusCode::CREATED);
    let last_id = last.body["reservation_id"].as_str().unwrap().to_owned();

    cluster.kill(master);
    // Every acknowledged confirmation is on the promoted replica.
    let deadline = Instant::now() + NODE_TIMEOUT + Duration::from_secs(8);
    for (t, id) in &confirmed {
        let status = loop {
            let r = app.reservation(t, id, None).await;
            if r.status == StatusCode::OK || Instant::now() > deadline {
                break r.body["status"].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status, "confirmed", "{id} after the failover");
    }
    let db = crate::harness::journal_db(&settings.postgres.url).await;
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM reservations WHERE sku = $1 AND state = 'confirmed'",
            &[&sku],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 20, "every acknowledged confirmation is in Postgres");
    // The promoted replica has no replica of its own: nothing can
    // acknowledge a confirmation, which answers 503 (applied on the master).
    let r = app
        .reservation(&last_token, &last_id, Some("confirm"))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.code(), "unavailable");
    let read = app.reservation(&last_token, &last_id, None).await;
    assert_eq!(read.body["status"], "confirmed");
    let again = app
        .reservation(&last_token, &last_id, Some("confirm"))
        .await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
}
