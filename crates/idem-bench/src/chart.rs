//! The benchmark's chart: requests per second per scenario, as horizontal bars, written
//! as an SVG file (`--svg PATH`).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{BoxError, Report, ranges};

/// Colour of the scenarios served through the layer; the others are grey.
const LAYER: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
/// Colour of the scenarios without the layer (bare, hand-written, database only).
const OTHER: RGBColor = RGBColor(0x9a, 0xa5, 0xb1);

/// Writes each scenario's req/s over `reports` (the runs of one invocation) to `path`
/// as an SVG bar chart on a logarithmic axis (replays and new keys differ tenfold):
/// the bar reaches the smallest run, a lighter stretch the largest.
pub fn write_svg(reports: &[Report], path: &Path) -> Result<(), BoxError> {
    let Some(first) = reports.first() else {
        return Ok(());
    };
    let spans = ranges::scenario_spans(reports);
    let height = 60 + 34 * u32::try_from(spans.len()).unwrap_or(u32::MAX).min(40);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = spans.iter().map(|s| s.2).fold(1_000.0_f64, f64::max);
    let n = spans.len() as f64;
    let caption = format!(
        "idem-bench: req/s per scenario, {} run(s) of {} s, concurrency {}",
        reports.len(),
        first.duration_secs,
        first.concurrency
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(220)
        .build_cartesian_2d((FLOOR..max * 4.0).log_scale(), 0.0..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("requests per second (logarithmic)")
        .draw()?;
    // Each bar's scenario, right-aligned in the label area to the left of the bar.
    let label = ("sans-serif", 13)
        .into_text_style(&root)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (i, (scenario, _, _)) in spans.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(FLOOR, n - i as f64 - 0.5));
        root.draw(&Text::new(*scenario, (x - 8, y), label.clone()))?;
    }
    let colour = |scenario: &str| match uses_layer(scenario) {
        true => LAYER,
        false => OTHER,
    };
    chart.draw_series(spans.iter().enumerate().map(|(i, (scenario, lo, _))| {
        let top = n - i as f64;
        Rectangle::new(
            [(FLOOR, top - 0.8), (lo.max(FLOOR), top - 0.2)],
            colour(scenario).filled(),
        )
    }))?;
    chart.draw_series(spans.iter().enumerate().map(|(i, (scenario, lo, hi))| {
        let top = n - i as f64;
        Rectangle::new(
            [(lo.max(FLOOR), top - 0.8), (hi.max(FLOOR), top - 0.2)],
            colour(scenario).mix(0.35).filled(),
        )
    }))?;
    chart.draw_series(spans.iter().enumerate().map(|(i, (_, lo, hi))| {
        let top = n - i as f64;
        let text = match lo == hi {
            true => format!("{lo:.0}"),
            false => format!("{lo:.0} - {hi:.0}"),
        };
        Text::new(text, (hi.max(FLOOR) * 1.05, top - 0.35), ("sans-serif", 13))
    }))?;
    root.present()?;
    Ok(())
}

/// Where the axis starts: below every scenario's rate on any machine measured.
const FLOOR: f64 = 100.0;

/// Whether a scenario's requests go through the layer: (b), (c), (c'), (d), (g), (h)
/// and (s).
fn uses_layer(scenario: &str) -> bool {
    ["b ", "c ", "c' ", "d ", "g ", "h ", "s "]
        .iter()
        .any(|prefix| scenario.starts_with(prefix))
}
