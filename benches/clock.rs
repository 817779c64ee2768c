//! Clock offset estimation (`hub::clock`): how exact it is, and what it costs.
//!
//! Run: `cargo bench --bench clock -- [--seconds N]` (default 10).
//!
//! - **Error on loopback**: two in-process nodes on one machine (fresh CA,
//!   real mutual-TLS QUIC, real sled, default heartbeat of 500 ms) share one
//!   wall clock, so the true offset between them is 0 and every estimate's
//!   absolute value is its error. Each node's estimate of the other is read
//!   every 100 ms for N seconds; median, p99 and max are printed, with the
//!   round trip of the estimates.
//! - **Bytes per second per peer**: what the stamps add to one ping and one
//!   ack (bincode, as on the wire), times the pings per second each side
//!   sends (1000 / heartbeat_interval_ms), both directions.
//! - **CPU per second per peer**: the time of one sample (offset from a round
//!   trip + estimator window) measured over a million samples, times the
//!   samples per second; plus one fence verdict (run once per driver step
//!   whatever the number of peers) for 3 and 10 peers.
//!
//! The load average is printed: on the shared 2-core machine other work
//! competes, and the figures are only as quiet as the machine.

use std::time::{Duration, Instant};

use hub::certs;
use hub::clock::{Fence, FenceConfig, Now, OffsetEstimator, Sample};
use hub::config::{Config, ConfigLayer};
use hub::membership::Stamp;
use hub::model::{Hlc, NodeId};
use hub::node::Node;

mod shared;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn config(
    id: &str,
    dir: &std::path::Path,
    certs: &std::path::Path,
    join: Option<String>,
) -> Config {
    Config::resolve([ConfigLayer {
        node_id: Some(id.into()),
        data_dir: Some(dir.join(id)),
        http: Some("127.0.0.1:0".into()),
        sensors: Some(Vec::new()),
        listen: Some("127.0.0.1:0".into()),
        join: join.map(|j| vec![j]),
        certs: Some(certs.into()),
        ..ConfigLayer::default()
    }])
    .expect("bench config")
}

async fn loopback_error(seconds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::init_ca(&certs_dir).unwrap();
    for id in ["a", "b"] {
        certs::issue(
            &certs_dir,
            &NodeId::new(id).unwrap(),
            &[[127, 0, 0, 1].into()],
            &[],
        )
        .unwrap();
    }
    let a = Node::start(config("a", dir.path(), &certs_dir, None))
        .await
        .unwrap();
    let join = a.quic_addr().unwrap().to_string();
    let b = Node::start(config("b", dir.path(), &certs_dir, Some(join)))
        .await
        .unwrap();
    // Let both measure each other for a few heartbeats first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut errors, mut rtts) = (Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        for (node, peer) in [(&a, "b"), (&b, "a")] {
            let v = node.cluster_view().and_then(|v| v.clock.clone());
            if let Some(p) = v.and_then(|v| v.peers.into_iter().find(|p| p.peer == peer)) {
                errors.push(p.offset_ms.abs());
                rtts.push(p.rtt_ms);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    errors.sort_by(f64::total_cmp);
    rtts.sort_by(f64::total_cmp);
    println!(
        "offset error on loopback ({} readings over {seconds} s, true offset 0): median {:.3} ms, p99 {:.3} ms, max {:.3} ms (target < 1 ms); rtt of the estimates median {:.3} ms",
        errors.len(),
        percentile(&errors, 0.5),
        percentile(&errors, 0.99),
        errors.last().copied().unwrap_or(f64::NAN),
        percentile(&rtts, 0.5),
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Encoded length of any serde value, as the transport's bincode sees it.
mod erased {
    pub trait Enc {
        fn len(&self, cfg: bincode::config::Configuration) -> usize;
    }
    impl<T: serde::Serialize> Enc for T {
        fn len(&self, cfg: bincode::config::Configuration) -> usize {
            bincode::serde::encode_to_vec(self, cfg).map_or(0, |v| v.len())
        }
    }
}

fn wire_bytes() {
    let cfg = bincode::config::standard();
    let now = Stamp {
        mono_us: 3_600_000_000,
        wall_us: 1_700_000_000_000_000,
    };
    // What the fields take on the wire: a ping's stamp; an ack's echo of
    // it plus the answerer's wall clock.
    let len = |v: &dyn erased::Enc| v.len(cfg);
    let extra = len(&now) + len(&now) + len(&now.wall_us);
    let per_s = 1000.0 / hub::membership::Config::default().heartbeat_interval_ms as f64;
    println!(
        "bytes: stamps take {extra} bytes per ping+ack; at {per_s} pings/s each way: {:.0} bytes/s per peer (both directions, before QUIC/TLS framing)",
        extra as f64 * per_s * 2.0
    );
}

fn cpu() {
    const N: u64 = 1_000_000;
    let mut e = OffsetEstimator::default();
    let t = Instant::now();
    for i in 0..N {
        let s = Sample::from_round_trip(
            1_700_000_000_000_000 + i * 500_000,
            150 + (i % 7) * 10,
            1_700_000_000_000_075 + i * 500_000,
        );
        e.add(std::hint::black_box(s));
    }
    let per_sample = t.elapsed().as_secs_f64() / N as f64;
    std::hint::black_box(e.estimate());
    let per_s = 1000.0 / hub::membership::Config::default().heartbeat_interval_ms as f64;
    println!(
        "cpu: one sample (offset + estimator window) {:.0} ns; {per_s} samples/s per peer: {:.2} µs CPU per second per peer",
        per_sample * 1e9,
        per_sample * per_s * 1e6
    );
    for peers in [3usize, 10] {
        let cfg = FenceConfig {
            max_offset_us: 500_000,
            grace_ms: 3_000,
            accept_clock_ahead: false,
        };
        let mut f = Fence::new(cfg, Now::from_millis(0, 1_700_000_000_000), Hlc::ZERO, true);
        for p in 0..peers {
            let id = NodeId::new(format!("n{p}")).unwrap();
            f.on_sample(
                &id,
                0,
                Sample {
                    offset_us: p as i64 * 10,
                    rtt_us: 200,
                },
            );
        }
        const M: u64 = 100_000;
        let t = Instant::now();
        for i in 0..M {
            std::hint::black_box(f.evaluate(Now::from_millis(i, 1_700_000_000_000 + i), peers));
        }
        println!(
            "cpu: one fence verdict with {peers} peers {:.0} ns (once per driver step, ~50 steps/s idle)",
            t.elapsed().as_secs_f64() / M as f64 * 1e9
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut seconds = 10;
    while let Some(a) = args.next() {
        if a == "--seconds" {
            seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(seconds);
        }
    }
    println!("load average at start: {}", shared::loadavg());
    wire_bytes();
    cpu();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(loopback_error(seconds));
    println!("load average at end: {}", shared::loadavg());
}
