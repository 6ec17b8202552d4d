//! Each test names the property of the algorithm it checks.

use super::*;

fn views(list: &[(u32, u32, bool)]) -> Vec<View> {
    list.iter()
        .map(|&(weight, active, usable)| View {
            weight,
            active,
            usable,
        })
        .collect()
}

fn names(n: usize, weight: u32) -> Vec<(String, u32)> {
    (0..n).map(|i| (format!("web{}", i + 1), weight)).collect()
}

fn balancer(algorithm: Balance, servers: &[(String, u32)]) -> Balancer {
    let s: Vec<(&str, u32)> = servers.iter().map(|(n, w)| (n.as_str(), *w)).collect();
    Balancer::new(algorithm, &s, 125)
}

#[test]
fn roundrobin_gives_each_its_weight_interleaved() {
    // nginx's example: weights 5, 1, 1 give a a b a c a a, not a a a a a b c.
    let b = balancer(Balance::RoundRobin, &names(3, 1));
    let v = views(&[(5, 0, true), (1, 0, true), (1, 0, true)]);
    let picks: Vec<usize> = (0..7).filter_map(|_| b.choose(3, |i| v[i], 0, 0)).collect();
    assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn roundrobin_with_equal_weights_visits_each_in_turn_and_skips_closed_ones() {
    let b = balancer(Balance::RoundRobin, &names(3, 1));
    let v = views(&[(1, 0, true), (1, 0, true), (1, 0, true)]);
    let picks: Vec<usize> = (0..6).filter_map(|_| b.choose(3, |i| v[i], 0, 0)).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    let v = views(&[(1, 0, true), (1, 0, false), (0, 0, true)]);
    for _ in 0..5 {
        assert_eq!(
            b.choose(3, |i| v[i], 0, 0),
            Some(0),
            "unusable and weight 0 skipped"
        );
    }
    let none = views(&[(1, 0, false)]);
    assert_eq!(b.choose(1, |i| none[i], 0, 0), None);
}

#[test]
fn leastconn_sends_to_the_idle_server() {
    let b = balancer(Balance::LeastConn, &names(3, 1));
    let v = views(&[(1, 5, true), (1, 0, true), (1, 3, true)]);
    for _ in 0..4 {
        assert_eq!(b.choose(3, |i| v[i], 0, 0), Some(1));
    }
    // Per unit of weight: 4 in flight on weight 4 is lighter than 2 on weight 1.
    let v = views(&[(1, 2, true), (4, 4, true)]);
    assert_eq!(b.choose(2, |i| v[i], 0, 0), Some(1));
}

#[test]
fn leastconn_breaks_ties_round_robin() {
    let b = balancer(Balance::LeastConn, &names(3, 1));
    let v = views(&[(1, 0, true), (1, 0, true), (1, 0, true)]);
    let mut seen = [0; 3];
    for _ in 0..30 {
        seen[b.choose(3, |i| v[i], 0, 0).expect("a server")] += 1;
    }
    assert_eq!(seen, [10, 10, 10]);
}

#[test]
fn random_two_choices_prefers_the_lighter_of_its_two() {
    let b = balancer(Balance::Random, &names(2, 1));
    // With two servers, the two draws are both servers: always the lighter.
    let v = views(&[(1, 9, true), (1, 1, true)]);
    for r in 0..50u64 {
        let random = r.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        assert_eq!(b.choose(2, |i| v[i], 0, random), Some(1));
    }
    // Over many draws at equal load every server is chosen.
    let b = balancer(Balance::Random, &names(4, 1));
    let v = views(&[(1, 0, true), (1, 0, true), (1, 0, true), (1, 0, false)]);
    let mut seen = [0; 4];
    for r in 0..400u64 {
        seen[b
            .choose(4, |i| v[i], 0, hash(&r.to_le_bytes()))
            .expect("a server")] += 1;
    }
    assert!(seen[..3].iter().all(|&c| c > 60), "{seen:?}");
    assert_eq!(seen[3], 0, "an unusable server is never drawn");
}

#[test]
fn first_fills_the_first_server_that_may_take_it() {
    let b = balancer(Balance::First, &names(3, 1));
    let v = views(&[(1, 10, false), (1, 10, true), (1, 0, true)]);
    assert_eq!(b.choose(3, |i| v[i], 0, 0), Some(1));
}

#[test]
fn hash_sends_a_key_to_the_same_server_on_every_node() {
    let servers = names(4, 1);
    let (a, b) = (
        balancer(Balance::Hash, &servers),
        balancer(Balance::Hash, &servers),
    );
    let v = views(&[(1, 0, true); 4]);
    for k in 0..200u64 {
        let key = hash(format!("10.0.0.{k}").as_bytes());
        assert_eq!(a.choose(4, |i| v[i], key, 0), b.choose(4, |i| v[i], key, 0));
    }
}

#[test]
fn hash_moves_only_the_keys_of_a_server_that_leaves() {
    let b = balancer(Balance::Hash, &names(4, 1));
    let all = views(&[(1, 0, true); 4]);
    let mut without = all.clone();
    without[2].usable = false;
    let (mut moved, mut on_two) = (0, 0);
    for k in 0..2000u64 {
        let key = hash(&k.to_le_bytes());
        let before = b.choose(4, |i| all[i], key, 0).expect("a server");
        let after = b.choose(4, |i| without[i], key, 0).expect("a server");
        if before == 2 {
            on_two += 1;
        } else if before != after {
            moved += 1;
        }
    }
    assert_eq!(moved, 0, "keys of the other servers stay where they were");
    assert!(
        (300..700).contains(&on_two),
        "about a quarter of keys: {on_two}"
    );
}

#[test]
fn hash_bounded_load_spills_a_hot_key_to_the_next_server() {
    let b = balancer(Balance::Hash, &names(2, 1));
    let key = hash(b"hot");
    let idle = views(&[(1, 0, true), (1, 0, true)]);
    let home = b.choose(2, |i| idle[i], key, 0).expect("a server");
    // Its home server already has 10 in flight, the other none: the bound
    // ceil(1.25 × 11 / 2) = 7 sends it to the other.
    let mut busy = idle.clone();
    busy[home].active = 10;
    let other = b.choose(2, |i| busy[i], key, 0).expect("a server");
    assert_ne!(other, home);
    // Balanced load keeps it home.
    let mut even = idle.clone();
    even[0].active = 3;
    even[1].active = 3;
    assert_eq!(b.choose(2, |i| even[i], key, 0), Some(home));
}

#[test]
fn the_hash_is_fixed_by_its_definition() {
    // Pinned values (computed independently from FNV-1a's and splitmix64's
    // definitions): no build or toolchain change may move keys between servers.
    assert_eq!(hash(b""), 0xf52a_15e9_a9b5_e89b);
    assert_eq!(hash(b"10.0.0.1"), 0x7fb1_b600_f0f5_c6d3);
}
