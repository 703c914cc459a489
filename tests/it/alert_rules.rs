//! The shipped Prometheus rules (`ops/prometheus/idem.rules.yml`) load, and their unit
//! tests pass under the real `promtool`; every alert has tests of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let bin = std::env::var("IDEM_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = Command::new(&bin)
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| panic!("run {bin} ({e}); scripts/services.sh installs Prometheus"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_rules_load_in_prometheus() {
    let out = promtool(&["check", "rules", "idem.rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_passes_its_promtool_unit_tests() {
    let out = promtool(&["test", "rules", "idem.rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_unit_test() {
    let rules = std::fs::read_to_string(rules_dir().join("idem.rules.yml")).expect("rules");
    let tests = std::fs::read_to_string(rules_dir().join("idem.rules.test.yml")).expect("tests");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 7, "alerts: {alerts:?}");
    for alert in alerts {
        let tested = tests
            .lines()
            .filter(|l| l.trim() == format!("alertname: {alert}"))
            .count();
        assert!(
            tested >= 2,
            "{alert} is tested at {tested} time(s): where it fires and where not"
        );
    }
}
