//! The container image and the compose clusters, on a real Docker engine:
//! discovery without a join list, `docker kill` under write load, a node cut
//! off the network and reconnected, `down` + `up` on the same volumes, and
//! a 12-node cluster. Skipped, with the reason printed, where no Docker
//! engine answers.

mod common;
mod containers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;

use common::eventually_async;
use containers::{Docker, Project};
use hub::client::{Client, ClientOptions};

fn docker() -> Option<Docker> {
    match Docker::new() {
        Ok(d) => Some(d),
        Err(why) => {
            println!("skipped: {why}");
            None
        }
    }
}

/// Talks to the nodes of one project over HTTPS with the compose admin
/// token, through their published ports.
struct Api {
    c: Client,
    ca: std::path::PathBuf,
    token: String,
}

impl Api {
    fn new(p: &Project) -> Api {
        let (ca, token) = p.credentials();
        let c = Client::new(&ClientOptions {
            token: Some(token.clone()),
            cacert: Some(ca.clone()),
            timeout: Some(Duration::from_secs(5)),
        })
        .expect("client");
        Api { c, ca, token }
    }

    fn url(&self, p: &Project, svc: &str, path: &str) -> Option<String> {
        Some(format!("https://{}{path}", p.published(svc)?))
    }

    async fn call(
        &self,
        p: &Project,
        svc: &str,
        m: Method,
        path: &str,
        body: &str,
    ) -> Option<(StatusCode, Bytes)> {
        let url = self.url(p, svc, path)?;
        let r = self.c.request(m, &url, body.to_string(), None).await.ok()?;
        Some((r.status, r.body))
    }

    async fn json(&self, p: &Project, svc: &str, path: &str) -> Option<Value> {
        match self.call(p, svc, Method::GET, path, "").await? {
            (StatusCode::OK, body) => serde_json::from_slice(&body).ok(),
            _ => None,
        }
    }

    async fn put(&self, p: &Project, svc: &str, key: &str, value: &str) -> Result<(), String> {
        match self
            .call(p, svc, Method::PUT, &format!("/kv/{key}"), value)
            .await
        {
            Some((StatusCode::OK, _)) => Ok(()),
            other => Err(format!("PUT {key} on {svc}: {other:?}")),
        }
    }

    async fn delete(&self, p: &Project, svc: &str, key: &str) {
        let r = self
            .call(p, svc, Method::DELETE, &format!("/kv/{key}"), "")
            .await;
        assert_eq!(r.map(|r| r.0), Some(StatusCode::NO_CONTENT));
    }

    /// The value of `key` on `svc` (`Ok(None)`: 404); `Err` when the node
    /// cannot be asked right now (restarting, being reconnected).
    async fn try_get(&self, p: &Project, svc: &str, key: &str) -> Result<Option<String>, String> {
        match self
            .call(p, svc, Method::GET, &format!("/kv/{key}"), "")
            .await
        {
            Some((StatusCode::OK, body)) => Ok(Some(String::from_utf8_lossy(&body).into_owned())),
            Some((StatusCode::NOT_FOUND, _)) => Ok(None),
            other => Err(format!("GET {key} on {svc}: {other:?}")),
        }
    }

    async fn get(&self, p: &Project, svc: &str, key: &str) -> Option<String> {
        self.try_get(p, svc, key)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// True when `key` on `svc` is `want` right now.
    async fn has(&self, p: &Project, svc: &str, key: &str, want: Option<&str>) -> bool {
        self.try_get(p, svc, key)
            .await
            .is_ok_and(|v| v.as_deref() == want)
    }

    /// curl inside `svc`'s network namespace, for a node cut off the network.
    fn inside(&self, p: &Project, svc: &str, args: &[&str]) -> u16 {
        let auth = format!("Authorization: Bearer {}", self.token);
        let ca = self.ca.display().to_string();
        let mut all = vec!["--cacert", &ca, "-H", &auth];
        all.extend_from_slice(args);
        p.curl_inside(svc, &all).0
    }

    async fn alive_peers(&self, p: &Project, svc: &str) -> usize {
        self.json(p, svc, "/api/membership")
            .await
            .and_then(|v| v["alive_peers"].as_u64())
            .unwrap_or(0) as usize
    }

    async fn root(&self, p: &Project, svc: &str) -> Option<String> {
        self.json(p, svc, "/api/merkle")
            .await
            .and_then(|v| v["digest"].as_str().map(String::from))
    }

    async fn all_alive(&self, p: &Project) -> bool {
        for k in 1..=p.nodes {
            if self.alive_peers(p, &format!("node-{k}")).await != p.nodes - 1 {
                return false;
            }
        }
        true
    }

    async fn roots_equal(&self, p: &Project) -> bool {
        let mut roots = Vec::new();
        for k in 1..=p.nodes {
            roots.push(self.root(p, &format!("node-{k}")).await);
        }
        roots[0].is_some() && roots.iter().all(|r| *r == roots[0])
    }
}

#[tokio::test]
async fn three_containers_find_each_other_by_discovery_and_a_write_reaches_all() {
    let Some(d) = docker() else { return };
    let p = d.up(3);
    let api = Api::new(&p);
    eventually_async(
        "all three alive, no join list",
        Duration::from_secs(60),
        || api.all_alive(&p),
    )
    .await;
    api.put(&p, "node-1", "hello", "containers")
        .await
        .expect("PUT");
    eventually_async(
        "the write is on every node",
        Duration::from_secs(20),
        || async {
            for svc in ["node-1", "node-2", "node-3"] {
                if !api.has(&p, svc, "hello", Some("containers")).await {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

#[tokio::test]
async fn killed_container_keeps_every_acknowledged_write_and_catches_up() {
    let Some(d) = docker() else { return };
    let p = d.up(3);
    let api = Arc::new(Api::new(&p));
    eventually_async("all alive", Duration::from_secs(60), || api.all_alive(&p)).await;
    // Writers on node-2 and node-1; every acknowledged key is recorded.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, svc) in [(0, "node-2"), (1, "node-2"), (2, "node-1")] {
        let url = api.url(&p, svc, "/kv/").expect("published port");
        let (acked, stop, c) = (acked.clone(), stop.clone(), api.c.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("load/{w}/{i}");
                let res = c
                    .request(Method::PUT, &format!("{url}{key}"), format!("v{i}"), None)
                    .await;
                if res.as_ref().is_ok_and(|r| r.status == StatusCode::OK) {
                    acked.lock().expect("lock").insert(key, format!("v{i}"));
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                i += 1;
            }
        }));
    }
    eventually_async(
        "some writes acknowledged by node-2",
        Duration::from_secs(20),
        || async {
            acked
                .lock()
                .expect("lock")
                .keys()
                .filter(|k| !k.starts_with("load/2/"))
                .count()
                >= 200
        },
    )
    .await;
    p.kill("node-2");
    let at_kill = acked.lock().expect("lock").len();
    eventually_async(
        "node-1 keeps taking writes",
        Duration::from_secs(20),
        || async { acked.lock().expect("lock").len() >= at_kill + 100 },
    )
    .await;
    p.start("node-2");
    eventually_async("node-2 answers again", Duration::from_secs(30), || async {
        api.json(&p, "node-2", "/health").await.is_some()
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    eventually_async(
        "every acknowledged write is on every node",
        Duration::from_secs(60),
        || async { api.roots_equal(&p).await },
    )
    .await;
    for svc in ["node-1", "node-2", "node-3"] {
        let mut missing = 0;
        for (k, v) in &acked {
            if api.get(&p, svc, k).await.as_deref() != Some(v.as_str()) {
                missing += 1;
            }
        }
        assert_eq!(
            missing,
            0,
            "{svc} lacks {missing} of {} acknowledged writes",
            acked.len()
        );
    }
}

#[tokio::test]
async fn disconnected_container_converges_later_write_wins_and_delete_holds() {
    let Some(d) = docker() else { return };
    let p = d.up(3);
    let api = Api::new(&p);
    eventually_async("all alive", Duration::from_secs(60), || api.all_alive(&p)).await;
    api.put(&p, "node-1", "k", "before").await.expect("PUT");
    api.put(&p, "node-1", "doomed", "x").await.expect("PUT");
    api.put(&p, "node-1", "doomed-too", "y").await.expect("PUT");
    eventually_async(
        "the keys are on node-3",
        Duration::from_secs(20),
        || async { api.has(&p, "node-3", "doomed-too", Some("y")).await },
    )
    .await;
    p.disconnect("node-3");
    // Both sides write: node-3 through its own namespace (it is off the
    // network), the others through their published ports, the majority's write to `k`
    // last, so it must win everywhere.
    let base = "https://localhost:8080";
    let inside = |method: &str, key: &str, value: &str| {
        let url = format!("{base}/kv/{key}");
        api.inside(&p, "node-3", &["-X", method, "--data-binary", value, &url])
    };
    assert_eq!(inside("PUT", "k", "cut-side"), 200);
    assert_eq!(inside("DELETE", "doomed", ""), 204);
    assert_eq!(inside("PUT", "c3", "mine"), 200);
    api.put(&p, "node-1", "k", "majority").await.expect("PUT");
    api.put(&p, "node-2", "c1", "theirs").await.expect("PUT");
    api.delete(&p, "node-2", "doomed-too").await;
    assert_eq!(api.get(&p, "node-1", "doomed").await.as_deref(), Some("x"));
    p.connect("node-3");
    eventually_async("every node converges", Duration::from_secs(60), || async {
        for svc in ["node-1", "node-2", "node-3"] {
            if !(api.has(&p, svc, "k", Some("majority")).await
                && api.has(&p, svc, "doomed", None).await
                && api.has(&p, svc, "doomed-too", None).await
                && api.has(&p, svc, "c3", Some("mine")).await
                && api.has(&p, svc, "c1", Some("theirs")).await)
            {
                return false;
            }
        }
        api.roots_equal(&p).await
    })
    .await;
}

#[tokio::test]
async fn compose_down_and_up_on_the_same_volumes_keeps_the_data() {
    let Some(d) = docker() else { return };
    let p = d.up(3);
    let api = Api::new(&p);
    eventually_async("all alive", Duration::from_secs(60), || api.all_alive(&p)).await;
    for i in 0..50 {
        api.put(
            &p,
            &format!("node-{}", i % 3 + 1),
            &format!("keep/{i}"),
            &format!("{i}"),
        )
        .await
        .expect("PUT");
    }
    p.compose(&["down", "--timeout", "10"]);
    p.compose(&["up", "-d"]);
    eventually_async("all alive again", Duration::from_secs(60), || {
        api.all_alive(&p)
    })
    .await;
    for svc in ["node-1", "node-2", "node-3"] {
        for i in 0..50 {
            let key = format!("keep/{i}");
            let want = format!("{i}");
            eventually_async("every key is back", Duration::from_secs(20), || async {
                api.has(&p, svc, &key, Some(want.as_str())).await
            })
            .await;
        }
    }
}

#[tokio::test]
async fn twelve_container_cluster_converges() {
    let Some(d) = docker() else { return };
    let p = d.up(12);
    let api = Api::new(&p);
    eventually_async("all twelve alive", Duration::from_secs(120), || {
        api.all_alive(&p)
    })
    .await;
    for k in 1..=12 {
        api.put(&p, &format!("node-{k}"), &format!("from/{k}"), "x")
            .await
            .expect("PUT");
    }
    eventually_async("twelve equal roots", Duration::from_secs(60), || {
        api.roots_equal(&p)
    })
    .await;
    for k in 1..=12 {
        assert_eq!(
            api.get(&p, &format!("node-{}", 13 - k), &format!("from/{k}"))
                .await
                .as_deref(),
            Some("x")
        );
    }
}

#[test]
fn committed_compose_files_are_what_the_generator_writes() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for n in [3, 6, 12] {
        let out = std::process::Command::new(repo.join("deploy/compose.sh"))
            .arg(n.to_string())
            .output()
            .expect("run deploy/compose.sh");
        assert!(out.status.success());
        let committed = std::fs::read(repo.join(format!("deploy/compose-{n}.yml"))).expect("read");
        assert!(
            committed == out.stdout,
            "deploy/compose-{n}.yml is stale: run deploy/compose.sh {n} > deploy/compose-{n}.yml"
        );
    }
}
