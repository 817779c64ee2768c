//! Cost of checking a bearer token against the cached API key table
//! (target ≤ 2 µs), with 1,000 keys in the table: a valid token, an unknown
//! one, and a malformed one.
//!
//! `cargo bench --bench auth`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use hub::auth::{KeyTable, NewKey, Role};

mod shared;

fn table_with_keys(dir: &std::path::Path, n: usize) -> (KeyTable, String) {
    let store = shared::bench_store(dir);
    let mut ops = Vec::new();
    let mut last = String::new();
    for i in 0..n {
        let new = NewKey {
            role: if i % 2 == 0 { Role::Read } else { Role::Write },
            prefix: None,
            name: Some(format!("k{i}")),
        };
        let (token, _, op) = new.mint(1_700_000_000_000).unwrap();
        last = token.reveal().to_string();
        ops.push(op);
    }
    store.apply(ops, 1_700_000_000_000).unwrap();
    let table = KeyTable::new(Arc::new(store));
    table.check(&last).unwrap();
    (table, last)
}

fn token_check(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (table, valid) = table_with_keys(dir.path(), 1000);
    let unknown = hub::auth::token::Token::generate();
    let mut g = c.benchmark_group("token_check");
    g.bench_function("valid", |b| {
        b.iter(|| table.check(std::hint::black_box(&valid)).unwrap())
    });
    g.bench_function("unknown", |b| {
        b.iter(|| {
            table
                .check(std::hint::black_box(unknown.reveal()))
                .unwrap_err()
        })
    });
    g.bench_function("malformed", |b| {
        b.iter(|| {
            table
                .check(std::hint::black_box("Bearer nonsense"))
                .unwrap_err()
        })
    });
    g.finish();
}

criterion_group!(benches, token_check);
criterion_main!(benches);
