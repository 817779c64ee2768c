//! The operator's daily experience, through the real binary: every message
//! issue 12 listed is asserted here (a missing URL scheme, an empty data
//! directory, a bad `HUB_*` variable, a too-large body, unknown query
//! parameters, Display log fields, no colour codes in a redirected log, the
//! join warning, progress lines, version, completions, man page), and
//! `hub demo`'s banner: its token works and no warning misleads.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use common::{call, free_udp_port, http_client, https_client, serve_args, Certs, Proc};

const WITHIN: Duration = Duration::from_secs(20);

use common::{run_hub as hub, text};

#[test]
fn inspect_without_a_source_names_both_flags() {
    let out = hub(&["inspect", "summary"], &[]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("--data-dir") && e.contains("--node"), "{e}");
}

#[test]
fn inspect_of_an_address_without_scheme_says_to_add_one_and_shows_no_made_up_path() {
    let out = hub(&["inspect", "--node", "127.0.0.1:8081", "summary"], &[]);
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("http://127.0.0.1:8081") && e.contains("https://"),
        "{e}"
    );
    assert!(!e.contains("/api/introspection"), "{e}");
}

#[test]
fn inspect_of_an_empty_or_foreign_directory_says_what_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = || {
        hub(
            &[
                "inspect",
                "--data-dir",
                tmp.path().to_str().unwrap(),
                "summary",
            ],
            &[],
        )
    };
    let out = summary();
    let e = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("is empty") && e.contains("not a hub data directory"),
        "{e}"
    );
    assert!(!e.contains("does not exist"), "{e}");
    std::fs::write(tmp.path().join("notes.txt"), "x").unwrap();
    let out = summary();
    let e = text(&out.stderr);
    assert!(
        e.contains("not a hub data directory") && !e.contains("is empty"),
        "{e}"
    );
    // Inspection created nothing.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn a_bad_hub_variable_is_reported_by_its_variable_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let out = hub(
        &[
            "serve",
            "--no-sensors",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("HUB_LOG_RETENTION", "abc")],
    );
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(e.contains("HUB_LOG_RETENTION") && e.contains("abc"), "{e}");
    assert!(!data.exists());
}

#[test]
fn version_names_the_release_and_the_git_revision() {
    let out = hub(&["--version"], &[]);
    let v = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        v.contains(env!("CARGO_PKG_VERSION")) && v.contains("(git "),
        "{v}"
    );
}

#[test]
fn completions_and_man_page_are_printed() {
    for shell in ["bash", "zsh", "fish"] {
        let out = hub(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}");
        let s = text(&out.stdout);
        assert!(
            s.contains("snapshot") && s.contains("inspect"),
            "{shell}: {s}"
        );
    }
    let out = hub(&["man"], &[]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains(".TH hub"));
}

/// The lines of a child's pipe, read on their own thread; the channel
/// ends when the pipe does.
fn line_channel(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Every line read until one matches (returned last), or the deadline.
fn until(
    lines: &mpsc::Receiver<String>,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + WITHIN;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(l) => {
                let hit = matches(&l);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!(
        "no line {what} within {WITHIN:?}; saw:\n{}",
        seen.join("\n")
    );
}

/// A `hub serve` whose stderr is read line by line.
struct Logged {
    proc: Proc,
    lines: mpsc::Receiver<String>,
}

impl Logged {
    fn start(args: &[String], env: &[(&str, &str)]) -> Logged {
        let mut child: Child = Command::new(env!("CARGO_BIN_EXE_hub"))
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = line_channel(child.stderr.take().unwrap());
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let base = first
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string();
        Logged {
            proc: Proc { child, base },
            lines,
        }
    }

    /// Every log line read until one matches (returned last), or the deadline.
    fn until(&self, what: &str, matches: impl Fn(&str) -> bool) -> Vec<String> {
        until(&self.lines, what, matches)
    }
}

/// Node `a` in `dir`, joining through `join_port` on loopback.
fn joining_args(dir: &std::path::Path, certs: &Certs, join_port: u16) -> Vec<String> {
    serve_args(
        "a",
        &dir.join("d"),
        certs.path(),
        free_udp_port(),
        Some(join_port),
    )
}

#[test]
fn json_logs_carry_display_fields_and_warn_about_an_unreachable_join_address() {
    let certs = Certs::new(&["a"]);
    let tmp = tempfile::tempdir().unwrap();
    let join = free_udp_port();
    let node = Logged::start(
        &joining_args(tmp.path(), &certs, join),
        &[("RUST_LOG", "info"), ("HUB_LOG_FORMAT", "json")],
    );
    let seen = node.until("warning about the join address", |l| {
        l.contains("join address") && l.contains("\"WARN\"")
    });
    let warn: serde_json::Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    let fields = &warn["fields"];
    assert_eq!(fields["addr"], format!("127.0.0.1:{join}"), "{warn}");
    assert!(fields["retry_in_ms"].as_u64().is_some(), "{warn}");
    assert!(
        fields["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{warn}"
    );
    for line in &seen {
        assert!(
            !line.contains("Some("),
            "Debug output in a log line: {line}"
        );
        assert!(!line.contains("expected"), "{line}");
        if line.contains("cluster started") {
            assert!(
                line.contains(&format!("\"join\":\"127.0.0.1:{join}\"")),
                "{line}"
            );
            assert!(line.contains("\"joins\":1"), "{line}");
        }
        if line.contains("transport bound") {
            assert!(line.contains("\"addr\":\"127.0.0.1:"), "{line}");
        }
    }
    node.proc.stop();
}

#[test]
fn pretty_logs_into_a_pipe_carry_no_colour_codes() {
    let certs = Certs::new(&["a"]);
    let tmp = tempfile::tempdir().unwrap();
    let node = Logged::start(
        &joining_args(tmp.path(), &certs, free_udp_port()),
        &[("RUST_LOG", "info"), ("HUB_LOG_FORMAT", "pretty")],
    );
    let seen = node.until("warning about the join address", |l| {
        l.contains("join address")
    });
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "colour code in {line:?}");
    }
    assert!(seen.last().unwrap().contains("WARN"));
    node.proc.stop();
}

fn small_limits_node(data: &std::path::Path) -> Proc {
    Proc::start(
        &[
            "--no-sensors",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--max-value-bytes",
            "1000",
            "--max-batch-bytes",
            "4000",
        ]
        .map(String::from),
    )
}

/// Sends `body`, expects 413 and returns the error body.
async fn refused_as_too_large(
    http: &common::HttpClient,
    method: Method,
    url: &str,
    body: Vec<u8>,
) -> String {
    let (status, body) = call(http, method, url, body).await.unwrap();
    let body = text(&body);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    body
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_naming_the_limit_and_its_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let node = small_limits_node(&tmp.path().join("d"));
    let http = http_client();
    let body = refused_as_too_large(
        &http,
        Method::PUT,
        &format!("{}/kv/big", node.base),
        vec![b'x'; 5000],
    )
    .await;
    assert!(
        body.contains("1000") && body.contains("max_value_bytes"),
        "{body}"
    );
    assert!(!body.contains("Failed to buffer"), "{body}");
    let batch = format!("[{}]", vec![r#"{"sensor":"s","value":1}"#; 400].join(","));
    let url = format!("{}/api/readings", node.base);
    let body = refused_as_too_large(&http, Method::POST, &url, batch.into_bytes()).await;
    assert!(
        body.contains("4000") && body.contains("max_batch_bytes"),
        "{body}"
    );
    // Nothing was written.
    let (status, _) = call(&http, Method::GET, &format!("{}/kv/big", node.base), "")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    node.stop();
}

#[tokio::test]
async fn unknown_query_parameters_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let node = small_limits_node(&tmp.path().join("d"));
    let http = http_client();
    let (status, _) = call(&http, Method::PUT, &format!("{}/kv/a", node.base), "1")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/kv?prefix=a&_=1700000000",
        "/api/updates?limit=5&cachebust=1",
        "/api/merkle?level=0&utm_source=x",
        "/api/sensors/x/y/history?limit=1&_=2",
    ] {
        let (status, body) = call(&http, Method::GET, &format!("{}{path}", node.base), "")
            .await
            .unwrap();
        assert!(status.is_success(), "{path}: {status} {}", text(&body));
    }
    // A known parameter with a bad value is still refused.
    let (status, _) = call(
        &http,
        Method::GET,
        &format!("{}/kv?limit=x&_=1", node.base),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    node.stop();
}

#[test]
fn bench_prints_progress_lines_while_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let node = small_limits_node(&tmp.path().join("d"));
    let out = hub(
        &[
            "bench",
            "put",
            "--url",
            &node.base,
            "--clients",
            "2",
            "--duration",
            "1500ms",
        ],
        &[("HUB_PROGRESS_INTERVAL", "200ms")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e = text(&out.stderr);
    let progress: Vec<&str> = e.lines().filter(|l| l.starts_with("progress:")).collect();
    assert!(progress.len() >= 3, "{e}");
    assert!(progress.iter().all(|l| l.contains("writes")), "{e}");
    assert!(text(&out.stdout).contains("writes:"));
    node.stop();
}

/// The text after `label` on the first line that starts with it.
fn after<'a>(lines: &'a [String], label: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in {lines:?}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_working_token_and_logs_no_missing_key_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
        .args(["demo", "--nodes", "2", "--http-base-port", "0", "--dir"])
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = line_channel(child.stderr.take().unwrap());
    let out = line_channel(child.stdout.take().unwrap());
    let printed = until(&out, "ending the demo's banner", |l| {
        l.contains("Ctrl-C stops")
    });
    let url = after(&printed, "node-1:")
        .split_whitespace()
        .next()
        .unwrap();
    let ca = std::path::Path::new(after(&printed, "CA:"));
    let token = after(&printed, "admin token (new each run):");
    let membership = format!("{url}/api/membership");
    for (client, want) in [
        (https_client(ca, Some(token)), StatusCode::OK),
        (https_client(ca, None), StatusCode::UNAUTHORIZED),
    ] {
        let (status, body) = call(&client, Method::GET, &membership, "").await.unwrap();
        assert_eq!(status, want, "{}", text(&body));
    }
    Proc {
        child,
        base: url.to_string(),
    }
    .stop();
    // The demo has exited, so its stderr is closed and the channel ends.
    let warned: Vec<String> = log.iter().filter(|l| l.contains("no API keys")).collect();
    assert!(warned.is_empty(), "{warned:?}");
}

#[test]
fn keyless_serve_with_auth_says_how_to_make_the_first_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let node = Logged::start(
        &[
            "--no-sensors",
            "--http",
            "127.0.0.1:0",
            "--auth",
            "--data-dir",
            data.to_str().unwrap(),
        ]
        .map(String::from),
        &[("RUST_LOG", "warn")],
    );
    let seen = node.until("advice on the first key", |l| l.contains("no API keys yet"));
    assert!(seen.last().unwrap().contains("hub keys create"), "{seen:?}");
    node.proc.stop();
}
