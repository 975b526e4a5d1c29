//! The order in which a pool's CAs are tried for one request.

use crate::config::PoolPolicy;

/// Orders `members` (given as `(priority, weight)`, already sorted by priority and then
/// configuration order) for one request and returns their indices. `Priority` keeps the
/// given order; `Weighted` shuffles each group of equal priority so that a CA comes first
/// with probability proportional to its weight (Efraimidis–Spirakis weighted sampling
/// without replacement: sort by `u^(1/w)` descending, `u` uniform in (0, 1)).
pub(crate) fn order(
    policy: PoolPolicy,
    members: &[(u32, u32)],
    mut uniform: impl FnMut() -> f64,
) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..members.len()).collect();
    if policy == PoolPolicy::Priority {
        return idx;
    }
    let keys: Vec<f64> = members
        .iter()
        .map(|(_, w)| {
            uniform()
                .max(f64::MIN_POSITIVE)
                .powf(1.0 / f64::from((*w).max(1)))
        })
        .collect();
    idx.sort_by(|a, b| {
        members[*a]
            .0
            .cmp(&members[*b].0)
            .then(keys[*b].total_cmp(&keys[*a]))
    });
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_keeps_configuration_order() {
        let m = [(0, 1), (0, 5), (10, 1)];
        assert_eq!(order(PoolPolicy::Priority, &m, rand::random), vec![0, 1, 2]);
    }

    #[test]
    fn weighted_spreads_by_weight_within_a_priority() {
        // Weights 3:1 at priority 0; the priority-10 CA always comes last.
        let m = [(0, 3), (0, 1), (10, 100)];
        let mut first = [0u32; 2];
        for _ in 0..4000 {
            let o = order(PoolPolicy::Weighted, &m, rand::random);
            assert_eq!(o[2], 2, "lower priority stays last");
            first[o[0]] += 1;
        }
        let share = f64::from(first[0]) / 4000.0;
        assert!(
            (0.70..0.80).contains(&share),
            "share of the weight-3 CA: {share}"
        );
    }
}
