//! `flashgate-dev demo`: a whole flash sale on this machine, in one command.
//!
//! It starts a three-master Redis Cluster and a throwaway PostgreSQL (see
//! `devstack`), a gateway process against them, seeds a drop over two
//! locations with a per-account cap, and lets a crowd at it through the
//! open-model load generator. Then it confirms some holds, releases some and
//! lets the rest expire, waits for the journal, and checks what must never
//! happen: no unit oversold (by Redis and by Postgres), no account over its
//! cap, and Postgres agreeing with Redis on every count and every
//! acknowledged reservation. Any failed check makes the exit code 1.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use flashgate::{
    auth::{Auth, Role},
    inventory::AccountId,
};

use crate::{
    devstack::{self, DevStack},
    loadgen::{self, Conn, Outcome, Pace, Plan, Report, Workload, gateway::GatewayProcess},
};

/// The SKU the demo sells.
const SKU: &str = "SNEAKER-DROP-1";
/// Where its units are, as a share of the total: most in the east.
const LOCATIONS: [(&str, u32); 2] = [("east", 60), ("west", 40)];
/// Connections the crowd shares (keep-alive, one request at a time each).
const CROWD_CONNECTIONS: usize = 64;
/// Connections confirming and releasing holds after the crowd.
const SETTLE_CONNECTIONS: usize = 16;
/// How long the journal may take to agree with Redis once changes stop.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Units on sale, split 60/40 over two locations.
    #[arg(long, default_value_t = 1000)]
    pub units: u32,
    /// The per-account purchase cap.
    #[arg(long, default_value_t = 2)]
    pub per_account: u32,
    /// Reservation attempts the crowd makes.
    #[arg(long, default_value_t = 20_000)]
    pub attempts: u64,
    /// Distinct accounts in the crowd.
    #[arg(long, default_value_t = 5000)]
    pub accounts: u32,
    /// Attempts per second (open model: the crowd does not wait for answers).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// How long a hold lasts before it expires.
    #[arg(long, default_value_t = 10)]
    pub hold_ttl_seconds: u64,
    /// Spread the SKU's stock over this many stock buckets (2-64) on the
    /// cluster's masters (README, "Stock buckets"); 1: one hash, as usual.
    #[arg(long, default_value_t = 1)]
    pub buckets: u32,
    /// Put the drop behind a waiting room admitting this many shoppers per
    /// second (README, "The waiting room"): the crowd takes tickets, waits
    /// for its admission and reserves with it; 0: no room.
    #[arg(long, default_value_t = 0)]
    pub waiting_room: u32,
    /// Leave the servers and the gateway running, and print how to reach them.
    #[arg(long)]
    pub keep: bool,
}

/// One hold the crowd was granted (a 201).
#[derive(Debug, Clone)]
struct Hold {
    id: String,
    account: String,
    qty: u64,
}

struct Crowd {
    tokens: Vec<String>,
    /// At most one entry per unit on sale: the crowd only holds.
    holds: Mutex<Vec<Hold>>,
}

impl Workload for Crowd {
    async fn run(&self, conn: &mut Conn, i: u64) -> Outcome {
        let draw = splitmix(i);
        let account = (draw % self.tokens.len() as u64) as usize;
        let qty = 1 + (draw >> 32) % 2;
        let body = json!({ "sku": SKU, "qty": qty }).to_string();
        let token = &self.tokens[account];
        let Ok(response) = conn
            .send(Method::POST, "/v1/reservations", Some(token), Some(body))
            .await
        else {
            return Outcome::Failed;
        };
        if response.status == StatusCode::CREATED
            && let Some(id) = response
                .json()
                .and_then(|v| v["reservation_id"].as_str().map(str::to_owned))
            && let Ok(mut holds) = self.holds.lock()
        {
            holds.push(Hold {
                id,
                account: account_name(account),
                qty,
            });
        }
        Outcome::of(&response)
    }
}

/// Where one shopper of a waiting-room drop stands.
#[derive(Debug, Clone)]
enum Shopper {
    /// No ticket yet.
    New,
    /// Its ticket, not admitted yet.
    Waiting(String),
    /// Its ticket and admission token.
    Admitted(String, String),
    /// Held, or told the SKU is sold out.
    Done,
}

/// The crowd of a waiting-room drop: each attempt moves one shopper on
/// (take a ticket, read it, reserve with its admission); shoppers done try
/// once more without an admission, which the gateway must refuse.
struct RoomCrowd {
    tokens: Vec<String>,
    shoppers: Mutex<Vec<Shopper>>,
    holds: Mutex<Vec<Hold>>,
    /// Reservations held without an admission: must stay 0.
    ungated: std::sync::atomic::AtomicU64,
    /// Admissions the room issued to the crowd.
    admissions: std::sync::atomic::AtomicU64,
}

impl RoomCrowd {
    fn set(&self, account: usize, shopper: Shopper) {
        if let Ok(mut all) = self.shoppers.lock() {
            all[account] = shopper;
        }
    }

    /// Moves the shopper on from a ticket's answer.
    fn ticket_read(&self, account: usize, ticket: &str, v: &Value) {
        match v["status"].as_str() {
            Some("admitted") => {
                if let Some(admission) = v["admission"].as_str() {
                    self.admissions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.set(account, Shopper::Admitted(ticket.into(), admission.into()));
                }
            }
            Some("sold_out") => self.set(account, Shopper::Done),
            _ => self.set(account, Shopper::Waiting(ticket.into())),
        }
    }
}

impl Workload for RoomCrowd {
    async fn run(&self, conn: &mut Conn, i: u64) -> Outcome {
        let draw = splitmix(i);
        let account = (draw % self.tokens.len() as u64) as usize;
        let token = &self.tokens[account];
        let shopper = match self.shoppers.lock() {
            Ok(all) => all[account].clone(),
            Err(_) => return Outcome::Failed,
        };
        let tickets = format!("/v1/queue/{SKU}/tickets");
        let result = match &shopper {
            Shopper::New => conn.send(Method::POST, &tickets, Some(token), None).await,
            Shopper::Waiting(ticket) => {
                let path = format!("{tickets}/{ticket}");
                conn.send(Method::GET, &path, Some(token), None).await
            }
            Shopper::Admitted(_, admission) => {
                let body = json!({ "sku": SKU, "qty": 1 }).to_string();
                let headers = [("queue-admission", admission.as_str())];
                conn.send_with(
                    Method::POST,
                    "/v1/reservations",
                    Some(token),
                    &headers,
                    Some(body),
                )
                .await
            }
            Shopper::Done => {
                let body = json!({ "sku": SKU, "qty": 1 }).to_string();
                conn.send(Method::POST, "/v1/reservations", Some(token), Some(body))
                    .await
            }
        };
        let Ok(response) = result else {
            return Outcome::Failed;
        };
        let v = response.json().unwrap_or(Value::Null);
        match shopper {
            Shopper::New | Shopper::Waiting(_) => {
                if let Some(ticket) = v["ticket"].as_str() {
                    self.ticket_read(account, ticket, &v);
                }
            }
            Shopper::Admitted(ticket, _) => match response.status {
                StatusCode::CREATED => {
                    if let (Some(id), Ok(mut holds)) =
                        (v["reservation_id"].as_str(), self.holds.lock())
                    {
                        holds.push(Hold {
                            id: id.to_owned(),
                            account: account_name(account),
                            qty: 1,
                        });
                    }
                    self.set(account, Shopper::Done);
                }
                // The admission lapsed: back to the ticket.
                StatusCode::FORBIDDEN => self.set(account, Shopper::Waiting(ticket)),
                _ => self.set(account, Shopper::Done),
            },
            Shopper::Done => {
                if response.status == StatusCode::CREATED {
                    self.ungated
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Outcome::of(&response)
    }
}

fn account_name(n: usize) -> String {
    format!("shopper-{n:05}")
}

/// A well-mixed 64-bit hash of `i`, so accounts and quantities look random
/// but every run with the same options makes the same attempts.
fn splitmix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs the demo; the stack is stopped and removed on return (or on
/// Ctrl-C / SIGTERM) unless `--keep`.
pub async fn run(options: DemoOptions) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut stack = DevStack::create("demo")?;
    let result = tokio::select! {
        result = sale(&mut stack, &options) => result,
        _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow::anyhow!("terminated")),
    };
    match result {
        Ok((code, Some(kept))) => {
            println!("{kept}");
            let stop = stack.keep();
            println!("Stop it all with:\n  {stop}");
            Ok(code)
        }
        Ok((code, None)) => {
            println!(
                "Stopping the servers and removing {}",
                stack.dir().display()
            );
            Ok(code)
        }
        Err(e) => {
            eprintln!(
                "flashgate-dev demo: {e:#}; stopping the servers and removing {}",
                stack.dir().display()
            );
            drop(stack);
            Err(e)
        }
    }
}

/// The sale itself; returns the exit code and, with `--keep`, how to reach
/// the stack.
async fn sale(
    stack: &mut DevStack,
    options: &DemoOptions,
) -> anyhow::Result<(ExitCode, Option<String>)> {
    if options.units < 10 || options.accounts == 0 || options.attempts == 0 || options.rate <= 0.0 {
        bail!("--units must be at least 10, and --accounts, --attempts and --rate above 0");
    }
    println!(
        "Starting a 3-master Redis Cluster and PostgreSQL in {}",
        stack.dir().display()
    );
    let cluster = stack.redis_cluster(3)?;
    let pg_port = stack.postgres(devstack::Durability::Throwaway)?;
    let redis_url = devstack::cluster_url(&cluster);
    let pg_url = format!("postgres://postgres@127.0.0.1:{pg_port}/flashgate");
    let gateway = GatewayProcess::start(
        stack,
        &[
            ("redis__url", redis_url.clone()),
            ("postgres__url", pg_url.clone()),
            (
                "reservation__ttl_seconds",
                options.hold_ttl_seconds.to_string(),
            ),
            ("expiry__sweep_interval_ms", "200".into()),
            ("journal__reconcile_interval_ms", "500".into()),
            // The whole crowd comes from one loopback address; the
            // per-account limit stays on.
            ("limits__ip__mode", "off".into()),
        ],
    )
    .await?;
    println!("Gateway ready at http://{}", gateway.addr);
    let auth = Auth::new(&gateway.secret);
    let admin = auth.issue(&AccountId::parse("demo-admin")?, Role::Admin, 3600);
    let mut conn = Conn::new(gateway.addr);
    let initial = seed(&mut conn, &admin, options).await?;

    let tokens: Vec<String> = (0..options.accounts as usize)
        .map(|n| AccountId::parse(&account_name(n)).map(|a| auth.issue(&a, Role::Shopper, 3600)))
        .collect::<Result<_, _>>()?;
    println!(
        "The drop opens: {} attempts from {} accounts at {}/s{}",
        options.attempts,
        options.accounts,
        options.rate,
        if options.waiting_room > 0 {
            format!(
                ", through a waiting room admitting {}/s",
                options.waiting_room
            )
        } else {
            String::new()
        }
    );
    let progress = ProgressBar::new(options.attempts);
    progress.set_style(
        ProgressStyle::with_template(
            "  {bar:40.cyan/blue} {pos}/{len} attempts  {per_sec}  {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let plan = Plan {
        pace: Pace::Rate(options.rate),
        duration: Duration::from_secs_f64(options.attempts as f64 / options.rate),
        connections: CROWD_CONNECTIONS,
    };
    let taken = |holds: &Mutex<Vec<Hold>>| {
        holds
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .map_err(|_| anyhow::anyhow!("a crowd task panicked"))
    };
    let (report, holds, room) = if options.waiting_room > 0 {
        let crowd = Arc::new(RoomCrowd {
            shoppers: Mutex::new(vec![Shopper::New; tokens.len()]),
            tokens,
            holds: Mutex::new(Vec::new()),
            ungated: Default::default(),
            admissions: Default::default(),
        });
        let report = loadgen::run(
            "demo-room",
            gateway.addr,
            plan,
            crowd.clone(),
            Some(progress.clone()),
        )
        .await?;
        let room = RoomTally {
            admissions: crowd.admissions.load(std::sync::atomic::Ordering::Relaxed),
            ungated: crowd.ungated.load(std::sync::atomic::Ordering::Relaxed),
        };
        (report, taken(&crowd.holds)?, Some(room))
    } else {
        let crowd = Arc::new(Crowd {
            tokens,
            holds: Mutex::new(Vec::new()),
        });
        let report = loadgen::run(
            "demo-crowd",
            gateway.addr,
            plan,
            crowd.clone(),
            Some(progress.clone()),
        )
        .await?;
        (report, taken(&crowd.holds)?, None)
    };
    progress.finish_and_clear();

    let settled = settle(gateway.addr, &auth, &holds).await?;
    println!(
        "Settled: {} confirmed, {} released, {} left to expire ({} s TTL)",
        settled.confirmed, settled.released, settled.left, options.hold_ttl_seconds
    );
    wait_for_expiry(&mut conn, options.hold_ttl_seconds).await?;
    let last_change = Instant::now();
    let journal = wait_for_journal(&pg_url, &mut conn).await?;
    let journal_ms = last_change.elapsed().as_millis();
    let readiness = conn
        .send(Method::GET, "/readyz", None, None)
        .await
        .ok()
        .and_then(|r| r.json())
        .unwrap_or(Value::Null);

    let checks = Checks::run(&initial, &journal, &holds, &settled, room.as_ref());
    print_report(
        &report,
        holds.len(),
        room.as_ref(),
        &settled,
        journal_ms,
        &readiness,
        &checks,
    );
    let code = if checks.all_pass() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    let kept = if options.keep {
        let shopper = auth.issue(&AccountId::parse(&account_name(0))?, Role::Shopper, 86_400);
        let admin = auth.issue(&AccountId::parse("demo-admin")?, Role::Admin, 86_400);
        Some(format!(
            "\nThe stack keeps running:\n  gateway   http://{addr}  (GET /v1/inventory/{SKU}, /readyz, /metrics)\n  redis     {redis_url}\n  postgres  {pg_url}\n  shopper   Authorization: Bearer {shopper}\n  admin     Authorization: Bearer {admin}\n  secret    {secret}  (auth.secret; for k6: -e AUTH_SECRET=... -e BASE_URL=http://{addr})\n  logs      {dir}",
            secret = gateway.secret,
            addr = gateway.addr,
            dir = stack.dir().display(),
        ))
    } else {
        None
    };
    Ok((code, kept))
}

/// Units per location at the start of the sale.
struct Initial {
    locations: Vec<(&'static str, i64)>,
}

async fn seed(conn: &mut Conn, admin: &str, options: &DemoOptions) -> anyhow::Result<Initial> {
    // The policy first: stock buckets are laid out before the stock arrives.
    let mut policy = json!({
        "max_per_account": options.per_account,
        "reservation_ttl_seconds": options.hold_ttl_seconds,
    });
    if options.buckets > 1 {
        policy["buckets"] = json!(options.buckets);
    }
    if options.waiting_room > 0 {
        policy["waiting_room"] =
            json!({ "admit_per_second": options.waiting_room, "admission_ttl_seconds": 30 });
    }
    conn.expect_ok(
        Method::PUT,
        &format!("/v1/admin/inventory/{SKU}"),
        admin,
        policy,
    )
    .await?;
    let mut locations = Vec::new();
    let mut left = i64::from(options.units);
    for (n, (location, share)) in LOCATIONS.iter().enumerate() {
        let units = if n + 1 == LOCATIONS.len() {
            left
        } else {
            i64::from(options.units * share / 100)
        };
        left -= units;
        let path = format!("/v1/admin/inventory/{SKU}/locations/{location}");
        conn.expect_ok(Method::PUT, &path, admin, json!({ "on_hand": units }))
            .await?;
        locations.push((*location, units));
    }
    println!(
        "Seeded {SKU}: {} units ({}), {} per account, {} s holds{}",
        options.units,
        locations
            .iter()
            .map(|(l, u)| format!("{u} {l}"))
            .collect::<Vec<_>>()
            .join(", "),
        options.per_account,
        options.hold_ttl_seconds,
        if options.buckets > 1 {
            format!(", in {} stock buckets", options.buckets)
        } else {
            String::new()
        }
    );
    Ok(Initial { locations })
}

/// What the shoppers did with their holds after the crowd.
#[derive(Default)]
struct Settled {
    confirmed: u64,
    confirmed_units: u64,
    released: u64,
    left: u64,
    /// Confirms and releases refused, by problem code (a hold can expire
    /// before its shopper gets to it).
    refused: BTreeMap<String, u64>,
}

/// Confirms three holds in five, releases one, and leaves one to expire.
async fn settle(
    addr: std::net::SocketAddr,
    auth: &Auth,
    holds: &[Hold],
) -> anyhow::Result<Settled> {
    let chunk = holds.len().div_ceil(SETTLE_CONNECTIONS).max(1);
    let mut tasks = Vec::new();
    for (c, part) in holds.chunks(chunk).enumerate() {
        let mut work = Vec::with_capacity(part.len());
        for (k, hold) in part.iter().enumerate() {
            let token = auth.issue(&AccountId::parse(&hold.account)?, Role::Shopper, 3600);
            work.push(((c * chunk + k) % 5, hold.clone(), token));
        }
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut settled = Settled::default();
            for (slot, hold, token) in work {
                let action = match slot {
                    0..=2 => "confirm",
                    3 => "release",
                    _ => {
                        settled.left += 1;
                        continue;
                    }
                };
                let path = format!("/v1/reservations/{}/{action}", hold.id);
                let outcome =
                    Outcome::of_result(&conn.send(Method::POST, &path, Some(&token), None).await);
                match (outcome, action) {
                    (Outcome::Ok, "confirm") => {
                        settled.confirmed += 1;
                        settled.confirmed_units += hold.qty;
                    }
                    (Outcome::Ok, _) => settled.released += 1,
                    (Outcome::Rejected(code), _) => *settled.refused.entry(code).or_default() += 1,
                    (Outcome::Failed, _) => {
                        *settled.refused.entry("no-answer".into()).or_default() += 1
                    }
                }
            }
            settled
        }));
    }
    let mut total = Settled::default();
    for task in tasks {
        let part = task.await?;
        total.confirmed += part.confirmed;
        total.confirmed_units += part.confirmed_units;
        total.released += part.released;
        total.left += part.left;
        for (code, n) in part.refused {
            *total.refused.entry(code).or_default() += n;
        }
    }
    Ok(total)
}

async fn view(conn: &mut Conn) -> anyhow::Result<Value> {
    let response = conn
        .send(Method::GET, &format!("/v1/inventory/{SKU}"), None, None)
        .await?;
    response.json().context("the inventory view")
}

/// Waits until no hold is left: the ones nobody settled expire.
async fn wait_for_expiry(conn: &mut Conn, ttl_seconds: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(ttl_seconds + 20);
    loop {
        let reserved = view(conn).await?["reserved"].as_i64().unwrap_or(-1);
        if reserved == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{reserved} units were still held {ttl_seconds} s + 20 s after the crowd");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The journal rows of the demo's SKU: its own, and its stock buckets'
/// (named `<sku>~<partition>`).
const OF_SKU: &str = "(sku = $1 OR starts_with(sku, $1 || '~'))";

/// What Postgres holds once it has caught up with Redis.
struct JournalState {
    /// The inventory view from Redis at the moment of comparison.
    redis: Value,
    /// stock_levels per location (over the SKU's buckets): (on_hand, reserved).
    stock: BTreeMap<String, (i64, i64)>,
    /// reservations per state: (rows, units), and held + confirmed units
    /// per location.
    states: BTreeMap<String, (i64, i64)>,
    taken_by_location: BTreeMap<String, i64>,
    /// Accounts whose confirmed units exceed the cap.
    over_cap: i64,
    caught_up: bool,
}

async fn wait_for_journal(pg_url: &str, conn: &mut Conn) -> anyhow::Result<JournalState> {
    let (client, connection) = tokio_postgres::connect(pg_url, tokio_postgres::NoTls)
        .await
        .context("connecting to the demo's Postgres")?;
    tokio::spawn(connection);
    let deadline = Instant::now() + JOURNAL_TIMEOUT;
    loop {
        let redis = view(conn).await?;
        let state = read_journal(&client, redis).await?;
        if state.caught_up || Instant::now() > deadline {
            return Ok(state);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_journal(
    client: &tokio_postgres::Client,
    redis: Value,
) -> anyhow::Result<JournalState> {
    let stock: BTreeMap<String, (i64, i64)> = client
        .query(
            // A bucketed SKU's rows are its buckets': summed per location.
            &format!(
                "SELECT location, sum(on_hand)::bigint, sum(reserved)::bigint \
                 FROM stock_levels WHERE {OF_SKU} GROUP BY location"
            ),
            &[&SKU],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    // The SKU's version: the sum of its buckets' (each bucket's newest row).
    let version: i64 = client
        .query_one(
            &format!(
                "SELECT coalesce(sum(v), 0)::bigint FROM \
                 (SELECT max(version) AS v FROM stock_levels WHERE {OF_SKU} GROUP BY sku) b"
            ),
            &[&SKU],
        )
        .await?
        .get(0);
    let states = client
        .query(
            &format!(
                "SELECT state, count(*), coalesce(sum(qty), 0)::bigint FROM reservations \
                 WHERE {OF_SKU} GROUP BY state"
            ),
            &[&SKU],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let taken_by_location = client
        .query(
            &format!(
                "SELECT location, coalesce(sum(qty), 0)::bigint FROM reservations \
                 WHERE {OF_SKU} AND state IN ('held', 'confirmed') GROUP BY location"
            ),
            &[&SKU],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let over_cap: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT account_id FROM reservations \
                 WHERE {OF_SKU} AND state = 'confirmed' GROUP BY account_id \
                 HAVING sum(qty) > (SELECT max_per_account FROM sku_policies WHERE sku = $1)) o"
            ),
            &[&SKU],
        )
        .await?
        .get(0);
    let caught_up = redis_locations(&redis)
        .iter()
        .all(|(location, on_hand, reserved)| {
            stock
                .get(location)
                .is_some_and(|(o, r)| o == on_hand && r == reserved)
        })
        && Some(version) == redis["version"].as_i64();
    Ok(JournalState {
        redis,
        stock,
        states,
        taken_by_location,
        over_cap,
        caught_up,
    })
}

/// (location, on_hand, reserved) of each location in an inventory view.
fn redis_locations(view: &Value) -> Vec<(String, i64, i64)> {
    view["locations"]
        .as_array()
        .map(|locations| {
            locations
                .iter()
                .map(|l| {
                    (
                        l["location"].as_str().unwrap_or_default().to_owned(),
                        l["on_hand"].as_i64().unwrap_or_default(),
                        l["reserved"].as_i64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Check {
    name: &'static str,
    pass: bool,
    detail: String,
}

/// What the waiting room's crowd saw.
struct RoomTally {
    admissions: u64,
    ungated: u64,
}

/// The demo's verdict: what must never happen, checked on both stores.
struct Checks(Vec<Check>);

impl Checks {
    fn run(
        initial: &Initial,
        journal: &JournalState,
        holds: &[Hold],
        settled: &Settled,
        room: Option<&RoomTally>,
    ) -> Self {
        let start = |location: &str| {
            initial
                .locations
                .iter()
                .find(|(l, _)| *l == location)
                .map_or(0, |(_, units)| *units)
        };
        // Held + sold units beyond the units on sale, per location.
        let oversold_redis: i64 = redis_locations(&journal.redis)
            .iter()
            .map(|(l, on_hand, reserved)| {
                let sold = start(l) - on_hand;
                (reserved + sold - start(l)).max(0)
            })
            .sum();
        let oversold_postgres: i64 = journal
            .taken_by_location
            .iter()
            .map(|(l, taken)| (taken - start(l)).max(0))
            .sum::<i64>()
            + journal
                .stock
                .values()
                .map(|(on_hand, _)| (-on_hand).max(0))
                .sum::<i64>();
        let state = |s: &str| journal.states.get(s).copied().unwrap_or((0, 0));
        let rows: i64 = journal.states.values().map(|(n, _)| n).sum();
        let expired_expected = holds.len() as u64 - settled.confirmed - settled.released;
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut checks = Self(vec![
            Check {
                name: "no unit oversold, by Redis",
                pass: oversold_redis == 0,
                detail: format!("{oversold_redis} units over"),
            },
            Check {
                name: "no unit oversold, by Postgres",
                pass: oversold_postgres == 0,
                detail: format!("{oversold_postgres} units over"),
            },
            Check {
                name: "no account over its cap",
                pass: journal.over_cap == 0,
                detail: format!("{} accounts over", journal.over_cap),
            },
            Check {
                name: "every 201 is a row in reservations",
                pass: rows == count(holds.len() as u64),
                detail: format!("{rows} rows for {} holds", holds.len()),
            },
            Check {
                name: "every confirmation is journaled",
                pass: state("confirmed")
                    == (count(settled.confirmed), count(settled.confirmed_units)),
                detail: format!(
                    "{} confirmed rows ({} units) for {} acknowledged ({} units)",
                    state("confirmed").0,
                    state("confirmed").1,
                    settled.confirmed,
                    settled.confirmed_units
                ),
            },
            Check {
                name: "every release and expiry is journaled",
                pass: state("released").0 == count(settled.released)
                    && state("expired").0 == count(expired_expected)
                    && state("held").0 == 0,
                detail: format!(
                    "{} released, {} expired, {} still held",
                    state("released").0,
                    state("expired").0,
                    state("held").0
                ),
            },
            Check {
                name: "Postgres matches Redis",
                pass: journal.caught_up,
                detail: format!(
                    "stock_levels {:?} vs Redis {}",
                    journal.stock,
                    serde_json::to_string(&redis_locations(&journal.redis)).unwrap_or_default()
                ),
            },
        ]);
        if let Some(room) = room {
            checks.0.push(Check {
                name: "every hold went through the waiting room",
                pass: room.ungated == 0 && holds.len() as u64 <= room.admissions,
                detail: format!(
                    "{} holds for {} admissions; {} held without one",
                    holds.len(),
                    room.admissions,
                    room.ungated
                ),
            });
        }
        checks
    }

    fn all_pass(&self) -> bool {
        self.0.iter().all(|c| c.pass)
    }
}

fn print_report(
    crowd: &Report,
    holds: usize,
    room: Option<&RoomTally>,
    settled: &Settled,
    journal_ms: u128,
    readiness: &Value,
    checks: &Checks,
) {
    let mut refused: BTreeMap<&str, u64> = [
        ("insufficient-stock", 0),
        ("purchase-limit", 0),
        ("rate-limited", 0),
    ]
    .into_iter()
    .collect();
    for (code, n) in &crowd.rejected {
        refused.insert(code, *n);
    }
    let l = crowd.latency_ms;
    println!("\nCrowd");
    println!(
        "  attempts     {} in {:.1} s ({:.0}/s offered, {:.0}/s achieved)",
        crowd.sent,
        crowd.duration_s,
        crowd.offered_per_s.unwrap_or_default(),
        crowd.achieved_per_s
    );
    println!("  reserved     {holds} holds (201)");
    if let Some(room) = room {
        println!(
            "  room         {} admissions issued; {} holds made without one",
            room.admissions, room.ungated
        );
    }
    for (code, n) in &refused {
        let status = match *code {
            "rate-limited" => 429,
            "admission-required" => 403,
            _ => 409,
        };
        println!("  {status}          {n} {code}");
    }
    if crowd.failed > 0 {
        println!("  no answer    {}", crowd.failed);
    }
    println!(
        "  latency      p50 {:.2} ms · p95 {:.2} ms · p99 {:.2} ms · max {:.2} ms",
        l.p50, l.p95, l.p99, l.max
    );
    println!("\nAfter the crowd");
    println!(
        "  {} confirmed ({} units) · {} released · {} expired",
        settled.confirmed, settled.confirmed_units, settled.released, settled.left
    );
    for (code, n) in &settled.refused {
        println!("  refused      {n} {code}");
    }
    println!("\nJournal");
    println!("  Postgres agreed with Redis {journal_ms} ms after the last hold expired");
    println!("  /readyz      {readiness}");
    println!("\nChecks");
    for check in &checks.0 {
        let mark = if check.pass { "ok  " } else { "FAIL" };
        println!("  {mark} {}: {}", check.name, check.detail);
    }
}
