//! Starting a node: a failed start exits with a clear message, keeps
//! nothing running, leaves the data directory unlocked and removes what it
//! created; a bad setting is refused naming what the operator set.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Certs, Proc};
use hub::config::{Config, ConfigLayer};
use hub::model::Meta;
use hub::node::Node;
use hub::store::{Condition, Op};

/// Runs `hub serve ARGS` with `env`, expecting it to exit by itself.
fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hub serve {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "hub serve {args:?} succeeded");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn http_port_taken_exits_non_zero_with_a_clear_message_and_leaves_no_directory() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let http = format!("127.0.0.1:{port}");
    let out = serve_fails(
        &[
            "--no-sensors",
            "--http",
            &http,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let err = stderr(&out);
    assert!(
        err.contains("cannot bind HTTP") && err.contains(&http),
        "{err}"
    );
    assert!(!data.exists(), "a failed start left {}", data.display());
    // The same directory works at once for a start that can bind.
    drop(taken);
    let mut node = Proc::start(
        &[
            "--no-sensors",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ]
        .map(String::from),
    );
    node.kill_9();
}

#[test]
fn a_bad_environment_value_is_refused_naming_the_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for (var, value) in [("HUB_FANOUT", "abc"), ("HUB_LOG_RETENTION", "abc")] {
        let out = serve_fails(
            &["--no-sensors", "--data-dir", data.to_str().unwrap()],
            &[(var, value)],
        );
        let err = stderr(&out);
        assert!(err.contains(var), "{var}: {err}");
        assert!(!err.contains("--"), "{var}: names a flag instead: {err}");
        assert!(!data.exists());
    }
    let out = serve_fails(
        &["--no-sensors", "--data-dir", data.to_str().unwrap()],
        &[("HUB_FANOUT", "0"), ("HUB_LISTEN", "127.0.0.1:0")],
    );
    let err = stderr(&out);
    assert!(
        err.contains("fanout") && err.contains("HUB_FANOUT"),
        "{err}"
    );
}

fn config(data: &Path, listen: Option<&str>, certs: Option<&Path>) -> Config {
    Config::resolve([ConfigLayer {
        node_id: Some("n1".into()),
        data_dir: Some(data.into()),
        http: Some("127.0.0.1:0".into()),
        listen: listen.map(String::from),
        certs: certs.map(Path::to_path_buf),
        sensors: Some(Vec::new()),
        ..ConfigLayer::default()
    }])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cluster_start_unlocks_the_directory_and_removes_only_what_it_created() {
    let tmp = tempfile::tempdir().unwrap();
    let no_certs = tmp.path().join("no-certs");

    // A fresh directory: the store is opened, then the certificates are
    // missing. Nothing of the start remains.
    let fresh = tmp.path().join("fresh");
    let err = Node::start(config(&fresh, Some("127.0.0.1:0"), Some(&no_certs)))
        .await
        .err()
        .expect("start without certificates must fail");
    assert!(err.to_string().contains("certificates"), "{err}");
    assert!(!fresh.exists(), "a failed start left {}", fresh.display());

    // An existing empty directory stays, empty.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(
        Node::start(config(&empty, Some("127.0.0.1:0"), Some(&no_certs)))
            .await
            .is_err()
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    // A directory with data: kept whole, and unlocked when start returns.
    let data = tmp.path().join("data");
    let node = Node::start(config(&data, None, None)).await.unwrap();
    node.committer()
        .commit(vec![Op::Local {
            key: "kept".into(),
            value: Some(b"yes".to_vec()),
            meta: Meta::new(),
            cond: Condition::Always,
        }])
        .await
        .unwrap();
    node.shutdown().await;
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let quic = taken.local_addr().unwrap().to_string();
    let certs = Certs::new(&["n1"]);
    let err = Node::start(config(&data, Some(&quic), Some(certs.path())))
        .await
        .err()
        .expect("start on a taken QUIC port must fail");
    assert!(err.to_string().contains(&quic), "{err}");
    let node = Node::start(config(&data, None, None)).await.unwrap();
    let entry = node.store().get("kept").unwrap().expect("data kept");
    assert_eq!(entry.value.as_deref(), Some(&b"yes"[..]));
    node.shutdown().await;
}
