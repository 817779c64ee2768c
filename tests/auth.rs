//! API keys on one real node over HTTPS with a real CA: every route against
//! every kind of caller, the internal keyspace kept out of the client API,
//! and prefix-limited keys seeing only their keys.

mod common;

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use serde_json::Value;

use common::*;
use hub::auth::Role;
use hub::node::Node;

struct Secured {
    node: Node,
    certs: Certs,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Secured {
    async fn start() -> Secured {
        let certs = Certs::new(&["n1"]);
        let dir = tempfile::tempdir().unwrap();
        let node = secure_node(&certs, &dir.path().join("data")).await;
        let admin = mint(&node, Role::Admin, None).await;
        Secured {
            node,
            certs,
            admin,
            _dir: dir,
        }
    }

    fn client(&self, token: Option<&str>) -> HttpClient {
        https_client(&self.certs.path().join("ca.pem"), token)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.base_url())
    }
}

async fn mint(node: &Node, role: Role, prefix: Option<&str>) -> String {
    mint_key(node, role, prefix).await
}

const CALLERS: [&str; 7] = [
    "none",
    "malformed",
    "unknown",
    "read",
    "write",
    "admin",
    "prefix",
];

/// One row: a request and the status each caller gets, in `CALLERS` order.
/// `{t}` in the path becomes the caller's name, so writes do not collide.
struct Row {
    method: Method,
    path: &'static str,
    body: &'static str,
    want: [u16; 7],
}

fn row(method: Method, path: &'static str, body: &'static str, want: [u16; 7]) -> Row {
    Row {
        method,
        path,
        body,
        want,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_caller_with_the_status_its_role_and_prefix_allow() {
    let n = Secured::start().await;
    let tokens: BTreeMap<&str, String> = [
        ("malformed", "not-a-hub-token".to_string()),
        (
            "unknown",
            hub::auth::token::Token::generate().reveal().to_string(),
        ),
        ("read", mint(&n.node, Role::Read, None).await),
        ("write", mint(&n.node, Role::Write, None).await),
        ("admin", n.admin.clone()),
        ("prefix", mint(&n.node, Role::Write, Some("data/")).await),
    ]
    .into_iter()
    .collect();
    let admin = n.client(Some(&n.admin));
    for key in ["data/a", "other/b"]
        .into_iter()
        .map(String::from)
        .chain(CALLERS.iter().map(|c| format!("data/d-{c}")))
        .chain(CALLERS.iter().map(|c| format!("other/d-{c}")))
    {
        let r = call(&admin, Method::PUT, &n.url(&format!("/kv/{key}")), "v").await;
        assert_eq!(r.unwrap().0, StatusCode::OK);
    }
    let readings = r#"[{"sensor":"boiler","value":1}]"#;
    let key = r#"{"role":"read"}"#;
    use Method as M;
    //                                            none malf unkn read writ admn pref
    let rows = [
        row(M::GET, "/health", "", [200, 200, 200, 200, 200, 200, 200]),
        row(
            M::GET,
            "/kv/data/a",
            "",
            [401, 401, 401, 200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/kv/other/b",
            "",
            [401, 401, 401, 200, 200, 200, 403],
        ),
        row(
            M::PUT,
            "/kv/data/p-{t}",
            "v",
            [401, 401, 401, 403, 200, 200, 200],
        ),
        row(
            M::PUT,
            "/kv/other/p-{t}",
            "v",
            [401, 401, 401, 403, 200, 200, 403],
        ),
        row(
            M::POST,
            "/kv/data/c-{t}",
            "v",
            [401, 401, 401, 403, 201, 201, 201],
        ),
        row(
            M::DELETE,
            "/kv/data/d-{t}",
            "",
            [401, 401, 401, 403, 204, 204, 204],
        ),
        row(
            M::DELETE,
            "/kv/other/d-{t}",
            "",
            [401, 401, 401, 403, 204, 204, 403],
        ),
        row(
            M::POST,
            "/kv",
            r#"{"writes":[{"key":"data/batch","value":"v"}]}"#,
            [401, 401, 401, 403, 200, 200, 200],
        ),
        // One write outside a prefix key's scope refuses the whole batch.
        row(
            M::POST,
            "/kv",
            r#"{"writes":[{"key":"data/batch","value":"v"},{"key":"other/batch","value":"v"}]}"#,
            [401, 401, 401, 403, 200, 200, 403],
        ),
        row(
            M::GET,
            "/kv?prefix=",
            "",
            [401, 401, 401, 200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/kv/_hub/keys/x",
            "",
            [401, 401, 401, 400, 400, 400, 400],
        ),
        row(
            M::PUT,
            "/kv/_hub/keys/x",
            "v",
            [401, 401, 401, 403, 400, 400, 400],
        ),
        row(
            M::GET,
            "/api/entry/data/a",
            "",
            [401, 401, 401, 200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/entry/other/b",
            "",
            [401, 401, 401, 200, 200, 200, 403],
        ),
        row(
            M::GET,
            "/api/state",
            "",
            [401, 401, 401, 200, 200, 200, 200],
        ),
        row(
            M::GET,
            "/api/updates",
            "",
            [401, 401, 401, 200, 200, 200, 200],
        ),
        row(
            M::POST,
            "/api/readings",
            readings,
            [401, 401, 401, 403, 200, 200, 403],
        ),
        row(
            M::GET,
            "/api/sensors/n1/boiler/history",
            "",
            [401, 401, 401, 200, 200, 200, 403],
        ),
        row(
            M::GET,
            "/api/membership",
            "",
            [401, 401, 401, 200, 200, 200, 403],
        ),
        row(
            M::GET,
            "/api/introspection",
            "",
            [401, 401, 401, 200, 200, 200, 403],
        ),
        row(
            M::GET,
            "/api/merkle",
            "",
            [401, 401, 401, 200, 200, 200, 403],
        ),
        row(M::GET, "/metrics", "", [401, 401, 401, 200, 200, 200, 403]),
        row(M::GET, "/api/sync", "", [401, 401, 401, 403, 403, 404, 403]),
        row(M::GET, "/api/keys", "", [401, 401, 401, 403, 403, 200, 403]),
        row(
            M::POST,
            "/api/keys",
            key,
            [401, 401, 401, 403, 403, 201, 403],
        ),
        row(
            M::GET,
            "/no/such/route",
            "",
            [401, 401, 401, 404, 404, 404, 403],
        ),
    ];
    let mut failures = Vec::new();
    for r in &rows {
        for (i, caller) in CALLERS.iter().enumerate() {
            let client = n.client(tokens.get(caller).map(String::as_str));
            let path = r.path.replace("{t}", caller);
            let reply = client
                .request(
                    r.method.clone(),
                    &n.url(&path),
                    r.body,
                    Some("application/json"),
                )
                .await
                .unwrap();
            let got = reply.status.as_u16();
            if got != r.want[i] {
                failures.push(format!(
                    "{} {path} as {caller}: got {got}, want {} ({})",
                    r.method,
                    r.want[i],
                    String::from_utf8_lossy(&reply.body)
                ));
                continue;
            }
            if got >= 400 {
                let v: Value = reply.json().unwrap_or_else(|| {
                    panic!("{} {path} as {caller}: error body is not JSON", r.method)
                });
                assert!(v["error"]["code"].is_string(), "{v}");
            }
            if got == 401 {
                let challenge = reply.headers.get("www-authenticate").unwrap();
                assert!(challenge.to_str().unwrap().starts_with("Bearer"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Refused writes changed nothing.
    let store = n.node.store();
    for caller in ["none", "malformed", "unknown", "read", "prefix"] {
        assert!(store.get(&format!("other/p-{caller}")).unwrap().is_none());
        let kept = store.get(&format!("other/d-{caller}")).unwrap().unwrap();
        assert!(kept.value.is_some(), "other/d-{caller} was deleted");
    }
    assert!(store.get("_hub/keys/x").unwrap().is_none());
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_keys_never_reach_the_client_api_and_a_prefix_key_sees_only_its_keys() {
    let n = Secured::start().await;
    let limited = mint(&n.node, Role::Read, Some("data/")).await;
    let admin = n.client(Some(&n.admin));
    for key in ["data/a", "data/b", "other/c"] {
        call(&admin, Method::PUT, &n.url(&format!("/kv/{key}")), "v")
            .await
            .unwrap();
    }
    let keys = |v: &Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key"].as_str().unwrap().to_string())
            .collect()
    };
    let all = admin.get_json(&n.url("/kv")).await.unwrap();
    assert_eq!(keys(&all), ["data/a", "data/b", "other/c"]);
    let updates = admin.get_json(&n.url("/api/updates")).await.unwrap();
    let changed: Vec<&str> = updates["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["key"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["data/a", "data/b", "other/c"]);
    assert!(!updates.to_string().contains("_hub/"));
    // The key records are there (two keys), just not visible.
    assert_eq!(
        n.node.store().scan("_hub/keys/", None, 10).unwrap().len(),
        2
    );

    let mine = n.client(Some(&limited));
    let v = mine.get_json(&n.url("/kv")).await.unwrap();
    assert_eq!(keys(&v), ["data/a", "data/b"]);
    let v = mine.get_json(&n.url("/kv?prefix=other/")).await.unwrap();
    assert!(keys(&v).is_empty());
    let v = mine.get_json(&n.url("/kv?prefix=data/b")).await.unwrap();
    assert_eq!(keys(&v), ["data/b"]);
    let v = mine.get_json(&n.url("/api/updates")).await.unwrap();
    let changed: Vec<&str> = v["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["key"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["data/a", "data/b"]);
    assert_eq!(
        v["next"], updates["next"],
        "the cursor moves past hidden changes"
    );
    n.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_over_the_api_works_at_once_and_is_refused_once_revoked() {
    let n = Secured::start().await;
    let admin = n.client(Some(&n.admin));
    let made = admin
        .send_json(
            Method::POST,
            &n.url("/api/keys"),
            &serde_json::json!({"role": "write", "name": "gw"}),
        )
        .await
        .unwrap();
    let token = made["token"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    let listed = admin.get_json(&n.url("/api/keys")).await.unwrap();
    assert!(
        !listed.to_string().contains(&token[20..]),
        "a listing shows a token"
    );
    assert!(listed.to_string().contains(&id));
    let w = n.client(Some(&token));
    let r = call(&w, Method::PUT, &n.url("/kv/x"), "1").await.unwrap();
    assert_eq!(r.0, StatusCode::OK);
    let r = admin
        .request(Method::DELETE, &n.url(&format!("/api/keys/{id}")), "", None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = w
        .request(Method::PUT, &n.url("/kv/x"), "2", None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = admin
        .request(Method::DELETE, &n.url(&format!("/api/keys/{id}")), "", None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        n.node.store().get("x").unwrap().unwrap().value.unwrap(),
        b"1"
    );
    let metrics = admin
        .request(Method::GET, &n.url("/metrics"), "", None)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains("hub_http_auth_failures_total{reason=\"revoked\"} 1"),
        "{text}"
    );
    n.node.shutdown().await;
}
