//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): builds a service's lookup table so
//! that every backend owns an almost equal share of the slots, and adding or removing one backend
//! moves only about `1/N` of the slots.
//!
//! Each backend is named by `ip:port`, so every node builds the same table for the same backends
//! and a flow that reaches different nodes (NodePort, ECMP) picks the same backend.

use sha2::{Digest, Sha256};

/// Builds a table of `size` slots (a prime) over `backends` (id, name). The result holds backend
/// ids; an empty backend list gives an empty table.
pub fn build(backends: &[(u32, String)], size: usize) -> Vec<u32> {
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    // Sorting by name makes the table independent of the order backends were listed in.
    let mut sorted: Vec<&(u32, String)> = backends.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(&b.1));
    let perms: Vec<(usize, usize)> = sorted
        .iter()
        .map(|(_, name)| {
            let digest = Sha256::digest(name.as_bytes());
            let mut h1 = [0u8; 8];
            let mut h2 = [0u8; 8];
            h1.copy_from_slice(&digest[..8]);
            h2.copy_from_slice(&digest[8..16]);
            // Both values are reduced modulo the table size, so truncating to usize is harmless.
            let offset = (u64::from_le_bytes(h1) % size as u64) as usize;
            let skip = (u64::from_le_bytes(h2) % (size as u64 - 1).max(1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; sorted.len()];
    let mut table = vec![u32::MAX; size];
    let mut filled = 0;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % size;
            while table[slot] != u32::MAX {
                next[i] += 1;
                slot = (offset + next[i] * skip) % size;
            }
            table[slot] = sorted[i].0;
            next[i] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn backends(n: u32) -> Vec<(u32, String)> {
        (0..n)
            .map(|i| (i + 1, format!("10.244.0.{}:8080", i + 10)))
            .collect()
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut shares = HashMap::new();
        for id in table {
            *shares.entry(*id).or_default() += 1;
        }
        shares
    }

    #[test]
    fn every_backend_gets_an_equal_share() {
        let table = build(&backends(7), 16381);
        assert_eq!(table.len(), 16381);
        let shares = shares(&table);
        assert_eq!(shares.len(), 7);
        for (id, n) in shares {
            // Maglev's guarantee: shares differ by at most a few percent.
            assert!((2300..=2380).contains(&n), "backend {id} owns {n} slots");
        }
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        let all = backends(10);
        let before = build(&all, 16381);
        let after = build(&all[1..], 16381);
        let removed = all[0].0;
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != removed && b != a)
            .count();
        // Only slots of the removed backend must move; Maglev disturbs a small fraction of the rest.
        assert!(
            moved < 16381 / 50,
            "{moved} slots of surviving backends moved"
        );
        assert!(!after.contains(&removed));
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let mut all = backends(5);
        let a = build(&all, 251);
        all.reverse();
        assert_eq!(a, build(&all, 251));
        assert!(build(&[], 251).is_empty());
    }
}
