//! A master of a Redis Cluster with replicas dies under load (`kill -9`):
//! only the SKUs in its slots notice, and they are served again once its
//! replica is promoted.

use std::time::{Duration, Instant};

use flashgate::{config::Settings, inventory::Sku, redis::keys::Keys};
use flashgate_dev::devstack::{self, ClusterNode, DevStack, redis_cli};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{
    Backend, GatewayProcess, TestApp, metric_value, spawn_app_with, test_settings, token,
    unique_prefix,
};

/// `cluster-node-timeout` of the devstack's cluster nodes.
const NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// The master port serving `key`'s slot, from `CLUSTER NODES` of `port`.
pub(crate) fn master_of(port: u16, key: &str) -> u16 {
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
        settings.redis.url = devstack::cluster_url(&ports[..3]).into();
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
    // No hold outlives a 503 (and none acknowledged is missing): once the
    // orphan releaser and the failover check are done, the victim holds
    // exactly the units its 201s were given.
    let created = victim_sent
        .iter()
        .filter(|s| s.status == StatusCode::CREATED)
        .count() as i64;
    let deadline = Instant::now() + orphans_settled();
    let reserved = loop {
        let view = app.view(&victim).await;
        let reserved = view.body["reserved"].as_i64();
        if reserved == Some(created) || Instant::now() > deadline {
            break reserved;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        reserved,
        Some(created),
        "the victim holds other units than its {created} 201s were given"
    );
    eprintln!(
        "failover: control {served}/{} 201 after the kill; victim served again {back:?} after it ({failed} refused)",
        after_kill.len()
    );
}

/// Longest wait for the orphan releaser to give back holds made for 503
/// answers: its grace plus a few of its rounds.
fn orphans_settled() -> Duration {
    flashgate::service::orphans::ORPHAN_GRACE + Duration::from_secs(3)
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
    let db = crate::harness::journal_db(settings.postgres.url.expose()).await;
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
    // Until the failover check lifts the slot's fence it answers 503
    // sku-recovering instead, having run nothing: retried as a client would.
    let r = loop {
        let r = app
            .reservation(&last_token, &last_id, Some("confirm"))
            .await;
        if r.code() != "sku-recovering" || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.code(), "unavailable");
    let read = app.reservation(&last_token, &last_id, None).await;
    assert_eq!(read.body["status"], "confirmed");
    let again = app
        .reservation(&last_token, &last_id, Some("confirm"))
        .await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// The replica of the master on `master_port`: its port, from `CLUSTER NODES`.
fn replica_of(any_node: u16, master_port: u16) -> u16 {
    let nodes = redis_cli(any_node, &["cluster", "nodes"]);
    let fields =
        |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_owned).collect() };
    let port_of = |f: &[String]| -> u16 {
        f[1].split(['@', ':'])
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap()
    };
    let master_id = nodes
        .lines()
        .map(fields)
        .find(|f| f.len() > 2 && port_of(f) == master_port)
        .map(|f| f[0].clone())
        .unwrap();
    nodes
        .lines()
        .map(fields)
        .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == master_id)
        .map(|f| port_of(&f))
        .expect("the master has a replica")
}

/// Sends SIGSTOP or SIGCONT to a process.
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

/// Redis loses acknowledged writes on a failover when the replica had not
/// received them: here the replica is stopped and its link cut before the
/// writes, its master killed, and the stale replica promoted with `CLUSTER
/// FAILOVER TAKEOVER`. Without `WAIT`, the writes were acknowledged and
/// journaled; the gateway must notice that the promoted replica lacks them,
/// sell nothing from its stale state (where the sold units look free), and
/// serve the SKU again once it is rebuilt to the journal's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_a_failover_lost_are_fenced_and_rebuilt_before_anything_is_sold() {
    let mut cluster = Cluster::start("failover-lost");
    let settings = cluster.settings.clone();
    let (sku, _, master) = two_skus_on_two_masters(cluster.nodes[0].port, &cluster.keys);
    let replica = replica_of(cluster.nodes[0].port, master);
    let replica_pid = cluster
        .nodes
        .iter()
        .find(|n| n.port == replica)
        .unwrap()
        .pid;
    let app = spawn_app_with(settings.clone()).await;
    app.stock(&sku, 5).await;
    let first = token("lost-0");
    let held = app
        .reserve(&first, json!({ "sku": sku, "qty": 1 }), None)
        .await;
    assert_eq!(held.status, StatusCode::CREATED);
    let first_id = held.body["reservation_id"].as_str().unwrap().to_owned();
    assert_eq!(redis_cli(master, &["wait", "1", "2000"]).trim(), "1");

    // The replica stops receiving: what follows exists on the master only.
    signal(replica_pid, "-STOP");
    redis_cli(master, &["client", "kill", "type", "replica"]);
    let mut holds = Vec::new();
    for i in 1..5 {
        let t = token(&format!("lost-{i}"));
        let r = app.reserve(&t, json!({ "sku": sku, "qty": 1 }), None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        holds.push((t, r.body["reservation_id"].as_str().unwrap().to_owned()));
    }
    let r = app.reservation(&first, &first_id, Some("confirm")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let db = crate::harness::journal_db(settings.postgres.url.expose()).await;
    let journaled = || async {
        db.query_one(
            "SELECT count(*) FROM inventory_events WHERE sku = $1",
            &[&sku],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // stock_set, five holds and the confirmation.
    while journaled().await < 7 {
        assert!(Instant::now() < deadline, "the journal did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.kill(master);
    signal(replica_pid, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis_cli(replica, &["cluster", "failover", "takeover"]).contains("OK") {
        assert!(
            Instant::now() < deadline,
            "the replica refused to take over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = Instant::now();

    // The promoted replica shows 4 units free; the journal says 0.
    let mut answers = Vec::new();
    let deadline = promoted + NODE_TIMEOUT + Duration::from_secs(8);
    let mut n = 0;
    loop {
        n += 1;
        let r = app
            .reserve(
                &token(&format!("late-{n}")),
                json!({ "sku": sku, "qty": 1 }),
                None,
            )
            .await;
        assert_ne!(
            r.status,
            StatusCode::CREATED,
            "sold from stale state: {:?}",
            r.body
        );
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(r.header("retry-after").is_some());
        }
        let code = r.code().to_owned();
        answers.push(code.clone());
        if code == "insufficient-stock" {
            break;
        }
        assert!(Instant::now() < deadline, "not served again: {answers:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let back = promoted.elapsed();
    assert!(
        answers.iter().any(|c| c == "sku-recovering"),
        "the SKU was never fenced: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|c| ["sku-recovering", "unavailable", "insufficient-stock"].contains(&c.as_str())),
        "{answers:?}"
    );

    // Rebuilt to the journal's state: every acknowledged write is back.
    let view = app.view(&sku).await.body;
    assert_eq!(
        (&view["on_hand"], &view["reserved"], &view["available"]),
        (&json!(4), &json!(4), &json!(0)),
        "{view}"
    );
    for (t, id) in &holds {
        let r = app.reservation(t, id, None).await;
        assert_eq!(r.body["status"], "held", "{id}: {:?}", r.body);
    }
    let r = app.reservation(&first, &first_id, None).await;
    assert_eq!(r.body["status"], "confirmed");
    let versions: (i64, i64) = {
        let row = db
            .query_one(
                "SELECT max(version) FROM stock_levels WHERE sku = $1",
                &[&sku],
            )
            .await
            .unwrap();
        (row.get(0), view["version"].as_i64().unwrap())
    };
    assert!(
        versions.1 >= versions.0,
        "redis {} behind the journal {}",
        versions.1,
        versions.0
    );
    // Served again: a release gives a unit that can be held at once.
    let (t, id) = &holds[0];
    let r = app.reservation(t, id, Some("release")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app
        .reserve(&token("after"), json!({ "sku": sku, "qty": 1 }), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        crate::harness::metric_value(&text, "flashgate_lost_write_skus_total", &[]) >= 1.0,
        "lost writes not counted"
    );
    eprintln!(
        "lost writes: fenced, rebuilt and served again {back:?} after the promotion; answers {:?}",
        answers
    );
}

/// Background calls the gateway at `metrics` made that failed to reach a
/// node (`kind="unavailable"`) or skipped one backing off
/// (`kind="backing_off"`), summed over the background work's commands.
fn background_calls(metrics: &str, kind: &str) -> f64 {
    let kind = format!("kind=\"{kind}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("flashgate_redis_errors_total{") && l.contains(&kind))
        .filter(|l| {
            ["sweeper", "stream_entries", "trim", "inventory", "rebuild"]
                .iter()
                .any(|s| l.contains(&format!("script=\"{s}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Three masters of their own, without replicas, that take a minute to call
/// a node failed (so a stall or a write pause in a test is not a failure to
/// the cluster: without replicas that would stop every master), and test
/// settings pointing at them.
pub fn stall_tolerant_cluster(stack: &mut DevStack) -> (Vec<ClusterNode>, Settings) {
    let nodes = stack.redis_cluster_with_replicas(3, 0).unwrap();
    for node in &nodes {
        redis_cli(
            node.port,
            &["config", "set", "cluster-node-timeout", "60000"],
        );
    }
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let mut settings = test_settings(Backend::Cluster, &unique_prefix());
    settings.redis.url = devstack::cluster_url(&ports).into();
    (nodes, settings)
}

/// A master that stops answering without being replaced (stalled for less
/// than the cluster's node timeout): the sweeper and the reconciler back
/// off from it instead of waiting a command timeout for each of its
/// partitions on every pass, requests for other masters are answered
/// throughout, and background work picks the master up again once it
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_work_backs_off_from_a_stalled_master_and_resumes_when_it_answers() {
    let mut stack = DevStack::create("backoff").unwrap();
    let (nodes, settings) = stall_tolerant_cluster(&mut stack);
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let keys = Keys::new(&settings.redis.key_prefix, settings.redis.partitions);
    let (stalled_sku, control, stalled) = two_skus_on_two_masters(ports[0], &keys);
    let stalled_pid = nodes.iter().find(|n| n.port == stalled).unwrap().pid;
    let mut gateway = GatewayProcess::start(&settings);
    gateway.wait_ready().await;
    let http = reqwest::Client::new();
    for sku in [&stalled_sku, &control] {
        gateway.stock(sku, 1000).await;
    }
    let metrics = || async {
        let r = http.get(gateway.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    };
    let before = metrics().await;

    signal(stalled_pid, "-STOP");
    let stall = Duration::from_secs(6);
    let stopped_at = Instant::now();
    let mut control_statuses = Vec::new();
    while stopped_at.elapsed() < stall {
        let r = http
            .post(gateway.url("/v1/reservations"))
            .bearer_auth(token("backoff-shopper"))
            .json(&json!({ "sku": control, "qty": 1 }))
            .send()
            .await
            .unwrap();
        control_statuses.push(r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = metrics().await;
    signal(stalled_pid, "-CONT");

    assert!(
        control_statuses.iter().all(|s| *s == StatusCode::CREATED),
        "a SKU on a healthy master was refused while another stalled: {control_statuses:?}"
    );
    // At least the stalled master; a healthy one slowed past the command
    // timeout by a loaded machine may be backed off for a moment too.
    let backing_off = metric_value(&during, "flashgate_redis_nodes_backing_off", &[]);
    assert!(
        backing_off >= 1.0,
        "the stalled master is not backed off ({backing_off} nodes are)"
    );
    let waited =
        background_calls(&during, "unavailable") - background_calls(&before, "unavailable");
    let skipped =
        background_calls(&during, "backing_off") - background_calls(&before, "backing_off");
    // A third of the partitions live on the stalled master: without the
    // backoff, every sweep (each 500 ms) and reconciler pass waits a 500 ms
    // command timeout for each of them, eight or four at a time (about 150
    // waits in 6 s). With it: the calls in flight when it stalled, then one
    // probe per doubling window.
    assert!(
        waited <= 40.0,
        "background work waited on the stalled master {waited} times ({skipped} skipped)"
    );
    assert!(
        skipped >= 50.0,
        "only {skipped} background calls skipped it"
    );

    let resumed = Instant::now();
    loop {
        let now = metrics().await;
        if metric_value(&now, "flashgate_redis_nodes_backing_off", &[]) == 0.0 {
            break;
        }
        assert!(
            // The next probe comes within one longest window of the last
            // failed one, once a sweep or reconciler pass asks for the node.
            // On a machine loaded by the rest of the suite a probe can miss
            // the 500 ms command timeout and cost another window (CI once
            // took over 11 s): a node never picked up again still fails.
            resumed.elapsed() < flashgate::redis::health::BACKOFF_MAX * 6 + Duration::from_secs(6),
            "background work did not pick the master up again in {:?}",
            resumed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .post(gateway.url("/v1/reservations"))
        .bearer_auth(token("backoff-shopper"))
        .json(&json!({ "sku": stalled_sku, "qty": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    eprintln!(
        "backoff: {waited} background waits and {skipped} skips on a master stalled {stall:?}; picked up {:?} after it answered",
        resumed.elapsed()
    );
}
