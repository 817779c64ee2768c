//! HTTPS and secure defaults against real nodes: what plain HTTP, a foreign
//! CA, curl and Python get from an HTTPS port; the refusal to expose plain
//! HTTP; tokens never in logs; private data files.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hyper::{Method, StatusCode};

use common::*;
use hub::node::Node;

async fn https_node(certs: &Certs, data: &Path) -> Node {
    secure_node(certs, data).await
}

/// Runs an outside TLS client (installed by .ci/run) off the runtime's
/// threads and expects it to succeed.
async fn client_gets(program: &'static str, args: &[&str]) -> std::process::Output {
    let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || Command::new(program).args(owned).output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{program} is installed (.ci/run installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn admin_token(node: &Node) -> String {
    mint_key(node, hub::auth::Role::Admin, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_https_port_gets_no_data() {
    let certs = Certs::new(&["n1"]);
    let dir = tempfile::tempdir().unwrap();
    let node = https_node(&certs, &dir.path().join("data")).await;
    let admin = admin_token(&node).await;
    let c = https_client(&certs.path().join("ca.pem"), Some(&admin));
    let url = format!("{}/kv/secret", node.base_url());
    assert_eq!(
        call(&c, Method::PUT, &url, "s3cr3t-value").await.unwrap().0,
        StatusCode::OK
    );

    let addr = node.http_addr();
    let got = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /kv/secret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    })
    .await
    .unwrap();
    assert!(
        !got.starts_with(b"HTTP/"),
        "plain HTTP was answered: {got:?}"
    );
    assert!(
        !got.windows(6).any(|w| w == b"s3cr3t"),
        "the value leaked over plain HTTP"
    );
    // The plain client refuses to send to an https URL without a CA.
    let e = call(&http_client(), Method::GET, &url, "")
        .await
        .unwrap_err();
    assert!(e.contains("--cacert"), "{e}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_refuses_the_node() {
    let certs = Certs::new(&["n1"]);
    let other = Certs::new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let node = https_node(&certs, &dir.path().join("data")).await;
    let admin = admin_token(&node).await;
    let c = https_client(&other.path().join("ca.pem"), Some(&admin));
    let e = call(&c, Method::GET, &format!("{}/kv", node.base_url()), "")
        .await
        .unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let ok = https_client(&certs.path().join("ca.pem"), Some(&admin));
    assert!(ok
        .get_json(&format!("{}/kv", node.base_url()))
        .await
        .is_ok());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_python_accept_the_node_certificate_for_its_ip_and_name() {
    let certs = Certs::new(&["n1"]);
    let dir = tempfile::tempdir().unwrap();
    let node = https_node(&certs, &dir.path().join("data")).await;
    let ca = certs.path().join("ca.pem");
    let port = node.http_addr().port();
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{port}/health");
        let out = client_gets(
            "curl",
            &["-sS", "--fail", "--cacert", ca.to_str().unwrap(), &url],
        )
        .await;
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\""));
        let script = "import ssl,sys,urllib.request\n\
                      ctx=ssl.create_default_context(cafile=sys.argv[1])\n\
                      if hasattr(ssl,'VERIFY_X509_STRICT'): ctx.verify_flags|=ssl.VERIFY_X509_STRICT\n\
                      print(urllib.request.urlopen(sys.argv[2],context=ctx).read().decode())";
        client_gets("python3", &["-c", script, ca.to_str().unwrap(), &url]).await;
    }
    node.shutdown().await;
}

fn hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hub"))
}

#[test]
fn serve_refuses_a_non_loopback_http_address_without_tls_and_auth_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = hub()
        .args(["serve", "--no-sensors", "--http", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .env("HUB_LOG_FORMAT", "pretty")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for flag in ["--http-tls", "--auth", "--insecure"] {
        assert!(err.contains(flag), "message does not name {flag}: {err}");
    }
    assert!(!data.exists(), "a refused start created the data directory");

    // TLS alone is not enough either.
    let out = hub()
        .args([
            "serve",
            "--no-sensors",
            "--http",
            "0.0.0.0:0",
            "--http-tls",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--auth"));

    // --insecure starts it, with a warning.
    let mut child = hub()
        .args([
            "serve",
            "--no-sensors",
            "--insecure",
            "--http",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(line.contains("serving http://0.0.0.0:"), "{line:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARN") && err.contains("--insecure"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_appears_in_any_log_line_even_at_debug_level() {
    let certs = Certs::new(&["n1"]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The first admin key, made offline on a node never started.
    let data_dir = data.to_str().unwrap();
    let admin = hub_ok(&[
        "keys",
        "create",
        "--role",
        "admin",
        "--node-id",
        "n1",
        "--data-dir",
        data_dir,
    ])
    .trim()
    .to_string();
    assert!(
        admin.starts_with("hub_"),
        "stdout is only the token: {admin:?}"
    );
    let log = dir.path().join("node.log");
    let mut child = hub()
        .args([
            "serve",
            "--node-id",
            "n1",
            "--no-sensors",
            "--http",
            "127.0.0.1:0",
        ])
        .args(["--http-tls", "--auth", "--certs"])
        .arg(certs.path())
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line.split_whitespace().last().unwrap().to_string();
    assert!(base.starts_with("https://"), "{line:?}");
    let ca = certs.path().join("ca.pem");
    let c = https_client(&ca, Some(&admin));
    let made = c
        .send_json(
            Method::POST,
            &format!("{base}/api/keys"),
            &serde_json::json!({"role": "read"}),
        )
        .await
        .unwrap();
    let second = made["token"].as_str().unwrap().to_string();
    let mut tampered = admin.clone();
    tampered.pop();
    tampered.push('x');
    let mut wrong_secret = admin.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    for t in [&admin, &second, &tampered, &wrong_secret] {
        let cl = https_client(&ca, Some(t));
        let _ = call(&cl, Method::PUT, &format!("{base}/kv/k"), "v").await;
        let _ = call(&cl, Method::GET, &format!("{base}/api/sync"), "").await;
    }
    let id = made["id"].as_str().unwrap();
    c.request(Method::DELETE, &format!("{base}/api/keys/{id}"), "", None)
        .await
        .unwrap();
    let _ = call(
        &https_client(&ca, Some(&second)),
        Method::GET,
        &format!("{base}/kv"),
        "",
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("request refused"),
        "the log has no debug lines about refusals, so it proves nothing:\n{text}"
    );
    for t in [&admin, &second, &tampered, &wrong_secret] {
        let secret = t.rsplit('_').next().unwrap();
        assert!(!text.contains(secret), "a token's secret is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_its_files_are_private_to_the_node_user() {
    use std::os::unix::fs::PermissionsExt;
    let certs = Certs::new(&["n1"]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = https_node(&certs, &data).await;
    node.shutdown().await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let mut files = 0;
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            files += 1;
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    assert!(files > 0);
}

/// Runs the hub binary off the async runtime; returns (success, stdout, stderr).
async fn run_hub(args: Vec<String>, token: Option<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut cmd = hub();
        cmd.args(&args).env_remove("HUB_TOKEN");
        if let Some(t) = token {
            cmd.env("HUB_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_inspect_talk_to_a_node_over_https_with_a_token_and_a_ca() {
    let certs = Certs::new(&["n1"]);
    let dir = tempfile::tempdir().unwrap();
    let node = https_node(&certs, &dir.path().join("data")).await;
    let admin = admin_token(&node).await;
    let base = node.base_url();
    let ca = certs.path().join("ca.pem").display().to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let remote = s(&["--node", &base, "--cacert", &ca]);

    let mut args = s(&[
        "keys", "create", "--role", "read", "--prefix", "data/", "--name", "r1",
    ]);
    args.extend(remote.clone());
    let (ok, out, err) = run_hub(args, Some(admin.clone())).await;
    assert!(ok, "{err}");
    let token = out.trim().to_string();
    assert!(
        token.starts_with("hub_") && !out.trim().contains('\n'),
        "{out:?}"
    );

    let mut args = s(&["keys", "list", "--json"]);
    args.extend(remote.clone());
    let (ok, out, err) = run_hub(args, Some(admin.clone())).await;
    assert!(ok, "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mine = list.iter().find(|k| k["name"] == "r1").unwrap();
    for field in ["id", "name", "role", "prefix", "created"] {
        assert!(!mine[field].is_null(), "{field} missing in {mine}");
    }
    assert_eq!(mine["role"], "read");
    assert!(!out.contains(token.rsplit('_').next().unwrap()));

    let mut args = s(&["inspect"]);
    args.extend(remote.clone());
    args.extend(s(&["summary", "--json"]));
    let (ok, out, err) = run_hub(args, Some(admin.clone())).await;
    assert!(ok, "{err}");
    assert!(out.contains("merkle_root"));

    // Without a token: the node's 401 message; without a CA or scheme: advice.
    let mut args = s(&["inspect"]);
    args.extend(remote.clone());
    args.push("summary".into());
    let (ok, _, err) = run_hub(args, None).await;
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = run_hub(
        s(&["inspect", "--node", &base, "summary"]),
        Some(admin.clone()),
    )
    .await;
    assert!(!ok && err.contains("--cacert"), "{err}");
    let bare = base.trim_start_matches("https://");
    let (ok, _, err) = run_hub(s(&["inspect", "--node", bare, "summary"]), None).await;
    assert!(!ok && err.contains(&format!("https://{bare}")), "{err}");

    let id = mine["id"].as_str().unwrap();
    let mut args = s(&["keys", "revoke", id]);
    args.extend(remote.clone());
    let (ok, _, err) = run_hub(args, Some(admin.clone())).await;
    assert!(ok, "{err}");
    let c = https_client(&certs.path().join("ca.pem"), Some(&token));
    let r = c
        .request(Method::GET, &format!("{base}/kv"), "", None)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    node.shutdown().await;
}
