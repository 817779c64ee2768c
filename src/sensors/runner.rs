//! Ticks each configured sensor on its period and writes the reading through
//! the committer. One tokio task per sensor; a slow disk delays readings
//! (the committer pushes back) instead of queueing them without bound. A
//! sensor pauses while the node's clock gate refuses local writes.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::{generate, key, SensorSpec};
use crate::metrics::Metrics;
use crate::model::{Meta, NodeId};
use crate::store::commit::{wall_ms, CommitError, Committer};
use crate::store::{Condition, Op};
use crate::workers::Worker;

/// The meta a simulated reading carries. Its time is the entry's HLC, so no
/// wall-clock `ts_ms` is stored.
pub fn reading_meta(spec: &SensorSpec) -> Meta {
    let mut meta = Meta::new();
    meta.insert("kind".into(), spec.kind.name().into());
    meta.insert("period_ms".into(), spec.period_ms.to_string());
    if let Some(unit) = spec.kind.unit() {
        meta.insert("unit".into(), unit.into());
    }
    meta
}

/// Starts one task per sensor; each stops when `shutdown` turns true.
pub fn spawn(
    specs: &[SensorSpec],
    node: &NodeId,
    committer: &Committer,
    metrics: &Arc<Metrics>,
    worker: &Arc<Worker>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    specs
        .iter()
        .map(|spec| {
            let spec = spec.clone();
            let key = key(node.as_str(), &spec.name);
            let committer = committer.clone();
            let metrics = metrics.clone();
            let worker = worker.clone();
            let mut shutdown = shutdown.clone();
            let node = node.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::from_entropy();
                let meta = reading_meta(&spec);
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(spec.period_ms));
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut n = 0u64;
                let mut paused = false;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                    // Paused while this node's clock may not stamp writes
                    // (skewed, ahead at start, unverified): no reading is
                    // taken, none is lost to an error, and the log says so
                    // once per pause.
                    if let Err(r) = committer.clock_gate().check() {
                        if !paused {
                            paused = true;
                            worker.error(wall_ms(), &format_args!("paused: {}", r.code));
                            // At start every node waits (≤ 3 s) for its first
                            // clock measurement: expected, not worth a WARN.
                            if n == 0 && r.code == "clock_unverified" {
                                tracing::debug!(node = %node, sensor = %spec.name, "sensor waits for this node's clock to be measured");
                            } else {
                                tracing::warn!(node = %node, sensor = %spec.name, code = r.code, reason = %r.message, "sensor paused: this node's clock may not stamp readings");
                            }
                        }
                        continue;
                    }
                    if std::mem::take(&mut paused) && n > 0 {
                        tracing::info!(node = %node, sensor = %spec.name, "sensor resumed: clock within bounds");
                    }
                    n += 1;
                    let t = started.elapsed().as_secs_f64();
                    let reading = generate(&spec.kind, &mut rng, t, n);
                    let value = reading.value.to_string().into_bytes();
                    let op = Op::Local { key: key.clone(), value: Some(value), meta: meta.clone(), cond: Condition::Always };
                    match committer.commit(vec![op]).await {
                        Ok(_) => {
                            metrics.sensor_readings.inc();
                            worker.ok(wall_ms());
                        }
                        Err(CommitError::Stopped) => break,
                        Err(e) => {
                            worker.error(wall_ms(), &format_args!("{}: {e}", spec.name));
                            tracing::warn!(node = %node, sensor = %spec.name, error = %e, "sensor reading not stored");
                        }
                    }
                }
                tracing::debug!(node = %node, sensor = %spec.name, readings = n, "sensor stopped");
            })
        })
        .collect()
}
