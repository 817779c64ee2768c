//! Fleet size (issue 11, part 5) in the deterministic simulation: whole
//! node machines (membership, push, pull, anti-entropy) with the shipped
//! settings, 50 of them on the in-memory store model. A write, a join and
//! a crash must reach every node in time that grows with log N, not N, and
//! each node's idle traffic must not grow with N (`benches/fleet.rs`
//! prints the curve at 10, 100 and 1,000 nodes). With sharding (R = 3) the
//! owners of a key get its value, every node's version vector covers it,
//! and every node computes the same layout after a join and after a death.
//! `SIM_SEED=n` replays one seed, `SIM_SEEDS=n` runs n.

#[path = "support/fleet_sim.rs"]
mod fleet_sim;

use fleet_sim::sim_net::for_each_seed;
use fleet_sim::{measure, measure_sharded};

#[test]
fn a_fleet_of_50_learns_a_write_a_join_and_a_crash_in_log_time_at_constant_cost_per_node() {
    let n = 50;
    for_each_seed("fleet of 50", 1, |seed| {
        let f = measure(n, seed, 3_000, 2);
        let formed = f.formed_ms.expect("the fleet never formed");
        assert!(formed <= 20_000, "formed in {formed} ms");
        // Push gossip: a handful of hops (log_8 50 ≈ 1.9, plus stragglers);
        // a node gossip missed gets it from the next pull (1 s).
        let write = f.write_ms.expect("a write never reached every node");
        let log2n = (n as f64).log2();
        assert!(
            f64::from(f.write_hops) <= 2.0 * log2n,
            "{} hops, more than 2 log2 N",
            f.write_hops
        );
        assert!(write <= 1_500, "write everywhere after {write} ms");
        let join = f.join_ms.expect("a join never reached every node");
        assert!(join <= 5_000, "join known everywhere after {join} ms");
        // Suspect: a probe timeout (1 s) after someone probes it, then
        // O(log N) periods of gossip. Dead: the suspicion timeout,
        // 6 s × log10 50 = 10.2 s, plus that spread again.
        let suspect = f
            .suspect_ms
            .expect("a crash was never suspected everywhere");
        assert!(suspect <= 5_000, "suspected everywhere after {suspect} ms");
        let dead = f.dead_ms.expect("a crash was never known dead everywhere");
        assert!(
            (10_200..=18_000).contains(&dead),
            "dead everywhere after {dead} ms"
        );
        // Idle: 4 probes per 500 ms period and their acks, plus the
        // replicator's pull (1/s) and anti-entropy (1/10 s).
        let per_node_s = |v: u64| v as f64 / n as f64 / f.idle_secs as f64;
        let m = per_node_s(f.idle.membership_msgs);
        let r = per_node_s(f.idle.replication_msgs);
        assert!(m <= 20.0, "{m} membership messages per node per second");
        assert!(r <= 6.0, "{r} replication messages per node per second");
        let bytes = per_node_s(f.idle.membership_bytes);
        assert!(
            bytes <= 20.0 * 800.0,
            "{bytes} membership bytes per node per second"
        );
    });
}

#[test]
fn a_sharded_fleet_gets_a_write_to_its_owners_and_agrees_on_the_layout_after_a_join_and_a_death() {
    // 10 nodes: the push fanout (8) reaches every owner directly; larger
    // fleets are measured by `benches/fleet.rs` (see the README).
    let n = 10;
    for_each_seed("sharded fleet of 10", 1, |seed| {
        let f = measure_sharded(n, seed, 3_000, 2, Some(3));
        f.formed_ms.expect("the fleet never formed");
        let write = f.write_ms.expect("an owner never got the value");
        assert!(
            write <= 1_500,
            "every owner holds the write after {write} ms"
        );
        let vv = f
            .write_vv_ms
            .expect("a version vector never covered the write");
        assert!(
            vv <= 1_500,
            "every owner's version vector covers it after {vv} ms"
        );
        let join = f.join_ms.expect("a join never reached every node");
        let layout = f
            .join_layout_ms
            .expect("the layouts never agreed after a join");
        assert!(join <= 5_000, "join known everywhere after {join} ms");
        assert!(layout <= 5_000, "one layout everywhere after {layout} ms");
        // Dead everywhere, then the rebalance grace period (30 s) later
        // nobody places partitions on it any more.
        let dead = f.dead_ms.expect("a crash was never known dead everywhere");
        let gone = f
            .death_layout_ms
            .expect("the layouts never dropped the dead node");
        assert!(
            (dead + 30_000..=dead + 32_000).contains(&gone),
            "dead after {dead} ms, out of every layout after {gone} ms"
        );
    });
}
