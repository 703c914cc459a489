//! Reports as text or JSON.

use serde_json::Value;

/// Prints `report`: pretty JSON with `json`, else a plain rendering (one object's
/// fields per line; one line per row for a list, its fields as `name=value`).
pub fn print(report: &Value, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_else(|_| report.to_string())
        );
        return;
    }
    match report {
        Value::Array(rows) if rows.is_empty() => println!("(none)"),
        Value::Array(rows) => {
            for row in rows {
                println!("{}", line(row));
            }
        }
        Value::Object(fields) => {
            for (name, value) in fields {
                match value {
                    Value::Array(rows) => {
                        println!("{name}:");
                        for row in rows {
                            println!("  {}", line(row));
                        }
                    }
                    other => println!("{name}: {}", scalar(other)),
                }
            }
        }
        other => println!("{}", scalar(other)),
    }
}

fn line(row: &Value) -> String {
    match row {
        Value::Object(fields) => fields
            .iter()
            .map(|(name, value)| format!("{name}={}", scalar(value)))
            .collect::<Vec<_>>()
            .join(" "),
        other => scalar(other),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
