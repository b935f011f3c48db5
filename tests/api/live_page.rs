//! The live page in a real browser: headless Chromium loads `/live/{sku}`
//! from a running gateway, a reservation is made, and the page's DOM shows
//! the new count within a second. A screenshot is kept for people to look at.
//!
//! Chromium is driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: commands in on fd 3, replies out on fd 4,
//! each a JSON text ended by a NUL byte), so no WebDriver or WebSocket
//! client is needed.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, GatewayProcess, test_settings, token, unique_prefix};

/// A headless Chromium and one DevTools session on a page.
struct Browser {
    child: Child,
    commands: ChildStdin,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    profile: PathBuf,
}

impl Browser {
    fn launch() -> Self {
        let profile =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-{}", unique_prefix()));
        // The shell hands our stdin and stdout to Chromium as fds 3 and 4.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                "exec chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
                 --disable-background-networking --disable-extensions --no-first-run \
                 --no-default-browser-check --hide-scrollbars --window-size=900,1000 \
                 --user-data-dir=\"$1\" --remote-debugging-pipe about:blank \
                 3<&0 4>&1 0</dev/null 1>/dev/null 2>/dev/null",
            )
            .arg("sh")
            .arg(&profile)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("chromium: ./scripts/test.sh installs it (apt-get install chromium)");
        let commands = child.stdin.take().unwrap();
        let output = child.stdout.take().unwrap();
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut output = BufReader::new(output);
            loop {
                let mut message = Vec::new();
                match output.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop();
                if let Ok(value) = serde_json::from_slice(&message)
                    && tx.send(value).is_err()
                {
                    return;
                }
            }
        });
        Self {
            child,
            commands,
            replies,
            next_id: 0,
            session: None,
            profile,
        }
    }

    /// Sends one DevTools command and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        self.commands.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .replies
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("chromium did not answer {method}: {e}"));
            // Events (no id) and other replies are not ours.
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page and attaches to it.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    }

    /// The value of a JavaScript expression in the page.
    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    fn text_of(&mut self, id: &str) -> String {
        let found = self.evaluate(&format!(
            "(document.getElementById({id:?}) || {{}}).textContent || ''"
        ));
        found.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the element `id` reads `want`; how long that took.
    fn wait_for_text(&mut self, id: &str, want: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let text = self.text_of(id);
            if text == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "#{id} reads {text:?}, not {want:?}, after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn screenshot(&mut self, path: &Path) -> usize {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &png).unwrap();
        png.len()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.session = None;
        let _ = self
            .commands
            .write_all(b"{\"id\":999999,\"method\":\"Browser.close\"}\0");
        let closing = Instant::now();
        while closing.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_a_reservation_within_a_second() {
    let settings = test_settings(Backend::Standalone, &unique_prefix());
    let mut gateway = GatewayProcess::start(&settings);
    gateway.wait_ready().await;
    let http = reqwest::Client::new();
    for (location, on_hand) in [("default", 40), ("east", 12)] {
        let r = http
            .put(gateway.url(&format!(
                "/v1/admin/inventory/LIVE-PAGE/locations/{location}"
            )))
            .bearer_auth(crate::harness::admin_token())
            .json(&json!({"on_hand": on_hand, "low_stock_threshold": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    // The page itself: self-contained, under a policy that allows nothing else.
    let page = http
        .get(gateway.url("/live/LIVE-PAGE"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("://") && !html.contains(" src="),
        "no external assets"
    );

    let url = gateway.url("/live/LIVE-PAGE");
    let mut browser = tokio::task::block_in_place(|| {
        let mut browser = Browser::launch();
        browser.open(&url);
        browser.wait_for_text("available", "52", Duration::from_secs(15));
        browser
    });

    let held = http
        .post(gateway.url("/v1/reservations"))
        .bearer_auth(token("live-page-shopper"))
        .json(&json!({"sku": "LIVE-PAGE", "location": "default", "qty": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::CREATED);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts/live-page.png");
    tokio::task::block_in_place(|| {
        let took = browser.wait_for_text("available", "49", Duration::from_secs(1));
        eprintln!("live page: the reservation showed after {took:?}");
        assert_eq!(browser.text_of("reserved"), "3");
        assert_eq!(browser.text_of("status"), "in stock");
        let rows = browser.evaluate(
            "[...document.querySelectorAll('#locations tr')].map(r => r.dataset.location + ':' + r.children[1].textContent)",
        );
        assert_eq!(rows, json!(["default:37", "east:12"]));
        let points = browser.evaluate(
            "document.getElementById('spark-line').getAttribute('points').split(' ').length",
        );
        assert!(
            points.as_u64().unwrap() >= 3,
            "the sparkline has the two counts: {points}"
        );
        assert_eq!(
            browser.evaluate("document.getElementById('connection').dataset.state"),
            "live"
        );
    });
    // A few more sales, spaced out, so the screenshot's sparkline shows steps.
    for qty in [2, 4, 1, 5] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let held = http
            .post(gateway.url("/v1/reservations"))
            .bearer_auth(token("live-page-shopper"))
            .json(&json!({"sku": "LIVE-PAGE", "location": "east", "qty": qty}))
            .send()
            .await
            .unwrap();
        assert_eq!(held.status(), StatusCode::CREATED);
    }
    tokio::task::block_in_place(|| {
        browser.wait_for_text("available", "37", Duration::from_secs(1));
        let bytes = browser.screenshot(&shot);
        // Straight to the process's stderr, past the test harness's
        // capture: the suite's output names the screenshot.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "live page: screenshot at {} ({bytes} bytes)",
            shot.display()
        );
    });
}
