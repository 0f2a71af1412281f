//! The generator's ground truth: `truth.csv` (incidents), `tricky.csv` (tricky
//! episodes) and the device-days of `manifest.json`.
//!
//! The CSV files are the generator's own (`gen::writer::write_spans`): a fixed header,
//! five unquoted fields per line, integer milliseconds. Anything else is rejected with
//! the file, line and column.

use std::path::Path;

use leasewatch_schemas::SignalKind;

use super::ScoreError;
use super::matching::{Episode, Incident};
use leasewatch_load::r#gen::incidents::Tricky;

const TRUTH_HEADER: &str = "incident_id,kind,device_id,start_ms,end_ms";
const TRICKY_HEADER: &str = "episode_id,kind,device_id,start_ms,end_ms";
const COLUMNS: [&str; 5] = ["id", "kind", "device_id", "start_ms", "end_ms"];

/// One data line: kind name, device, span.
struct Row<'a> {
    kind: &'a str,
    device: &'a str,
    start: i64,
    end: i64,
}

fn read_text(path: &Path) -> Result<String, ScoreError> {
    std::fs::read_to_string(path).map_err(|e| ScoreError::bad(path, format!("cannot read: {e}")))
}

/// Parses a span file; calls `row` for each data line, which may reject the kind
/// (column 2) with a message.
fn parse_spans(
    path: &Path,
    text: &str,
    header: &str,
    mut row: impl FnMut(Row<'_>) -> Result<(), String>,
) -> Result<(), ScoreError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim_end() == header => {}
        Some((_, h)) => {
            return Err(ScoreError::bad(
                path,
                format!("line 1: bad header {h:?}, expected {header:?}"),
            ));
        }
        None => {
            return Err(ScoreError::bad(
                path,
                format!("empty file, expected the header {header:?}"),
            ));
        }
    }
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [_, kind, device, start, end] = fields[..] else {
            return Err(ScoreError::bad(
                path,
                format!("line {n}: expected 5 fields, found {}", fields.len()),
            ));
        };
        let field_err = |col: usize, msg: String| {
            let name = COLUMNS.get(col - 1).copied().unwrap_or("?");
            ScoreError::bad(path, format!("line {n}, column {col} ({name}): {msg}"))
        };
        let ms = |col: usize, v: &str| {
            v.parse::<i64>()
                .map_err(|_| field_err(col, format!("{v:?} is not an integer (ms since epoch)")))
        };
        if device.is_empty() {
            return Err(field_err(3, "empty device_id".to_string()));
        }
        let start = ms(4, start)?;
        let end = ms(5, end)?;
        if end < start {
            return Err(field_err(5, format!("end {end} is before start {start}")));
        }
        row(Row {
            kind,
            device,
            start,
            end,
        })
        .map_err(|msg| field_err(2, msg))?;
    }
    Ok(())
}

/// Reads `truth.csv`.
pub fn read_truth(path: &Path) -> Result<Vec<Incident>, ScoreError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    parse_spans(path, &text, TRUTH_HEADER, |r| {
        let kind = SignalKind::parse(r.kind).ok_or_else(|| {
            let known: Vec<&str> = SignalKind::ALL.iter().map(|k| k.as_str()).collect();
            format!(
                "unknown kind {:?} (expected one of {})",
                r.kind,
                known.join(", ")
            )
        })?;
        out.push(Incident {
            kind,
            device: r.device.to_string(),
            start: r.start,
            end: r.end,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Reads `tricky.csv`.
pub fn read_tricky(path: &Path) -> Result<Vec<Episode>, ScoreError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    parse_spans(path, &text, TRICKY_HEADER, |r| {
        let kind = Tricky::ALL
            .iter()
            .position(|t| t.as_str() == r.kind)
            .ok_or_else(|| {
                let known: Vec<&str> = Tricky::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown kind {:?} (expected one of {})",
                    r.kind,
                    known.join(", ")
                )
            })?;
        out.push(Episode {
            kind,
            device: r.device.to_string(),
            start: r.start,
            end: r.end,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Device-days of the fleet: `params.devices * params.days` of `manifest.json`.
pub fn read_device_days(path: &Path) -> Result<u64, ScoreError> {
    let text = read_text(path)?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        ScoreError::bad(
            path,
            format!("line {}, column {}: not JSON: {e}", e.line(), e.column()),
        )
    })?;
    let param = |name: &str| {
        v.get("params")
            .and_then(|p| p.get(name))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| {
                ScoreError::bad(path, format!("params.{name} missing or not a whole number"))
            })
    };
    Ok(param("devices")?.saturating_mul(param("days")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(text: &str) -> Result<Vec<(String, i64, i64)>, String> {
        let mut out = Vec::new();
        parse_spans(Path::new("t.csv"), text, TRUTH_HEADER, |r| {
            out.push((r.kind.to_string(), r.start, r.end));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn parses_crlf_bom_and_blank_lines() {
        let got = spans(
            "\u{feff}incident_id,kind,device_id,start_ms,end_ms\r\ninc-1,tamper,d,1,2\r\n\r\n",
        );
        assert_eq!(got, Ok(vec![("tamper".to_string(), 1, 2)]));
    }

    #[test]
    fn names_line_and_column() {
        let h = "incident_id,kind,device_id,start_ms,end_ms\n";
        let err = |body: &str| spans(&format!("{h}{body}")).err().unwrap_or_default();
        assert_eq!(
            err("a,tamper,d,x,2\n"),
            "t.csv: line 2, column 4 (start_ms): \"x\" is not an integer (ms since epoch)"
        );
        assert_eq!(
            err("a,tamper,d,1,2\na,tamper,d,5,4\n"),
            "t.csv: line 3, column 5 (end_ms): end 4 is before start 5"
        );
        assert_eq!(
            err("a,tamper,d,1\n"),
            "t.csv: line 2: expected 5 fields, found 4"
        );
        assert!(
            spans("id,kind\n")
                .err()
                .unwrap_or_default()
                .starts_with("t.csv: line 1: bad header")
        );
    }
}
