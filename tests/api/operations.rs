//! What an operator meets when starting and running the gateway: one exit
//! code for bad configuration, passwords kept out of every log line, logs
//! that suit a file, the access log, and Postgres NOTICEs kept quiet.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::harness::{Backend, flashgate, free_port, test_settings, token, unique_prefix};

/// A password no log line may show.
const PASSWORD: &str = "hunter2-do-not-print";

/// Runs `command` to its end (killed after 60 s), its output kept in files
/// so that a chatty process never blocks on a full pipe.
fn finish(mut command: Command) -> Output {
    let dir = tempfile_dir();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = command
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start flashgate");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    output
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_url_that_does_not_parse_exits_64_and_never_shows_its_password() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    for (var, url, named) in [
        (
            "FLASHGATE_REDIS__URL",
            format!("htp://ops:{PASSWORD}@nope"),
            "redis.url",
        ),
        (
            "FLASHGATE_POSTGRES__URL",
            format!("postgres://fg:{PASSWORD}@db:notaport/x"),
            "postgres.url",
        ),
    ] {
        let mut cmd = flashgate(&settings, "serve");
        cmd.env(var, &url);
        let out = finish(cmd);
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{var}: {log}");
        assert!(log.contains(named), "{var}: {log}");
        assert!(!log.contains(PASSWORD), "{var} printed its password: {log}");
    }
}

#[test]
fn a_start_that_fails_never_logs_a_password_or_the_token_secret() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let secret = format!("{PASSWORD}-token-secret");
    for format in ["text", "json"] {
        let mut cmd = flashgate(&settings, "serve");
        // Nothing listens on port 1: the start fails connecting.
        cmd.env(
            "FLASHGATE_REDIS__URL",
            format!("redis://:{PASSWORD}@127.0.0.1:1"),
        )
        .env(
            "FLASHGATE_POSTGRES__URL",
            format!("postgres://fg:{PASSWORD}@127.0.0.1:1/flashgate"),
        )
        .env("FLASHGATE_AUTH__SECRET", &secret)
        .env("FLASHGATE_REDIS__CONNECT_TIMEOUT_MS", "500")
        .env("FLASHGATE_LOG__LEVEL", "debug")
        .env("FLASHGATE_LOG__FORMAT", format);
        let out = finish(cmd);
        let log = stderr(&out);
        assert!(
            !out.status.success() && !log.is_empty(),
            "{format}: the start should fail and say why: {log}"
        );
        assert!(log.contains("127.0.0.1:1"), "{format}: which server: {log}");
        assert!(
            !log.contains(PASSWORD),
            "{format}: a password or the secret was logged:\n{log}"
        );
        assert_eq!(
            log.matches("127.0.0.1:1 did not answer").count()
                + log.matches("connecting to redis").count(),
            1,
            "{format}: the failure is said once:\n{log}"
        );
    }
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let mut cmd = flashgate(&settings, "serve");
    cmd.env("FLASHGATE_REDIS__URL", "redis://127.0.0.1:1")
        .env("FLASHGATE_REDIS__CONNECT_TIMEOUT_MS", "300")
        .env("FLASHGATE_LOG__LEVEL", "info")
        .env_remove("FLASHGATE_LOG__FORMAT");
    let out = finish(cmd);
    let log = stderr(&out);
    assert!(!log.is_empty());
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in a piped log: {log:?}"
    );
}

#[test]
fn postgres_notices_show_only_when_the_level_asks_for_debug() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let migrate = |level: &str| {
        let mut cmd = flashgate(&settings, "migrate");
        cmd.env("FLASHGATE_LOG__LEVEL", level);
        let out = finish(cmd);
        assert!(out.status.success(), "migrate: {}", stderr(&out));
        stderr(&out)
    };
    // The second run finds everything in place: Postgres sends NOTICEs
    // ("… already exists, skipping").
    migrate("info");
    let quiet = migrate("info");
    assert!(!quiet.contains("NOTICE"), "NOTICEs at info: {quiet}");
    let verbose = migrate("debug");
    assert!(
        verbose.contains("NOTICE"),
        "no NOTICE even at debug: {verbose}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_with_its_id_when_turned_on() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let dir = tempfile_dir();
    let log_path = dir.join("gateway.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = flashgate(&settings, "serve")
        .env("FLASHGATE_HTTP__LISTEN", &addr)
        .env("FLASHGATE_LOG__LEVEL", "info")
        .env("FLASHGATE_LOG__ACCESS", "true")
        // A bare address is a block of one.
        .env("FLASHGATE_HTTP__TRUSTED_PROXIES", r#"["127.0.0.1"]"#)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = http.get(format!("http://{addr}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && started.elapsed() < Duration::from_secs(30),
            "the gateway did not start ({exited:?}): {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = http
        .get(format!("http://{addr}/v1/inventory/ACCESS-1"))
        .bearer_auth(token("access-shopper"))
        .header("x-request-id", "access-log-probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("access-log-probe-1"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    for part in ["flashgate::access", "404", "/v1/inventory/{sku}", "GET"] {
        assert!(lines[0].contains(part), "{part} missing: {}", lines[0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory of the test's own under the system's temporary one.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flashgate-ops-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_committed_openapi_json_is_valid_openapi() {
    let validator = "openapi-spec-validator";
    let out = Command::new(validator)
        .arg(crate::harness::repo_file("openapi.json"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{validator} could not run ({e}): ./scripts/test.sh installs it \
                 (or: pip install openapi-spec-validator)"
            )
        });
    assert!(
        out.status.success(),
        "openapi.json is not valid OpenAPI: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_only_while_the_gateway_answers() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let mut gateway = crate::harness::GatewayProcess::start(&settings);
    gateway.wait_ready().await;
    let check = |addr: String, probe: &'static str| {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = flashgate(&settings, "healthcheck");
            cmd.args(["--probe", probe, "--timeout-ms", "1000"])
                .env("FLASHGATE_HTTP__LISTEN", addr);
            finish(cmd)
        })
    };
    for probe in ["readyz", "healthz"] {
        let out = check(gateway.addr.clone(), probe).await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{probe}: {}", stderr(&out));
    }
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = check(nobody.clone(), "healthz").await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&nobody), "{}", stderr(&out));
}

#[test]
fn the_gateway_binary_holds_no_demo_bench_or_load_generator() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let mut help = flashgate(&settings, "--help");
    let out = finish({
        help.env_remove("FLASHGATE_LOG__LEVEL");
        help
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("serve"), "{text}");
    for tool in ["demo", "bench", "hello-server"] {
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with(tool)),
            "`flashgate {tool}` is still in the gateway: {text}"
        );
    }
    let manifest = std::fs::read_to_string(crate::harness::repo_file("Cargo.toml")).unwrap();
    let production = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|d| d.split("\n[").next())
        .unwrap();
    for dev_only in ["indicatif", "hdrhistogram"] {
        assert!(
            !production.contains(dev_only),
            "{dev_only} is a dependency of the gateway"
        );
    }
}

/// Drives the gateway through a Python client that openapi-python-client
/// generates from openapi.json: every operation is in it (a repeated
/// operationId once dropped one), and a reservation made through it reads
/// back through it.
const GENERATED_CLIENT_SMOKE: &str = r#"
import os, sys
sys.path.insert(0, os.environ["CLIENT_DIR"])
from flashgate_client import AuthenticatedClient, Client
from flashgate_client.api.shopper import create_reservation, get_inventory, get_reservation
from flashgate_client.models import ReserveBody, HoldView, InventoryView, ReservationView
base = os.environ["BASE_URL"]
shopper = AuthenticatedClient(base_url=base, token=os.environ["SHOPPER"])
hold = create_reservation.sync_detailed(client=shopper, body=ReserveBody(sku="GEN-1", qty=1))
assert hold.status_code == 201 and isinstance(hold.parsed, HoldView), hold
read = get_reservation.sync_detailed(hold.parsed.reservation_id, client=shopper)
assert read.status_code == 200 and isinstance(read.parsed, ReservationView), read
view = get_inventory.sync_detailed("GEN-1", client=Client(base_url=base))
assert view.status_code == 200 and isinstance(view.parsed, InventoryView), view
assert view.parsed.reserved == 1, view.parsed
print("generated client ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_openapi_json_reserves_and_reads_back() {
    let dir = tempfile_dir();
    let package = dir.join("flashgate_client");
    let generated = Command::new("openapi-python-client")
        .args(["generate", "--meta", "none", "--path"])
        .arg(crate::harness::repo_file("openapi.json"))
        .arg("--output-path")
        .arg(&package)
        .output()
        .expect("openapi-python-client: ./scripts/test.sh installs it (pip)");
    assert!(
        package.join("client.py").exists(),
        "{}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    for operation in [
        "shopper/get_inventory.py",
        "shopper/create_reservation.py",
        "shopper/get_reservation.py",
        "shopper/confirm_reservation.py",
        "shopper/release_reservation.py",
        "admin/set_stock.py",
        "admin/set_policy.py",
        "admin/adjust_stock.py",
    ] {
        assert!(
            package.join("api").join(operation).exists(),
            "{operation} was not generated"
        );
    }
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let mut gateway = crate::harness::GatewayProcess::start(&settings);
    gateway.wait_ready().await;
    gateway.stock("GEN-1", 10).await;
    let base = format!("http://{}", gateway.addr);
    let mut script = Command::new("python3");
    script
        .args(["-c", GENERATED_CLIENT_SMOKE])
        .env("CLIENT_DIR", &dir)
        .env("BASE_URL", base)
        .env("SHOPPER", token("generated-client"));
    let out = tokio::task::spawn_blocking(move || finish(script))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
