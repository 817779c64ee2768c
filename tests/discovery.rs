//! LAN discovery across real network stacks: hub nodes in network
//! namespaces on one bridge find each other with no `--join`, over
//! multicast and over broadcast; a node with another CA's certificate hears
//! the beacons too but gets no membership and no data.

mod common;
mod netns;

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;

use common::{call, eventually_async, get_json, http_client, Certs, HttpClient};
use netns::{Lan, NsProc};

fn args(
    lan: &Lan,
    i: usize,
    id: &str,
    certs: &std::path::Path,
    data: &std::path::Path,
    beacon_to: &str,
) -> Vec<String> {
    let ip = lan.host_ip(i);
    [
        "--node-id",
        id,
        "--data-dir",
        &data.join(id).display().to_string(),
        "--http",
        &format!("{ip}:0"),
        "--listen",
        &format!("{ip}:0"),
        "--certs",
        &certs.display().to_string(),
        "--discovery",
        "lan",
        "--discovery-addr",
        beacon_to,
        "--no-sensors",
        // Plain HTTP on the namespace's address: fine for a test LAN.
        "--insecure",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn alive_peers(c: &HttpClient, p: &NsProc) -> Vec<String> {
    let Some(v) = get_json(c, &format!("{}/api/membership", p.base)).await else {
        return Vec::new();
    };
    v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["status"] == "alive")
                .filter_map(|m| m["node_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn value(c: &HttpClient, p: &NsProc, key: &str) -> Option<String> {
    match call(
        c,
        Method::GET,
        &format!("{}/kv/{key}", p.base),
        Bytes::new(),
    )
    .await
    {
        Ok((StatusCode::OK, body)) => Some(String::from_utf8_lossy(&body).into_owned()),
        _ => None,
    }
}

async fn put(c: &HttpClient, p: &NsProc, key: &str, v: &'static str) {
    let (status, body) = call(c, Method::PUT, &format!("{}/kv/{key}", p.base), v)
        .await
        .expect("PUT");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

async fn nodes_find_each_other_without_join(beacon_to: impl Fn(&Lan) -> String) {
    let lan = match Lan::create(3) {
        Ok(lan) => lan,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let certs = Certs::new(&["n1", "n2", "n3"]);
    let data = tempfile::tempdir().expect("tempdir");
    let target = beacon_to(&lan);
    let procs: Vec<NsProc> = (1..=3)
        .map(|i| {
            lan.serve(
                i,
                &args(
                    &lan,
                    i,
                    &format!("n{i}"),
                    certs.path(),
                    data.path(),
                    &target,
                ),
            )
        })
        .collect();
    let c = http_client();
    eventually_async(
        "every node sees the two others alive",
        Duration::from_secs(20),
        || async {
            for p in &procs {
                if alive_peers(&c, p).await.len() != 2 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    put(&c, &procs[0], "found/by", "beacon").await;
    eventually_async(
        "the write reaches every node",
        Duration::from_secs(10),
        || async {
            for p in &procs {
                if value(&c, p, "found/by").await.as_deref() != Some("beacon") {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

#[tokio::test]
async fn nodes_on_one_lan_find_each_other_by_multicast_without_join() {
    nodes_find_each_other_without_join(|_| "239.255.73.73:7373".into()).await;
}

#[tokio::test]
async fn nodes_on_one_lan_find_each_other_by_broadcast_without_join() {
    nodes_find_each_other_without_join(|lan| format!("{}:7373", lan.broadcast())).await;
}

#[tokio::test]
async fn a_node_of_another_ca_is_heard_but_gets_no_membership_and_no_data() {
    let lan = match Lan::create(3) {
        Ok(lan) => lan,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let ours = Certs::new(&["n1", "n2"]);
    let theirs = Certs::new(&["intruder"]);
    let data = tempfile::tempdir().expect("tempdir");
    let target = "239.255.73.73:7373";
    let n1 = lan.serve(1, &args(&lan, 1, "n1", ours.path(), data.path(), target));
    let n2 = lan.serve(2, &args(&lan, 2, "n2", ours.path(), data.path(), target));
    let intruder = lan.serve(
        3,
        &args(&lan, 3, "intruder", theirs.path(), data.path(), target),
    );
    let c = http_client();
    put(&c, &n1, "secret", "ours").await;
    put(&c, &intruder, "planted", "theirs").await;
    eventually_async(
        "n1 and n2 find each other",
        Duration::from_secs(20),
        || async { alive_peers(&c, &n1).await == ["n2"] && alive_peers(&c, &n2).await == ["n1"] },
    )
    .await;
    // The intruder's hellos must have been tried and refused by the TLS
    // handshake: wait until both sides have counted a refusal.
    let refusals = |v: Option<Value>| -> u64 {
        v.and_then(|v| v["transport"]["handshake_rejections"].as_object().cloned())
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    eventually_async(
        "our nodes refuse the intruder's handshakes",
        Duration::from_secs(20),
        || async {
            refusals(get_json(&c, &format!("{}/api/sync", n1.base)).await) > 0
                && refusals(get_json(&c, &format!("{}/api/sync", n2.base)).await) > 0
        },
    )
    .await;
    assert!(alive_peers(&c, &intruder).await.is_empty());
    for p in [&n1, &n2] {
        let members = get_json(&c, &format!("{}/api/membership", p.base))
            .await
            .expect("membership");
        assert!(!members.to_string().contains("intruder"), "{members}");
        assert_eq!(value(&c, p, "planted").await, None);
    }
    assert_eq!(value(&c, &intruder, "secret").await, None);
}
