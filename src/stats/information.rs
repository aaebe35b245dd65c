//! Entropy and mutual information of discrete variables from counts (the plug-in estimates sklearn's
//! `mutual_info_score` computes, in nats), and disentanglement_lib's histogram discretizer.

/// The entropy of the distribution with counts `counts`, in nats; 0 when there are no counts.
pub fn entropy(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    // H = -sum_i p_i ln p_i with p_i = c_i / N, written as ln N - (1/N) sum_i c_i ln c_i
    let sum_c_ln_c: f64 = counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 * (c as f64).ln()).sum();
    (total as f64).ln() - sum_c_ln_c / total as f64
}

/// How often each value below `values` occurs in `labels` (labels at or above `values` are not counted).
pub fn counts(labels: &[u32], values: usize) -> Vec<u64> {
    let mut counts = vec![0u64; values];
    labels.iter().filter(|&&l| (l as usize) < values).for_each(|&l| counts[l as usize] += 1);
    counts
}

/// The contingency table of two labelings of the same examples: `table[a][b]` = how many examples have label `a`
/// in `first` and `b` in `second` (pairs outside `first_values x second_values` are not counted).
pub fn contingency(first: &[u32], first_values: usize, second: &[u32], second_values: usize) -> Vec<Vec<u64>> {
    let mut table = vec![vec![0u64; second_values]; first_values];
    for (&a, &b) in first.iter().zip(second) {
        if (a as usize) < first_values && (b as usize) < second_values {
            table[a as usize][b as usize] += 1;
        }
    }
    table
}

/// The mutual information of the two variables of a contingency table, in nats; 0 for an empty table.
pub fn mutual_information(table: &[Vec<u64>]) -> f64 {
    let row_sums: Vec<u64> = table.iter().map(|row| row.iter().sum()).collect();
    let column_sums = column_sums(table);
    let total: u64 = row_sums.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let n = total as f64;
    let mut information = 0.0;
    for (row, &row_sum) in table.iter().zip(&row_sums) {
        for (&count, &column_sum) in row.iter().zip(&column_sums).filter(|(count, _)| **count > 0) {
            // I = sum_ab p_ab ln(p_ab / (p_a p_b)) = sum_ab (n_ab / N) ln(N n_ab / (n_a n_b))
            information += count as f64 / n * (n * count as f64 / (row_sum as f64 * column_sum as f64)).ln();
        }
    }
    information.max(0.0)
}

fn column_sums(table: &[Vec<u64>]) -> Vec<u64> {
    let columns = table.first().map_or(0, Vec::len);
    (0..columns).map(|b| table.iter().map(|row| row[b]).sum()).collect()
}

/// disentanglement_lib's histogram discretizer: `bins` equal-width bins spanning the values' range (the range
/// min - 0.5 .. min + 0.5 when all values are equal, as numpy's `histogram` does), a value on an inner edge going
/// to the upper bin and the maximum to the last bin (numpy's `digitize` against the left edges). Returns each
/// value's bin, 0-based. Needs `bins >= 1`.
pub fn discretize(values: &[f32], bins: usize) -> Vec<u32> {
    let edges = bin_edges(values, bins);
    values.iter().map(|&v| left_edges_at_or_below(&edges, v as f64).saturating_sub(1) as u32).collect()
}

/// The `bins + 1` edges min, min + w, ..., max with w = (max - min) / bins.
fn bin_edges(values: &[f32], bins: usize) -> Vec<f64> {
    let (mut low, mut high) =
        values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v as f64), hi.max(v as f64)));
    if !(low.is_finite() && high.is_finite()) {
        (low, high) = (0.0, 1.0);
    }
    if low == high {
        (low, high) = (low - 0.5, high + 0.5);
    }
    let width = (high - low) / bins as f64;
    (0..=bins).map(|i| if i == bins { high } else { low + i as f64 * width }).collect()
}

/// How many of the left edges (all edges but the last) are at or below `value`.
fn left_edges_at_or_below(edges: &[f64], value: f64) -> usize {
    edges[..edges.len() - 1].partition_point(|&edge| edge <= value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn entropy_of_known_distributions() {
        assert!(close(entropy(&[5, 5]), 2f64.ln()));
        assert!(close(entropy(&[1, 1, 1, 1, 0]), 4f64.ln()));
        assert!(close(entropy(&[7]), 0.0));
        assert!(close(entropy(&[]), 0.0));
        // p = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4)
        assert!(close(entropy(&[1, 3]), -(0.25 * 0.25f64.ln() + 0.75 * 0.75f64.ln())));
    }

    #[test]
    fn mutual_information_of_known_tables() {
        // identical labels: I(A; A) = H(A)
        assert!(close(mutual_information(&[vec![3, 0, 0], vec![0, 2, 0], vec![0, 0, 5]]), entropy(&[3, 2, 5])));
        // independent: the joint is the product of the marginals
        assert!(close(mutual_information(&[vec![2, 4], vec![3, 6]]), 0.0));
        // p = [[1/2, 0], [1/4, 1/4]]: I = 1/2 ln(1/2 / (1/2 * 3/4)) + 1/4 ln(1/4 / (1/2 * 3/4)) + 1/4 ln(1/4 / (1/2 * 1/4))
        let expected = 0.5 * (4.0f64 / 3.0).ln() + 0.25 * (2.0f64 / 3.0).ln() + 0.25 * 2f64.ln();
        assert!(close(mutual_information(&[vec![2, 0], vec![1, 1]]), expected));
        assert!(close(mutual_information(&[vec![0, 0]]), 0.0));
    }

    #[test]
    fn contingency_and_counts_tally_pairs() {
        let table = contingency(&[0, 1, 1, 2], 3, &[1, 0, 0, 1], 2);
        assert_eq!(table, vec![vec![0, 1], vec![2, 0], vec![0, 1]]);
        assert_eq!(counts(&[0, 2, 2, 5], 3), vec![1, 0, 2]);
    }

    #[test]
    fn discretization_follows_numpy_edges() {
        // edges 0, 0.25, 0.5, 0.75, 1: a value on an inner edge goes up, the maximum stays in the last bin
        let values = [0.0, 0.1, 0.25, 0.49, 0.5, 0.75, 0.99, 1.0];
        assert_eq!(discretize(&values, 4), vec![0, 0, 1, 1, 2, 3, 3, 3]);
        // all equal: the range is v - 0.5 .. v + 0.5, so everything lands in the middle bin
        assert_eq!(discretize(&[2.0, 2.0], 20), vec![10, 10]);
        assert_eq!(discretize(&[-3.0, 5.0], 1), vec![0, 0]);
        // n equally spaced values with n <= bins each get their own bin
        let spaced: Vec<f32> = (0..20).map(|i| i as f32 / 19.0).collect();
        let bins = discretize(&spaced, 20);
        assert!(bins.windows(2).all(|w| w[0] < w[1]), "{bins:?}");
    }
}
