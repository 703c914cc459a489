//! `--runs N`: the range of each figure over N runs, printed after the runs' tables.

use crate::Report;

/// The smallest and largest of `values` (NaN, from a scenario that did not run, left
/// out); `None` when nothing is left.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| !v.is_nan())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Each scenario of the first run with the smallest and largest req/s it had over
/// `reports` (the runs of one invocation).
pub fn scenario_spans(reports: &[Report]) -> Vec<(&'static str, f64, f64)> {
    let Some(first) = reports.first() else {
        return Vec::new();
    };
    first
        .rows
        .iter()
        .filter_map(|row| {
            let rps = reports.iter().map(|r| {
                r.rows
                    .iter()
                    .find(|s| s.scenario == row.scenario)
                    .map_or(f64::NAN, |s| s.requests_per_sec)
            });
            range(rps).map(|(lo, hi)| (row.scenario, lo, hi))
        })
        .collect()
}

/// One figure of a report, named.
type Figure = (&'static str, fn(&Report) -> f64);

/// Prints, for each scenario, its req/s range, then the range of each ratio.
pub fn print(reports: &[Report]) {
    if reports.is_empty() {
        return;
    }
    println!();
    println!("over {} runs (smallest - largest):", reports.len());
    println!("{:<26} {:>17}", "scenario", "req/s");
    for (scenario, lo, hi) in scenario_spans(reports) {
        println!("{scenario:<26} {lo:>8.0} - {hi:<8.0}");
    }
    let ratios: [Figure; 9] = [
        ("b/a (layer / bare)", |r| r.layer_unique_over_bare),
        ("b/z (layer / hand-written)", |r| {
            r.layer_unique_over_handwritten
        }),
        ("c/a (replays / bare)", |r| r.layer_replay_over_bare),
        ("c'/a (lookup first / bare)", |r| {
            r.lookup_first_replay_over_bare
        }),
        ("b0/a0 (the database's share)", |r| {
            r.layer_statements_over_bare_statements
        }),
        ("a/f (enqueue / none)", |r| r.enqueue_over_no_enqueue),
        ("h/b (crowded table / not)", |r| r.crowded_over_unique),
        ("s/h (sweeping / not)", |r| r.sweeping_over_crowded),
        ("g: commit-to-publish p95 ms", |r| {
            r.publish.as_ref().map_or(f64::NAN, |p| p.p95_ms)
        }),
    ];
    for (name, ratio) in ratios {
        if let Some((lo, hi)) = range(reports.iter().map(ratio)) {
            println!("{name:<30} {lo:>6.2} - {hi:<6.2}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::range;

    #[test]
    fn a_range_leaves_out_the_scenarios_that_did_not_run() {
        assert_eq!(
            range([0.8, f64::NAN, 0.7, 0.9].into_iter()),
            Some((0.7, 0.9))
        );
        assert_eq!(range([f64::NAN].into_iter()), None);
    }
}
