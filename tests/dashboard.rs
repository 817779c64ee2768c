//! The dashboard in a real browser: headless Chromium, driven over the
//! DevTools protocol, against a real 3-node cluster of `hub serve`
//! processes with their simulated sensors. The DOM is polled with a
//! deadline; the page is never reloaded (a marker set at load must survive).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use common::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// A headless Chromium with one page, spoken to over DevTools.
struct Chrome {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(PathBuf::from)
}

impl Chrome {
    fn start(bin: &Path) -> Chrome {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1280,1100",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Chromium writes the port it chose and the browser's path here.
        let port_file = profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        let text = loop {
            match std::fs::read_to_string(&port_file) {
                Ok(t) if t.lines().count() >= 2 => break t,
                _ => {
                    assert!(
                        started.elapsed() < DEADLINE,
                        "Chromium wrote no DevToolsActivePort"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let mut lines = text.lines();
        let port = lines.next().unwrap().trim();
        let path = lines.next().unwrap().trim();
        let (ws, _) = tungstenite::connect(format!("ws://127.0.0.1:{port}{path}")).unwrap();
        let mut c = Chrome {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = c.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = c.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        c.session = attached["sessionId"].as_str().unwrap().to_string();
        c
    }

    /// Sends one command (to the page once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == json!(id) {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates `expr` in the page and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true`; panics with the last value at the deadline.
    fn wait_for(&mut self, what: &str, expr: &str) -> Duration {
        let start = Instant::now();
        loop {
            if self.eval(expr) == json!(true) {
                return start.elapsed();
            }
            if start.elapsed() > DEADLINE {
                let body = self.eval("document.body ? document.body.innerText : ''");
                panic!("timed out waiting for {what}; page text:\n{body}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, to: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "clip": { "x": 0, "y": 0, "width": 1280, "height": 1000, "scale": 0.6 }
            }),
        );
        let b64 = r["data"].as_str().unwrap();
        std::fs::write(to, base64(b64)).unwrap();
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 decoding (the screenshot), without another dependency.
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// One plain HTTP/1.1 request; returns status and body.
fn http(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let code = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, raw.split_once("\r\n\r\n").unwrap().1.to_string())
}

/// The shared `hub serve` args with the simulated sensors on: the
/// dashboard's live sensor panel needs them.
fn sensor_args(id: &str, data: &Path, certs: &Path, port: u16, join: Option<u16>) -> Vec<String> {
    let mut args = serve_args(id, data, certs, port, join);
    args.retain(|a| a != "--no-sensors");
    args
}

const MEMBER_STATUS: &str = "Object.fromEntries([...document.querySelectorAll('#cluster tbody tr')].map(r => [r.dataset.node, r.dataset.status]))";

#[test]
fn dashboard_shows_members_and_live_sensors_marks_a_killed_node_and_shows_a_remote_put_live() {
    let Some(bin) = chromium() else {
        eprintln!("skipped: no chromium (Debian package `chromium`; .ci/run installs it)");
        return;
    };
    let certs = Certs::new(&["n1", "n2", "n3"]);
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let n1 = Proc::start(&sensor_args(
        "n1",
        &dir.path().join("n1"),
        certs.path(),
        ports[0],
        None,
    ));
    let n2 = Proc::start(&sensor_args(
        "n2",
        &dir.path().join("n2"),
        certs.path(),
        ports[1],
        Some(ports[0]),
    ));
    let mut n3 = Proc::start(&sensor_args(
        "n3",
        &dir.path().join("n3"),
        certs.path(),
        ports[2],
        Some(ports[0]),
    ));

    let mut chrome = Chrome::start(&bin);
    chrome.goto(&format!("{}/", n1.base));
    chrome.wait_for("the page's script to run", "typeof follow === 'function'");
    chrome.eval("window.__loadMarker = 'first-load'");

    // All three members, alive.
    chrome.wait_for(
        "n1 (self), n2 and n3 alive in the cluster table",
        &format!("(() => {{ const s = {MEMBER_STATUS}; return s.n1 === 'self' && s.n2 === 'alive' && s.n3 === 'alive'; }})()"),
    );
    // Every node's sensors, with values.
    chrome.wait_for(
        "sensors of all three nodes with values",
        "(() => { const k = [...document.querySelectorAll('.sensor[data-value]')].map(e => e.dataset.key); \
           return ['n1','n2','n3'].every(n => k.some(x => x.startsWith('sensors/' + n + '/'))); })()",
    );
    // And they are live: a value shown changes without a reload.
    let before = chrome.eval(
        "JSON.stringify([...document.querySelectorAll('.sensor[data-value]')].map(e => e.dataset.value))",
    );
    chrome.wait_for(
        "a sensor value to change live",
        &format!(
            "JSON.stringify([...document.querySelectorAll('.sensor[data-value]')].map(e => e.dataset.value)) !== {}",
            before
        ),
    );

    // A PUT on another node appears live on this node's page.
    let (code, _) = http(&n2.base, "PUT", "/kv/dashboard/hello", "\"from-n2\"");
    assert_eq!(code, 200);
    chrome.wait_for(
        "the PUT on n2 in the recent changes",
        "(() => { const r = document.querySelector('#changes tr[data-key=\"dashboard/hello\"]'); return !!r && r.innerText.includes('from-n2'); })()",
    );
    chrome.wait_for(
        "the rates to be computed",
        "document.querySelector('#rate-applied').textContent !== '–'",
    );
    chrome.wait_for(
        "the partitions this node owns (all, without sharding)",
        "document.querySelector('#partitions').textContent === '256/256'",
    );
    // HUB_DASHBOARD_SCREENSHOT=docs/dashboard.png refreshes the README's picture.
    if let Ok(to) = std::env::var("HUB_DASHBOARD_SCREENSHOT") {
        chrome.screenshot(Path::new(&to));
    }

    // kill -9 n3: the page marks it suspect or dead, without a reload.
    n3.kill_9();
    let took = chrome.wait_for(
        "n3 suspect or dead",
        &format!("(() => {{ const s = {MEMBER_STATUS}; return s.n3 === 'suspect' || s.n3 === 'dead'; }})()"),
    );
    eprintln!("n3 shown suspect/dead {took:?} after kill -9");
    assert_eq!(
        chrome.eval("window.__loadMarker"),
        json!("first-load"),
        "the page reloaded"
    );
    drop((n1, n2));
}

#[test]
fn dashboard_assets_are_built_in_and_weigh_under_200_kb_with_no_remote_references() {
    let total: usize = hub::http::dashboard::ASSETS
        .iter()
        .map(|(_, a)| a.len())
        .sum();
    assert!(total < 200 << 10, "page weight {total} bytes");
    for (_, body) in hub::http::dashboard::ASSETS {
        for remote in ["http://", "https://", "//cdn"] {
            let offending: Vec<&str> = body
                .lines()
                .filter(|l| {
                    l.contains(remote)
                        && (l.contains("src=") || l.contains("href=") || l.contains("import"))
                })
                .collect();
            assert!(
                offending.is_empty(),
                "remote asset reference: {offending:?}"
            );
        }
    }
}
