//! The benchmark's chart: requests per second per scenario, as horizontal bars, written
//! as an SVG file (`--svg PATH`).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{BoxError, Report};

/// Colour of the scenarios served through the layer; the others are grey.
const LAYER: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
/// Colour of the scenarios without the layer (bare, hand-written, database only).
const OTHER: RGBColor = RGBColor(0x9a, 0xa5, 0xb1);

/// Writes the report's req/s per scenario to `path` as an SVG bar chart.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), BoxError> {
    let rows = &report.rows;
    let height = 60 + 34 * u32::try_from(rows.len()).unwrap_or(u32::MAX).min(40);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = rows
        .iter()
        .map(|r| r.requests_per_sec)
        .fold(1.0_f64, f64::max);
    let n = rows.len() as f64;
    let caption = format!(
        "idem-bench: req/s per scenario (concurrency {}, {} s each)",
        report.concurrency, report.duration_secs
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(220)
        .build_cartesian_2d(0.0..max * 1.15, 0.0..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("requests per second")
        .draw()?;
    // Each bar's scenario, right-aligned in the label area to the left of the bar.
    let label = ("sans-serif", 13)
        .into_text_style(&root)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (i, r) in rows.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(0.0, n - i as f64 - 0.5));
        root.draw(&Text::new(r.scenario, (x - 8, y), label.clone()))?;
    }
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let top = n - i as f64;
        let colour = if uses_layer(r.scenario) { LAYER } else { OTHER };
        Rectangle::new(
            [(0.0, top - 0.8), (r.requests_per_sec, top - 0.2)],
            colour.filled(),
        )
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        let top = n - i as f64;
        Text::new(
            format!("{:.0}", r.requests_per_sec),
            (r.requests_per_sec + max * 0.01, top - 0.35),
            ("sans-serif", 13),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// Whether a scenario's requests go through the layer: (b), (c), (c') and (d).
fn uses_layer(scenario: &str) -> bool {
    ["b ", "c ", "c' ", "d ", "g ", "h ", "s "]
        .iter()
        .any(|prefix| scenario.starts_with(prefix))
}
