//! The store's side of the metrics named in [`idem_core::observe::names`]: emitted
//! through the `metrics` facade with the `metrics` feature (on by default), and
//! nothing at all without it. The application installs the exporter.

/// Adds `n` to the counter `name` with one label.
pub(crate) fn count(name: &'static str, label: &'static str, value: &str, n: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(name, label => value.to_owned()).increment(n);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, label, value, n);
}

/// Records `value` in the histogram `name` with one label.
pub(crate) fn observe(name: &'static str, label: &'static str, label_value: &str, value: f64) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(name, label => label_value.to_owned()).record(value);
    #[cfg(not(feature = "metrics"))]
    let _ = (name, label, label_value, value);
}

/// Sets the gauge `name`, with at most one label.
pub(crate) fn set(name: &'static str, label: Option<(&'static str, &str)>, value: f64) {
    #[cfg(feature = "metrics")]
    match label {
        Some((label, label_value)) => {
            metrics::gauge!(name, label => label_value.to_owned()).set(value)
        }
        None => metrics::gauge!(name).set(value),
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (name, label, value);
}
