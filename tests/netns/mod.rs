//! Test hosts in network namespaces on one Linux bridge: several "machines"
//! with their own addresses on one LAN segment, for what crosses a real
//! network stack (broadcast, multicast). Needs root and iproute2; where
//! either is missing, [`Lan::create`] says why and the test skips.
//!
//! Names and the subnet are random per test run, and everything is removed
//! on drop, so tests can run in parallel and a failed test leaves nothing.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use rand::Rng;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A bridge in the root namespace with one namespace per host attached.
pub struct Lan {
    tag: String,
    bridge: String,
    prefix: String,
    hosts: Vec<String>,
    forward_rule: bool,
}

impl Lan {
    /// `hosts` namespaces on a fresh /24; `Err` is the reason to skip.
    pub fn create(hosts: usize) -> Result<Lan, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("network namespaces need root".into());
        }
        let mut rng = rand::thread_rng();
        let tag = format!("{:05x}", rng.gen_range(0..0xfffff));
        let prefix = format!("10.{}.{}", rng.gen_range(200..250), rng.gen_range(1..250));
        let mut lan = Lan {
            bridge: format!("hb{tag}"),
            tag,
            prefix,
            hosts: Vec::new(),
            forward_rule: false,
        };
        ip(&["link", "add", &lan.bridge, "type", "bridge"])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", lan.prefix),
            "dev",
            &lan.bridge,
        ])?;
        // Docker's FORWARD policy is DROP and br_netfilter sends bridged
        // frames through it: let our own bridge forward.
        lan.forward_rule = Command::new("iptables")
            .args([
                "-I",
                "FORWARD",
                "-i",
                &lan.bridge,
                "-o",
                &lan.bridge,
                "-j",
                "ACCEPT",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        for i in 1..=hosts {
            let ns = format!("hn{}-{i}", lan.tag);
            ip(&["netns", "add", &ns])?;
            lan.hosts.push(ns.clone());
            let veth = format!("hv{}-{i}", lan.tag);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &lan.bridge, "up"])?;
            let addr = format!("{}/24", lan.host_ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let gw = format!("{}.254", lan.prefix);
            ip(&["-n", &ns, "route", "add", "default", "via", &gw])?;
        }
        Ok(lan)
    }

    /// Address of host `i` (1-based).
    pub fn host_ip(&self, i: usize) -> String {
        format!("{}.{i}", self.prefix)
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> String {
        format!("{}.255", self.prefix)
    }

    /// Runs `hub serve ARGS` inside host `i`'s namespace.
    pub fn serve(&self, i: usize, args: &[String]) -> NsProc {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i - 1]])
            .arg(env!("CARGO_BIN_EXE_hub"))
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "warn,hub::discovery=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hub serve in a namespace");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the serving line");
        let base = line
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string();
        assert!(base.starts_with("http"), "unexpected first line {line:?}");
        NsProc { child, base }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        if self.forward_rule {
            let _ = Command::new("iptables")
                .args([
                    "-D",
                    "FORWARD",
                    "-i",
                    &self.bridge,
                    "-o",
                    &self.bridge,
                    "-j",
                    "ACCEPT",
                ])
                .output();
        }
    }
}

/// A `hub serve` inside a namespace; killed on drop.
pub struct NsProc {
    pub child: Child,
    pub base: String,
}

impl Drop for NsProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
