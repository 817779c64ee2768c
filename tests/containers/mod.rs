//! Real containers for cluster tests: the hub image built from this build's
//! binary (offline, by `deploy/build-image.sh`), and compose projects made
//! by `deploy/compose.sh`. Each project has a random name and is removed
//! with its volumes on drop; published ports are left to Docker so tests
//! never collide, and the tests talk to containers by their bridge address.
//!
//! Where no Docker engine answers, [`Docker::new`] says why and the test
//! skips.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::Rng;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn text(out: Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Docker engine with Compose, and the image of this build.
pub struct Docker {
    pub image: String,
}

impl Docker {
    /// `Err` is the reason to skip.
    pub fn new() -> Result<Docker, String> {
        run(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]))
            .map_err(|e| format!("no Docker engine answers ({e})"))?;
        run(Command::new("docker-compose").arg("version"))
            .map_err(|e| format!("docker-compose is not installed ({e})"))?;
        Ok(Docker { image: image()? })
    }

    /// Starts an N-node project from `deploy/compose.sh N`.
    pub fn up(&self, nodes: usize) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("compose.yml");
        let yaml = text(
            run(Command::new(repo().join("deploy/compose.sh")).arg(nodes.to_string()))
                .expect("deploy/compose.sh"),
        );
        std::fs::write(&file, yaml).expect("write compose file");
        let name = format!("hubt{:06x}", rand::thread_rng().gen_range(0..0xffffff));
        let p = Project {
            name,
            file,
            image: self.image.clone(),
            nodes,
            ports: Default::default(),
            dir,
        };
        p.compose(&["up", "-d"]);
        p
    }
}

/// The image for this test binary's `hub`: built once per binary (tests in
/// parallel wait on one lock), tagged by the binary's size and mtime.
fn image() -> Result<String, String> {
    let bin = Path::new(env!("CARGO_BIN_EXE_hub"));
    let meta = std::fs::metadata(bin).map_err(|e| e.to_string())?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let tag = format!("hub:test-{:x}-{mtime:x}", meta.len());
    let have = |tag: &str| {
        Command::new("docker")
            .args(["image", "inspect", tag])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !have(&tag) {
        run(Command::new("flock")
            .arg("/tmp/hub-test-image.lock")
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "docker image inspect {tag} >/dev/null 2>&1 || {}/deploy/build-image.sh {tag}",
                repo().display()
            ))
            .env("HUB_BINARY", bin))?;
    }
    Ok(tag)
}

/// One compose project; `down -v` on drop.
pub struct Project {
    pub name: String,
    file: PathBuf,
    image: String,
    pub nodes: usize,
    /// Host ports published for each node's 8080; they change when a
    /// container starts again, so kill/start/compose forget them.
    ports: std::sync::Mutex<std::collections::HashMap<String, String>>,
    dir: tempfile::TempDir,
}

impl Project {
    pub fn compose(&self, args: &[&str]) -> String {
        self.forget_ports();
        match run(&mut self.compose_command(args)) {
            Ok(out) => text(out),
            // Say why: a container that exited is gone with `down -v`.
            Err(e) => {
                let logs = run(&mut self.compose_command(&["logs", "--no-color", "--tail", "20"]))
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_else(|e| e);
                panic!("docker-compose: {e}\n--- the containers' last log lines ---\n{logs}")
            }
        }
    }

    fn compose_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", &self.name, "-f"])
            .arg(&self.file)
            .args(args)
            .env("HUB_IMAGE", &self.image)
            // Quiet nodes: Merkle roots settle once the test stops writing.
            .env("HUB_NO_SENSORS", "true");
        for k in 1..=self.nodes {
            cmd.env(format!("HUB_PORT_{k}"), "");
        }
        cmd
    }

    pub fn container(&self, svc: &str) -> String {
        format!("{}_{svc}_1", self.name)
    }

    /// The container's address on the project network.
    pub fn ip(&self, svc: &str) -> String {
        text(
            run(Command::new("docker").args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &self.container(svc),
            ]))
            .expect("docker inspect"),
        )
    }

    pub fn docker(&self, args: &[&str]) -> String {
        text(run(Command::new("docker").args(args)).expect("docker"))
    }

    pub fn kill(&self, svc: &str) {
        self.forget_ports();
        self.docker(&["kill", &self.container(svc)]);
    }

    pub fn start(&self, svc: &str) {
        self.forget_ports();
        self.docker(&["start", &self.container(svc)]);
    }

    fn forget_ports(&self) {
        self.ports.lock().expect("ports").clear();
    }

    /// `127.0.0.1:PORT` where the node's client port is published (its
    /// certificate names 127.0.0.1); `None` while it is not running.
    pub fn published(&self, svc: &str) -> Option<String> {
        if let Some(p) = self.ports.lock().expect("ports").get(svc) {
            return Some(p.clone());
        }
        let out = Command::new("docker")
            .args(["port", &self.container(svc), "8080/tcp"])
            .output()
            .ok()?;
        let addr = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("127.0.0.1:"))?
            .to_string();
        self.ports
            .lock()
            .expect("ports")
            .insert(svc.to_string(), addr.clone());
        Some(addr)
    }

    /// The cluster CA and the compose admin token, copied out of the certs
    /// volume: (path of ca.pem, token).
    pub fn credentials(&self) -> (PathBuf, String) {
        let ca = self.dir.path().join("ca.pem");
        let token = self.dir.path().join("admin.token");
        self.cert_file("ca.pem", &ca);
        self.cert_file("admin.token", &token);
        let token = std::fs::read_to_string(&token).expect("read admin.token");
        (ca, token.trim().to_string())
    }

    pub fn network(&self) -> String {
        format!("{}_default", self.name)
    }

    pub fn disconnect(&self, svc: &str) {
        self.forget_ports();
        self.docker(&[
            "network",
            "disconnect",
            &self.network(),
            &self.container(svc),
        ]);
    }

    pub fn connect(&self, svc: &str) {
        // Docker publishes the ports again, on new host ports.
        self.forget_ports();
        self.docker(&["network", "connect", &self.network(), &self.container(svc)]);
    }

    /// Runs `curl ARGS` inside the container's network namespace (from the
    /// host, so the image needs no client): the way to reach a node that is
    /// cut off the project network. Returns the HTTP status and body.
    pub fn curl_inside(&self, svc: &str, args: &[&str]) -> (u16, String) {
        let pid = self.docker(&["inspect", "-f", "{{.State.Pid}}", &self.container(svc)]);
        let out = run(Command::new("nsenter")
            .args(["-t", &pid, "-n", "curl", "-s", "-w", "\n%{http_code}"])
            .args(args))
        .expect("curl inside the container's network namespace");
        let out = text(out);
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A file from the certificates volume (through the finished certs job).
    pub fn cert_file(&self, name: &str, to: &Path) {
        self.docker(&[
            "cp",
            &format!("{}:/etc/hub/certs/{name}", self.container("certs")),
            &to.display().to_string(),
        ]);
    }

    /// Resident memory of each node container, in bytes.
    pub fn memory(&self) -> Vec<(String, u64)> {
        (1..=self.nodes)
            .map(|k| {
                let svc = format!("node-{k}");
                let usage = self.docker(&[
                    "stats",
                    "--no-stream",
                    "--format",
                    "{{.MemUsage}}",
                    &self.container(&svc),
                ]);
                (svc, parse_size(usage.split('/').next().unwrap_or("")))
            })
            .collect()
    }
}

fn parse_size(s: &str) -> u64 {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.trim().parse().unwrap_or(0.0);
    let mult = match unit {
        "KiB" | "kB" => 1024.0,
        "MiB" | "MB" => 1024.0 * 1024.0,
        "GiB" | "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => 1.0,
    };
    (n * mult) as u64
}

impl Drop for Project {
    fn drop(&mut self) {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", &self.name, "-f"])
            .arg(&self.file)
            .args(["down", "-v", "--timeout", "2"])
            .env("HUB_IMAGE", &self.image);
        let _ = cmd.output();
    }
}
