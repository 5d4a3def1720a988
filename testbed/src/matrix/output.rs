//! What a matrix run tells people and machines: the terminal table, the
//! JSON report, JUnit XML for CI test reporters, and a Markdown summary
//! (readable as a file, as a GitHub job summary or in a pull request).

use std::fmt::Write as _;
use std::path::Path;

use super::{CellResult, MatrixCell, MatrixOutcome};

/// Lines of the console log quoted for a failing cell.
const CONSOLE_EXCERPT_LINES: usize = 40;

fn time(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}s"))
}

fn wall(outcome: &MatrixOutcome) -> String {
    let s = outcome.wall.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", outcome.wall.as_secs_f64())
    }
}

fn known_failure(result: CellResult) -> bool {
    matches!(result, CellResult::KnownFailure(_))
}

/// "40 passed, 2 failed, 4 errors, 3 known failures" (zero counts left
/// out, except passed).
pub fn counts(outcome: &MatrixOutcome) -> String {
    let passed = outcome.cells.iter().filter(|c| c.result.passed()).count();
    let errors = outcome
        .cells
        .iter()
        .filter(|c| !c.result.passed() && c.result.is_error())
        .count();
    let xfail = outcome
        .cells
        .iter()
        .filter(|c| known_failure(c.result))
        .count();
    let failed = outcome.cells.len() - passed - errors - xfail;
    let mut out = format!("{passed} passed");
    if failed > 0 {
        let _ = write!(out, ", {failed} failed");
    }
    if errors > 0 {
        let _ = write!(
            out,
            ", {errors} error{}",
            if errors == 1 { "" } else { "s" }
        );
    }
    if xfail > 0 {
        let _ = write!(
            out,
            ", {xfail} known failure{}",
            if xfail == 1 { "" } else { "s" }
        );
    }
    out
}

/// The summary table on stdout: one line per cell, details under failures.
pub fn print_table(outcome: &MatrixOutcome) {
    print!("{}", table(outcome));
}

pub fn table(outcome: &MatrixOutcome) -> String {
    let mut out = String::from("\n");
    let kw = outcome
        .cells
        .iter()
        .map(|c| c.kernel.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let vw = outcome
        .cells
        .iter()
        .map(|c| c.variant.len())
        .max()
        .unwrap_or(0)
        .max(7);
    let sw = outcome
        .cells
        .iter()
        .map(|c| c.scenario.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let _ = writeln!(
        out,
        "{:<kw$}  {:<vw$}  {:<sw$}  {:<14}  {:>7}",
        "KERNEL", "VARIANT", "SCENARIO", "RESULT", "TIME"
    );
    for c in &outcome.cells {
        let _ = writeln!(
            out,
            "{:<kw$}  {:<vw$}  {:<sw$}  {:<14}  {:>7}",
            c.kernel,
            c.variant,
            c.scenario,
            c.result.label(),
            time(c.seconds)
        );
        if !c.result.passed() {
            for line in &c.detail {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    out.push('\n');
    for k in &outcome.kernels {
        match (&k.description, &k.error) {
            (Some(d), _) => {
                let _ = writeln!(out, "kernel {}: {d}", k.spec);
            }
            (None, Some(e)) => {
                let _ = writeln!(out, "kernel {}: not available: {e}", k.spec);
            }
            (None, None) => {}
        }
    }
    let _ = writeln!(
        out,
        "{}; {} cells, {} in {} wall with -j {}{}",
        counts(outcome),
        outcome.cells.len(),
        l1s(outcome),
        wall(outcome),
        outcome.jobs,
        outcome
            .shard
            .map(|s| format!(", shard {s}"))
            .unwrap_or_default()
    );
    out
}

pub fn json(outcome: &MatrixOutcome) -> serde_json::Value {
    serde_json::json!({
        "summary": counts(outcome),
        "passed": outcome.exit_code() == crate::run::EXIT_OK,
        "wall_seconds": outcome.wall.as_secs_f64(),
        "jobs": outcome.jobs,
        "shard": outcome.shard.map(|s| s.to_string()),
        "kernels": outcome.kernels.iter().map(|k| serde_json::json!({
            "spec": k.spec,
            "release": k.release,
            "description": k.description,
            "error": k.error,
        })).collect::<Vec<_>>(),
        "cells": outcome.cells.iter().map(|c| {
            let mut v = super::results::cell_json(c);
            v["diff"] = c.diff.clone().into();
            v["report"] = c.report.as_ref().map(crate::report::Report::to_json).into();
            v
        }).collect::<Vec<_>>(),
        "boots": outcome.boots.iter().map(|b| serde_json::json!({
            "kernel": b.kernel,
            "variant": b.variant,
            "scenarios": b.scenarios,
            "dir": b.dir,
            "failure": b.failure,
            "qemu_version": b.qemu_version,
            "seconds": b.seconds,
            "boot_to_ready_seconds": b.boot_to_ready,
            "restored": b.restored,
            "shared_because": b.shared_because,
        })).collect::<Vec<_>>(),
    })
}

/// Text that is safe inside XML: escaped, and without the control
/// characters XML 1.0 forbids (consoles are full of them).
pub(crate) fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' => out.push(c),
            '\r' => {}
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// The last lines of a cell's console log, with its path.
fn console_excerpt(cell: &MatrixCell, root: &Path) -> Option<String> {
    let path = cell.console_log.as_ref()?;
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(CONSOLE_EXCERPT_LINES)..];
    let shown = root.join(&cell.dir).join("console.log");
    Some(format!(
        "console log (last {} of {} lines; whole log in {}):\n{}",
        tail.len(),
        lines.len(),
        shown.display(),
        tail.join("\n")
    ))
}

/// What a failing cell says: details, the snapshot diff, the console's end.
fn failure_text(cell: &MatrixCell, root: &Path) -> String {
    let mut text = cell.detail.join("\n");
    if let Some(diff) = &cell.diff {
        let _ = write!(text, "\n\n{diff}");
    }
    if let Some(console) = console_excerpt(cell, root) {
        let _ = write!(text, "\n\n{console}");
    }
    text
}

/// JUnit XML: one `<testsuite>` per (kernel, variant), one `<testcase>`
/// per cell. A cell that could not run (kernel not available, no boot) is
/// an `<error>`, a known failure `<skipped>` with its reason, any other
/// non-pass (an unexpected pass too) a `<failure>`; errors and failures
/// carry the details, the snapshot diff and the end of the console log.
pub fn junit(outcome: &MatrixOutcome, root: &Path) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let count = |cells: &[&MatrixCell]| {
        let failures = cells
            .iter()
            .filter(|c| !c.result.expected() && !c.result.is_error())
            .count();
        let errors = cells.iter().filter(|c| c.result.is_error()).count();
        let skipped = cells.iter().filter(|c| known_failure(c.result)).count();
        // An empty f64 sum is -0.0.
        let secs: f64 = cells.iter().filter_map(|c| c.seconds).sum::<f64>() + 0.0;
        (cells.len(), failures, errors, skipped, secs)
    };
    let all: Vec<&MatrixCell> = outcome.cells.iter().collect();
    let (tests, failures, errors, skipped, _) = count(&all);
    let skipped_attr = |n: usize| {
        if n > 0 {
            format!(" skipped=\"{n}\"")
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        out,
        "<testsuites name=\"testbed matrix\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\"{} time=\"{:.3}\">",
        skipped_attr(skipped),
        outcome.wall.as_secs_f64()
    );
    let mut suites: Vec<(&str, &str)> = Vec::new();
    for c in &outcome.cells {
        if !suites.contains(&(c.kernel.as_str(), c.variant)) {
            suites.push((c.kernel.as_str(), c.variant));
        }
    }
    for (kernel, variant) in suites {
        let cells: Vec<&MatrixCell> = outcome
            .cells
            .iter()
            .filter(|c| c.kernel == kernel && c.variant == variant)
            .collect();
        let (tests, failures, errors, skipped, secs) = count(&cells);
        let name = xml(&format!("{kernel} {variant}"));
        let _ = writeln!(
            out,
            "  <testsuite name=\"{name}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\"{} time=\"{secs:.3}\">",
            skipped_attr(skipped)
        );
        if let Some(release) = cells.iter().find_map(|c| c.kernel_release.as_ref()) {
            let _ = writeln!(
                out,
                "    <properties><property name=\"kernel_release\" value=\"{}\"/></properties>",
                xml(release)
            );
        }
        for c in cells {
            let open = format!(
                "    <testcase classname=\"{name}\" name=\"{}\" time=\"{:.3}\"",
                xml(&c.scenario),
                c.seconds.unwrap_or(0.0)
            );
            match c.result {
                r if r.passed() => {
                    if r == CellResult::Resumed {
                        let _ = writeln!(
                            out,
                            "{open}>\n      <system-out>passed in an earlier run (--resume)</system-out>\n    </testcase>"
                        );
                    } else {
                        let _ = writeln!(out, "{open}/>");
                    }
                }
                CellResult::KnownFailure(v) => {
                    let reason = c
                        .detail
                        .iter()
                        .find(|d| d.starts_with("known failure"))
                        .map_or("", String::as_str);
                    let _ = writeln!(
                        out,
                        "{open}>\n      <skipped message=\"{}\">{}</skipped>\n    </testcase>",
                        xml(reason),
                        xml(&format!("xfail: {}", v.label()))
                    );
                }
                r => {
                    let tag = if r.is_error() { "error" } else { "failure" };
                    let message = c
                        .detail
                        .first()
                        .map(|d| d.lines().next().unwrap_or(""))
                        .unwrap_or("");
                    let _ = writeln!(
                        out,
                        "{open}>\n      <{tag} type=\"{}\" message=\"{}\">{}</{tag}>\n    </testcase>",
                        xml(r.label()),
                        xml(message),
                        xml(&failure_text(c, root))
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn mark(result: CellResult) -> &'static str {
    match result {
        r if r.passed() => "✅",
        r if r.is_error() => "⚠️",
        CellResult::KnownFailure(_) => "➖",
        _ => "❌",
    }
}

/// The L1s a run started: `3 boots`, or `2 boots, 19 restores`.
fn l1s(outcome: &MatrixOutcome) -> String {
    let restores = outcome.boots.iter().filter(|b| b.restored).count();
    let boots = outcome.boots.len() - restores;
    match restores {
        0 => format!("{boots} boots"),
        r => format!("{boots} boots, {r} restores"),
    }
}

/// The summary a person reads: one grid per kernel (scenarios down,
/// variants across), then each failure with its details, diff and console.
pub fn markdown(outcome: &MatrixOutcome, root: &Path) -> String {
    let mut out = String::from("# irqbypass testbed matrix\n\n");
    let _ = writeln!(
        out,
        "**{}** of {} cells, {} in {} wall with `-j {}`{}.\n",
        counts(outcome),
        outcome.cells.len(),
        l1s(outcome),
        wall(outcome),
        outcome.jobs,
        outcome
            .shard
            .map(|s| format!(", shard {s}"))
            .unwrap_or_default()
    );
    for k in &outcome.kernels {
        let cells: Vec<&MatrixCell> = outcome
            .cells
            .iter()
            .filter(|c| c.kernel == k.spec)
            .collect();
        if cells.is_empty() {
            continue;
        }
        match (&k.description, &k.error) {
            (Some(d), _) => {
                let _ = writeln!(out, "## `{}`: {d}\n", k.spec);
            }
            (None, e) => {
                let _ = writeln!(out, "## `{}`: not available\n", k.spec);
                if let Some(e) = e {
                    let _ = writeln!(out, "> {}\n", e.replace('\n', " "));
                }
            }
        }
        let mut variants: Vec<&str> = Vec::new();
        let mut scenarios: Vec<&str> = Vec::new();
        for c in &cells {
            if !variants.contains(&c.variant) {
                variants.push(c.variant);
            }
            if !scenarios.contains(&c.scenario.as_str()) {
                scenarios.push(&c.scenario);
            }
        }
        let _ = writeln!(out, "| scenario | {} |", variants.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(variants.len()));
        for s in scenarios {
            let row: Vec<String> = variants
                .iter()
                .map(
                    |v| match cells.iter().find(|c| c.variant == *v && c.scenario == s) {
                        Some(c) if c.result.passed() => {
                            format!("{} {}", mark(c.result), time(c.seconds))
                        }
                        Some(c) => format!("{} {}", mark(c.result), c.result.label()),
                        None => "not run here".to_owned(),
                    },
                )
                .collect();
            let _ = writeln!(out, "| `{s}` | {} |", row.join(" | "));
        }
        out.push('\n');
    }
    // Cells of a kernel that is not available are said once, above.
    let unavailable = |c: &MatrixCell| {
        outcome
            .kernels
            .iter()
            .any(|k| k.spec == c.kernel && k.error.is_some())
    };
    let known: Vec<&MatrixCell> = outcome
        .cells
        .iter()
        .filter(|c| known_failure(c.result))
        .collect();
    if !known.is_empty() {
        out.push_str("## Known failures\n\n");
        for c in known {
            let reason = c
                .detail
                .iter()
                .find(|d| d.starts_with("known failure"))
                .map_or("", String::as_str);
            let _ = writeln!(
                out,
                "- `{}` on `{}`, `{}`: {reason}",
                c.scenario, c.variant, c.kernel
            );
        }
        out.push('\n');
    }
    let failing: Vec<&MatrixCell> = outcome
        .cells
        .iter()
        .filter(|c| !c.result.expected() && !unavailable(c))
        .collect();
    if !failing.is_empty() {
        out.push_str("## What failed\n\n");
    }
    for c in failing {
        let _ = writeln!(
            out,
            "### {} `{}` on `{}`, `{}`\n",
            mark(c.result),
            c.scenario,
            c.variant,
            c.kernel
        );
        let _ = writeln!(out, "Results: `{}`\n", c.dir.display());
        let _ = writeln!(out, "```\n{}\n```\n", c.detail.join("\n"));
        if let Some(diff) = &c.diff {
            let _ = writeln!(
                out,
                "<details><summary>snapshot diff</summary>\n\n```diff\n{}\n```\n</details>\n",
                diff.trim_end()
            );
        }
        if let Some(console) = console_excerpt(c, root) {
            let (title, body) = console.split_once('\n').unwrap_or((&console, ""));
            let _ = writeln!(
                out,
                "<details><summary>{title}</summary>\n\n```\n{body}\n```\n</details>\n"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Verdict;
    use std::path::PathBuf;
    use std::time::Duration;

    fn cell(
        kernel: &str,
        variant: &'static str,
        scenario: &str,
        result: CellResult,
        detail: &[&str],
    ) -> MatrixCell {
        MatrixCell {
            kernel: kernel.into(),
            kernel_release: (result != CellResult::Error).then(|| "7.2.13+deb14-amd64".into()),
            variant,
            scenario: scenario.into(),
            result,
            seconds: (result != CellResult::Error).then_some(1.25),
            detail: detail.iter().map(|d| d.to_string()).collect(),
            diff: None,
            report: None,
            dir: super::super::results::cell_dir(kernel, variant, scenario),
            console_log: None,
        }
    }

    fn outcome() -> MatrixOutcome {
        let mut mismatch = cell(
            "debian:7",
            "amd-ir",
            "edu-b",
            CellResult::Judged(Verdict::Mismatch),
            &["report differs from the snapshot (diff above); review with `cargo insta review`"],
        );
        mismatch.diff =
            Some("--- snapshot\n+++ report\n-   none formed\n+   vm0 <connected> & more\n".into());
        MatrixOutcome {
            cells: vec![
                cell(
                    "debian:7",
                    "intel-ir",
                    "edu-a",
                    CellResult::Judged(Verdict::Pass),
                    &[],
                ),
                cell("debian:7", "amd-ir", "edu-a", CellResult::Resumed, &[]),
                mismatch,
                cell(
                    "debian:6.99",
                    "intel-ir",
                    "edu-a",
                    CellResult::Error,
                    &["kernel debian:6.99 cannot be used: no debian kernel matches debian:6.99"],
                ),
            ],
            boots: Vec::new(),
            kernels: vec![
                super::super::KernelRecord {
                    spec: "debian:7".into(),
                    release: Some("7.2.13+deb14-amd64".into()),
                    description: Some("debian linux 7.2.13".into()),
                    error: None,
                },
                super::super::KernelRecord {
                    spec: "debian:6.99".into(),
                    release: None,
                    description: None,
                    error: Some("no debian kernel matches debian:6.99".into()),
                },
            ],
            wall: Duration::from_millis(83_500),
            jobs: 2,
            shard: None,
        }
    }

    #[test]
    fn junit_has_one_case_per_cell_and_says_why() {
        insta::assert_snapshot!(junit(&outcome(), &PathBuf::from("results/matrix")), @r#"
        <?xml version="1.0" encoding="UTF-8"?>
        <testsuites name="testbed matrix" tests="4" failures="1" errors="1" time="83.500">
          <testsuite name="debian:7 intel-ir" tests="1" failures="0" errors="0" time="1.250">
            <properties><property name="kernel_release" value="7.2.13+deb14-amd64"/></properties>
            <testcase classname="debian:7 intel-ir" name="edu-a" time="1.250"/>
          </testsuite>
          <testsuite name="debian:7 amd-ir" tests="2" failures="1" errors="0" time="2.500">
            <properties><property name="kernel_release" value="7.2.13+deb14-amd64"/></properties>
            <testcase classname="debian:7 amd-ir" name="edu-a" time="1.250">
              <system-out>passed in an earlier run (--resume)</system-out>
            </testcase>
            <testcase classname="debian:7 amd-ir" name="edu-b" time="1.250">
              <failure type="MISMATCH" message="report differs from the snapshot (diff above); review with `cargo insta review`">report differs from the snapshot (diff above); review with `cargo insta review`

        --- snapshot
        +++ report
        -   none formed
        +   vm0 &lt;connected&gt; &amp; more
        </failure>
            </testcase>
          </testsuite>
          <testsuite name="debian:6.99 intel-ir" tests="1" failures="0" errors="1" time="0.000">
            <testcase classname="debian:6.99 intel-ir" name="edu-a" time="0.000">
              <error type="ERROR" message="kernel debian:6.99 cannot be used: no debian kernel matches debian:6.99">kernel debian:6.99 cannot be used: no debian kernel matches debian:6.99</error>
            </testcase>
          </testsuite>
        </testsuites>
        "#);
    }

    #[test]
    fn junit_quotes_the_console_of_a_failing_cell() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let lines: Vec<String> = (1..=50).map(|i| format!("line {i}\r")).collect();
        std::fs::write(
            &console,
            lines.join("\n") + "\n\x1b[0mKernel panic - not syncing <x>\n",
        )
        .unwrap();
        let mut o = outcome();
        o.cells[2].console_log = Some(console);
        let xml = junit(&o, Path::new("/r"));
        assert!(
            xml.contains(
                "console log (last 40 of 51 lines; whole log in /r/debian-7/amd-ir/edu-b/console.log):\nline 12\n"
            ),
            "{xml}"
        );
        assert!(
            xml.contains("?[0mKernel panic - not syncing &lt;x&gt;</failure>"),
            "{xml}"
        );
        assert!(
            !xml.contains("line 11\n") && !xml.contains('\r') && !xml.contains('\x1b'),
            "{xml}"
        );
    }

    #[test]
    fn table_and_markdown() {
        let o = outcome();
        insta::assert_snapshot!(table(&o), @r"
        KERNEL       VARIANT   SCENARIO  RESULT             TIME
        debian:7     intel-ir  edu-a     pass               1.2s
        debian:7     amd-ir    edu-a     pass (resumed)     1.2s
        debian:7     amd-ir    edu-b     MISMATCH           1.2s
            report differs from the snapshot (diff above); review with `cargo insta review`
        debian:6.99  intel-ir  edu-a     ERROR                 -
            kernel debian:6.99 cannot be used: no debian kernel matches debian:6.99

        kernel debian:7: debian linux 7.2.13
        kernel debian:6.99: not available: no debian kernel matches debian:6.99
        2 passed, 1 failed, 1 error; 4 cells, 0 boots in 1m23s wall with -j 2
        ");
        let md = markdown(&o, Path::new("results/matrix"));
        assert!(md.contains("| scenario | intel-ir | amd-ir |\n|---|---|---|\n| `edu-a` | ✅ 1.2s | ✅ 1.2s |\n| `edu-b` | not run here | ❌ MISMATCH |\n"), "{md}");
        assert!(
            md.contains(
                "## `debian:6.99`: not available\n\n> no debian kernel matches debian:6.99\n"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "### ❌ `edu-b` on `amd-ir`, `debian:7`\n\nResults: `debian-7/amd-ir/edu-b`\n"
            ),
            "{md}"
        );
        assert!(md.contains("```diff\n--- snapshot\n"), "{md}");
    }
}
