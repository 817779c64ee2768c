//! Store benchmarks: delta apply rate, durable group commit, Merkle update
//! cost, trim cost at retention, and restart time with a million entries.
//!
//! `cargo bench --bench store` (set HUB_BENCH_KEYS to change the restart size;
//! `cargo bench --bench store -- trim` for the retention pair only).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hub::merkle::{self, MerkleTree};
use hub::model::{Delta, Entry, Hlc, Meta, NodeId, Version};
use hub::store::{Condition, Op, Store, StoreConfig};

mod shared;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn deltas(origin: &NodeId, from_seq: u64, n: u64) -> Vec<Op> {
    (0..n)
        .map(|i| {
            let seq = from_seq + i;
            Op::Delta(Delta {
                origin: origin.clone(),
                seq,
                key: format!("sensors/{origin}/s{}", seq % 10_000),
                entry: Entry {
                    version: Version {
                        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
                        node: origin.clone(),
                    },
                    value: Some(format!("{}", seq as f64 * 0.5).into_bytes()),
                    meta: Meta::new(),
                },
            })
        })
        .collect()
}

fn apply_deltas(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = shared::bench_store(dir.path());
    let origin = id("peer");
    let mut next = 1u64;
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1000));
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("apply_1000_deltas_then_flush", |b| {
        b.iter_batched(
            || {
                let ops = deltas(&origin, next, 1000);
                next += 1000;
                ops
            },
            |ops| {
                store.apply(ops, 0).unwrap();
                store.flush().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    g.throughput(Throughput::Elements(64));
    let mut n = 0u64;
    g.bench_function("group_of_64_local_puts_then_flush", |b| {
        b.iter(|| {
            let ops = (0..64)
                .map(|_| {
                    n += 1;
                    Op::Local {
                        key: format!("k{n}"),
                        value: Some(b"value".to_vec()),
                        meta: Meta::new(),
                        cond: Condition::Always,
                    }
                })
                .collect();
            store.apply(ops, 1_700_000_000_000).unwrap();
            store.flush().unwrap();
        })
    });
    g.finish();
}

fn merkle_update(c: &mut Criterion) {
    let mut t = MerkleTree::new();
    let v = Version {
        hlc: Hlc(42),
        node: id("n"),
    };
    let mut i = 0u64;
    c.bench_function("merkle/update_per_write", |b| {
        b.iter(|| {
            i += 1;
            let key = format!("key{i}");
            t.toggle(
                merkle::bucket_of(&key),
                &merkle::item_digest(&key, &v, false),
            );
        })
    });
    c.bench_function("merkle/root_after_1000_writes", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for it in 0..iters {
                for j in 0..1000 {
                    let key = format!("x{j}-{it}-{i}");
                    t.toggle(
                        merkle::bucket_of(&key),
                        &merkle::item_digest(&key, &v, false),
                    );
                }
                let start = Instant::now();
                std::hint::black_box(t.root());
                timed += start.elapsed();
            }
            timed
        })
    });
}

/// Restart time: open a directory holding `HUB_BENCH_KEYS` (default 1,000,000)
/// entries and read the Merkle root (what a node needs before serving).
fn restart(c: &mut Criterion) {
    let n: u64 = std::env::var("HUB_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    {
        let store = shared::bench_store(dir.path());
        let origin = id("peer");
        let t = Instant::now();
        for chunk in 0..n.div_ceil(10_000) {
            let ops: Vec<Op> = deltas(&origin, chunk * 10_000 + 1, 10_000)
                .into_iter()
                .enumerate()
                .map(|(i, op)| match op {
                    Op::Delta(mut d) => {
                        d.key = format!("k{:08}", chunk * 10_000 + i as u64);
                        Op::Delta(d)
                    }
                    other => other,
                })
                .collect();
            store.apply(ops, 0).unwrap();
        }
        store.flush().unwrap();
        let s = store.summary().unwrap();
        eprintln!(
            "restart bench: loaded {} entries in {:.1?}; {} bytes on disk ({:.0} B/entry incl. log)",
            s.entries,
            t.elapsed(),
            s.disk_bytes,
            s.disk_bytes as f64 / s.entries as f64
        );
    }
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    g.bench_function(format!("open_with_{n}_entries"), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let s = shared::bench_store(dir.path());
                std::hint::black_box(s.merkle_root());
                timed += start.elapsed();
                drop(s);
            }
            timed
        })
    });
    g.finish();
}

fn local_puts(n: &mut u64, count: u64) -> Vec<Op> {
    (0..count)
        .map(|_| {
            *n += 1;
            Op::Local {
                key: format!("k{}", *n),
                value: Some(b"value".to_vec()),
                meta: Meta::new(),
                cond: Condition::Always,
            }
        })
        .collect()
}

/// Trim cost: the same durable group of 64 local writes on a store whose log
/// is far below its retention and on one that has already trimmed many times
/// its retention (every group then drops a run and a feed record). Steady
/// state must cost about what fresh costs: trimming is O(what is trimmed).
fn trim(c: &mut Criterion) {
    const RETENTION: u64 = 20_000;
    let mut g = c.benchmark_group("trim");
    g.throughput(Throughput::Elements(64));
    for (name, prefill) in [("fresh", 0u64), ("at_retention", 10 * RETENTION)] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreConfig {
                node_id: Some(id("bench")),
                log_retention: RETENTION,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let mut n = 0u64;
        // Prefill in groups of 64, as the HTTP path makes them.
        for _ in 0..prefill / 64 {
            store
                .apply(local_puts(&mut n, 64), 1_700_000_000_000)
                .unwrap();
        }
        store.flush().unwrap();
        g.bench_function(format!("group_of_64_puts_then_flush_{name}"), |b| {
            b.iter(|| {
                store
                    .apply(local_puts(&mut n, 64), 1_700_000_000_000)
                    .unwrap();
                store.flush().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, apply_deltas, merkle_update, trim, restart);
criterion_main!(benches);
