//! The doctor's report: one line per check (or the `--json` document) and whether it failed.

use serde::Serialize;

use super::checks::{Check, Status};

/// Version of the `--json` document layout.
pub const JSON_VERSION: u32 = 1;

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

/// The human report: one line per check, `fix` after an arrow.
pub fn render_text(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        s.push_str(&format!("{}  {:<width$}  {}", c.status.as_str(), c.check, c.detail));
        if let Some(fix) = &c.fix {
            s.push_str(" -> ");
            s.push_str(fix);
        }
        s.push('\n');
    }
    let count = |st: Status| checks.iter().filter(|c| c.status == st).count();
    s.push_str(&format!(
        "{} passed, {} warnings, {} failed\n",
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    ));
    s
}

#[derive(Serialize)]
struct JsonReport<'a> {
    schema_version: u32,
    ok: bool,
    checks: &'a [Check],
}

/// The `--json` document.
pub fn render_json(checks: &[Check]) -> String {
    let report = JsonReport {
        schema_version: JSON_VERSION,
        ok: !failed(checks),
        checks,
    };
    let mut s = serde_json::to_string_pretty(&report).unwrap_or_default();
    s.push('\n');
    s
}
