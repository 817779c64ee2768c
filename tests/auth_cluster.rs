//! API keys are cluster-wide: on three real nodes over QUIC, serving HTTPS
//! with auth, a key made on one node works on every node, a key revoked on
//! one is refused by all within 2 s, and keys survive a restart.

mod common;

use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::json;

use common::*;
use hub::auth::{NewKey, Role};

async fn status(c: &HttpClient, method: Method, url: &str) -> Option<StatusCode> {
    call(c, method, url, "v").await.ok().map(|(s, _)| s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_or_revoked_on_one_node_take_effect_on_every_node_and_survive_restart() {
    let certs = Certs::new(&["a", "b", "c"]);
    let ca = certs.path().join("ca.pem");
    let a = TestNode::start(Spec::new("a", certs.path()).secure()).await;
    let b = TestNode::start(Spec::new("b", certs.path()).secure().join(&[a.quic()])).await;
    let c = TestNode::start(Spec::new("c", certs.path()).secure().join(&[a.quic()])).await;
    wait_full_mesh(&[&a, &b, &c], Duration::from_secs(10)).await;

    // The first admin key, as `hub keys create --data-dir` makes it.
    let (admin, _, op) = NewKey {
        role: Role::Admin,
        prefix: None,
        name: Some("boot".into()),
    }
    .mint(1)
    .unwrap();
    a.node.committer().commit(vec![op]).await.unwrap();
    let admin = admin.reveal().to_string();
    let as_admin = https_client(&ca, Some(&admin));

    // A write key made over HTTPS on node a works on b and c.
    let made = as_admin
        .send_json(
            Method::POST,
            &format!("{}/api/keys", a.base()),
            &json!({"role": "write", "name": "gw-1"}),
        )
        .await
        .unwrap();
    let token = made["token"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    let writer = https_client(&ca, Some(&token));
    for n in [&b, &c] {
        let url = format!("{}/kv/from-{}", n.base(), n.id);
        eventually_async(
            "the new key works on every node",
            Duration::from_secs(2),
            || {
                let (writer, url) = (&writer, &url);
                async move { status(writer, Method::PUT, url).await == Some(StatusCode::OK) }
            },
        )
        .await;
    }

    // Revoked on b: refused by all three within 2 s.
    let r = as_admin
        .request(
            Method::DELETE,
            &format!("{}/api/keys/{id}", b.base()),
            "",
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let took = eventually_async(
        "the revoked key is refused by every node",
        Duration::from_secs(2),
        || {
            let (writer, nodes) = (&writer, [&a, &b, &c]);
            async move {
                // Probe with reads: a write probe would land wherever the
                // revocation has not arrived yet.
                for n in nodes {
                    let url = format!("{}/kv/after-revoke", n.base());
                    if status(writer, Method::GET, &url).await != Some(StatusCode::UNAUTHORIZED) {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    eprintln!("revocation refused everywhere after {took:?}");
    for n in [&a, &b, &c] {
        let url = format!("{}/kv/after-revoke", n.base());
        assert_eq!(
            status(&writer, Method::PUT, &url).await,
            Some(StatusCode::UNAUTHORIZED)
        );
        assert!(n.value("after-revoke").is_none());
    }

    // Restart c: the admin key still works there, the revoked one does not.
    let c = c.restart().await;
    assert_eq!(
        status(&as_admin, Method::GET, &format!("{}/kv/from-c", c.base())).await,
        Some(StatusCode::OK)
    );
    assert_eq!(
        status(&writer, Method::PUT, &format!("{}/kv/x", c.base())).await,
        Some(StatusCode::UNAUTHORIZED)
    );
    // Keys are in the Merkle roots: all three agree.
    eventually("roots equal after restart", Duration::from_secs(10), || {
        roots_equal(&[&a, &b, &c])
    })
    .await;
    for n in [a, b, c] {
        n.node.shutdown().await;
    }
}
