//! The probe's report as a table: one line per check, its contract, its result and
//! what it found, then the counts.

use serde_json::Value;

/// Prints the probe's `report` as a table.
pub(crate) fn print(report: &Value) {
    let rows: Vec<[String; 4]> = report["checks"]
        .as_array()
        .map(|checks| checks.iter().map(cells).collect())
        .unwrap_or_default();
    let header = [
        "check".to_owned(),
        "contract".to_owned(),
        "result".to_owned(),
        "detail".to_owned(),
    ];
    let widths: Vec<usize> = (0..3)
        .map(|i| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[i].len())
                .max()
                .unwrap_or_default()
        })
        .collect();
    println!("{}", report["url"].as_str().unwrap_or_default());
    for row in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    println!(
        "{} passed, {} failed, {} not applicable",
        report["passed"], report["failed"], report["not_applicable"]
    );
}

fn cells(check: &Value) -> [String; 4] {
    let text = |name: &str| check[name].as_str().unwrap_or("").to_owned();
    [
        text("check"),
        text("contract"),
        text("result"),
        text("detail"),
    ]
}
