//! Where selftest results leave the tool: a table for people, JSON, JUnit
//! (one test case per test x variant x kernel) and KTAP for CI, and the
//! differences against a baseline variant.

use std::fmt::Write as _;

use super::catalog::{Outcome, TestId, Verdict};
use crate::matrix::output::xml;

/// One test on one variant and kernel.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub test: TestId,
    pub variant: &'static str,
    /// `uname -r` of L1, or the kernel spec when it never booted.
    pub kernel: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub seconds: f64,
    /// The test's own output (as much as the agent forwarded).
    #[serde(skip)]
    pub output: Vec<String>,
    /// Where its output and its boot's console log were written.
    pub log: Option<String>,
    pub console_log: Option<String>,
    /// KVM's AVIC trace events counted in L1 while the test ran (boots
    /// whose KVM is kvm_amd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<wire::EventCounts>,
    /// A second try in a new L1: the first stalled on the stock QEMU's
    /// lost wakeup with this failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried_after: Option<String>,
}

/// `N passed, N failed, N skipped` (+ xfail, broken, timeout counts).
pub fn counts(rows: &[Row]) -> String {
    let n = |o: Outcome| rows.iter().filter(|r| r.verdict.outcome == o).count();
    let failed = rows
        .iter()
        .filter(|r| r.verdict.outcome.is_failure())
        .count();
    let mut s = format!(
        "{} passed, {failed} failed, {} skipped",
        n(Outcome::Pass),
        n(Outcome::Skip)
    );
    let more: Vec<String> = [
        (Outcome::Xfail, "known failures"),
        (Outcome::Broken, "broken"),
        (Outcome::Timeout, "timed out"),
        (Outcome::Xpass, "unexpected passes"),
    ]
    .iter()
    .filter(|(o, _)| n(*o) > 0)
    .map(|(o, what)| format!("{} {what}", n(*o)))
    .collect();
    if !more.is_empty() {
        let _ = write!(s, " ({})", more.join(", "));
    }
    s
}

pub fn table(rows: &[Row]) -> String {
    let w = rows
        .iter()
        .map(|r| r.test.to_string().len())
        .max()
        .unwrap_or(4)
        .max(4);
    let k = rows
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "{:<w$}  {:<14} {:<k$}  {:<8} {:>8}\n",
        "TEST", "VARIANT", "KERNEL", "RESULT", "TIME"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<w$}  {:<14} {:<k$}  {:<8} {:>7.1}s",
            r.test.to_string(),
            r.variant,
            r.kernel,
            r.verdict.outcome.label(),
            r.seconds
        );
        if let Some(why) = &r.verdict.reason {
            let _ = writeln!(out, "{:<w$}    {}", "", one_line(why, 160));
        }
        if let Some(c) = &r.events {
            let _ = writeln!(
                out,
                "{:<w$}    AVIC events: {}",
                "",
                one_line(&super::avic::summary(c), 160)
            );
        }
    }
    out.push_str(&counts(rows));
    out.push('\n');
    out
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}...", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

/// The machine-readable results: `header` (source, QEMU, kernel facts)
/// and one object per row.
pub fn json(header: serde_json::Value, rows: &[Row]) -> serde_json::Value {
    serde_json::json!({
        "selftests": header,
        "summary": counts(rows),
        "results": rows,
    })
}

/// The last `n` lines of a test's output.
fn tail(output: &[String], n: usize) -> String {
    output[output.len().saturating_sub(n)..].join("\n")
}

/// JUnit XML: a suite per (kernel, variant), a case per test; `failure`
/// for failures and timeouts, `error` for broken boots, `skipped` with its
/// reason, and a known failure as a pass whose output says so.
pub fn junit(rows: &[Row]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let failures = |rs: &[&Row]| {
        rs.iter()
            .filter(|r| r.verdict.outcome.is_failure() && r.verdict.outcome != Outcome::Broken)
            .count()
    };
    let errors = |rs: &[&Row]| {
        rs.iter()
            .filter(|r| r.verdict.outcome == Outcome::Broken)
            .count()
    };
    let skipped = |rs: &[&Row]| {
        rs.iter()
            .filter(|r| r.verdict.outcome == Outcome::Skip)
            .count()
    };
    let all: Vec<&Row> = rows.iter().collect();
    let _ = writeln!(
        out,
        "<testsuites name=\"testbed selftests\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\">",
        all.len(),
        failures(&all),
        errors(&all),
        skipped(&all)
    );
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !groups.contains(&(r.kernel.as_str(), r.variant)) {
            groups.push((r.kernel.as_str(), r.variant));
        }
    }
    for (kernel, variant) in groups {
        let rs: Vec<&Row> = rows
            .iter()
            .filter(|r| r.kernel == kernel && r.variant == variant)
            .collect();
        let secs: f64 = rs.iter().map(|r| r.seconds).sum::<f64>() + 0.0;
        let name = xml(&format!("selftests {kernel} {variant}"));
        let _ = writeln!(
            out,
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{secs:.3}\">",
            rs.len(),
            failures(&rs),
            errors(&rs),
            skipped(&rs)
        );
        for r in rs {
            let open = format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                xml(&format!("selftests.{}.{variant}", r.test.suite)),
                xml(&r.test.name),
                r.seconds
            );
            let reason = xml(&one_line(r.verdict.reason.as_deref().unwrap_or(""), 400));
            let body = xml(&tail(&r.output, 40));
            let props = properties(r);
            let _ = match r.verdict.outcome {
                Outcome::Pass if props.is_empty() => writeln!(out, "{open}/>"),
                Outcome::Pass => writeln!(out, "{open}>\n{props}    </testcase>"),
                Outcome::Skip => writeln!(out, "{open}>\n{props}      <skipped message=\"{reason}\"/>\n    </testcase>"),
                Outcome::Xfail => writeln!(
                    out,
                    "{open}>\n{props}      <system-out>known failure: {reason}\n{body}</system-out>\n    </testcase>"
                ),
                o => {
                    let tag = if o == Outcome::Broken { "error" } else { "failure" };
                    writeln!(
                        out,
                        "{open}>\n{props}      <{tag} type=\"{}\" message=\"{reason}\">{body}</{tag}>\n    </testcase>",
                        o.label()
                    )
                }
            };
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// A test case's `<properties>`: one per counted trace event
/// (`kvm:kvm_avic_doorbell` = count), what could not be counted, and the
/// events the trace buffer lost; empty when nothing was counted.
fn properties(r: &Row) -> String {
    let Some(c) = &r.events else {
        return String::new();
    };
    let mut p = String::from("      <properties>\n");
    for (ev, n) in &c.counts {
        let _ = writeln!(p, "        <property name=\"{}\" value=\"{n}\"/>", xml(ev));
    }
    for u in &c.unavailable {
        let _ = writeln!(
            p,
            "        <property name=\"not-counted\" value=\"{}\"/>",
            xml(u)
        );
    }
    if c.lost > 0 {
        let _ = writeln!(
            p,
            "        <property name=\"trace-events-lost\" value=\"{}\"/>",
            c.lost
        );
    }
    p.push_str("      </properties>\n");
    p
}

/// KTAP version 1: one test line per row (`# SKIP` and `# XFAIL`
/// directives), the reason and the output's tail as diagnostics.
pub fn ktap(rows: &[Row]) -> String {
    let mut out = format!("KTAP version 1\n1..{}\n", rows.len());
    for (i, r) in rows.iter().enumerate() {
        let name = format!("{} {} {}", r.test, r.variant, r.kernel);
        let reason = r
            .verdict
            .reason
            .as_deref()
            .map(|s| one_line(s, 300))
            .unwrap_or_default();
        if r.verdict.outcome != Outcome::Pass {
            for line in r.output.iter().rev().take(20).rev() {
                let _ = writeln!(out, "# {line}");
            }
        }
        if let Some(c) = &r.events {
            let _ = writeln!(out, "# AVIC events: {}", super::avic::summary(c));
        }
        let _ = match r.verdict.outcome {
            Outcome::Pass => writeln!(out, "ok {} {name}", i + 1),
            Outcome::Skip => writeln!(out, "ok {} {name} # SKIP {reason}", i + 1),
            Outcome::Xfail => writeln!(out, "ok {} {name} # XFAIL {reason}", i + 1),
            o => writeln!(out, "not ok {} {name} # {}: {reason}", i + 1, o.label()),
        };
    }
    out
}

/// Where a variant's results differ from `baseline`'s, one line per test
/// and variant: `kvm:x86/xapic_ipi_test  amd-ir pass  ->  amd-avic BROKEN: ...`.
pub fn baseline_diff(rows: &[Row], baseline: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.variant != baseline) {
        let Some(base) = rows
            .iter()
            .find(|b| b.variant == baseline && b.test == r.test && b.kernel == r.kernel)
        else {
            continue;
        };
        if base.verdict.outcome != r.verdict.outcome {
            let why = r
                .verdict
                .reason
                .as_deref()
                .map(|s| format!(": {}", one_line(s, 160)))
                .unwrap_or_default();
            out.push(format!(
                "{}  {baseline} {}  ->  {} {}{why}",
                r.test,
                base.verdict.outcome.label(),
                r.variant,
                r.verdict.outcome.label()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use images::SelftestSuite;

    fn row(name: &str, variant: &'static str, outcome: Outcome, reason: Option<&str>) -> Row {
        Row {
            test: TestId {
                suite: SelftestSuite::Kvm,
                name: name.into(),
            },
            variant,
            kernel: "7.2.13+deb14-amd64".into(),
            verdict: Verdict {
                outcome,
                reason: reason.map(str::to_owned),
            },
            seconds: 2.5,
            output: vec!["line <1>".into(), "last & line".into()],
            log: None,
            console_log: None,
            events: None,
            retried_after: None,
        }
    }

    fn counted(mut r: Row) -> Row {
        r.events = Some(wire::EventCounts {
            counts: [
                ("kvm:kvm_avic_incomplete_ipi".to_owned(), 1545),
                ("kvm:kvm_apicv_accept_irq".to_owned(), 0),
            ]
            .into(),
            unavailable: vec![],
            lost: 0,
        });
        r
    }

    #[test]
    fn avic_events_in_the_table_junit_ktap_and_json() {
        let rows = vec![
            counted(row("x86/xapic_ipi_test", "amd-avic", Outcome::Pass, None)),
            row("x86/xapic_ipi_test", "intel-ir", Outcome::Pass, None),
        ];
        let t = table(&rows);
        assert!(t.contains("2.5s\n                          AVIC events: incomplete_ipi 1545, apicv_accept_irq 0\n"), "{t}");
        assert_eq!(t.matches("AVIC events").count(), 1, "{t}");
        let x = junit(&rows);
        assert!(
            x.contains("name=\"x86/xapic_ipi_test\" time=\"2.500\">\n      <properties>\n        <property name=\"kvm:kvm_apicv_accept_irq\" value=\"0\"/>\n        <property name=\"kvm:kvm_avic_incomplete_ipi\" value=\"1545\"/>\n      </properties>\n    </testcase>"),
            "{x}"
        );
        assert_eq!(x.matches("<properties>").count(), 1, "{x}");
        let k = ktap(&rows);
        assert!(k.contains("# AVIC events: incomplete_ipi 1545, apicv_accept_irq 0\nok 1 kvm:x86/xapic_ipi_test amd-avic"), "{k}");
        let j = json(serde_json::json!({}), &rows);
        assert_eq!(
            j["results"][0]["events"]["counts"]["kvm:kvm_avic_incomplete_ipi"],
            1545
        );
        assert!(j["results"][1].get("events").is_none());
    }

    fn rows() -> Vec<Row> {
        vec![
            row("x86/xapic_ipi_test", "amd-ir", Outcome::Pass, None),
            row(
                "x86/xapic_ipi_test",
                "amd-avic",
                Outcome::Broken,
                Some("qemu: fatal: AVIC: guest read of the vAPIC page"),
            ),
            row(
                "x86/hyperv_ipi",
                "amd-ir",
                Outcome::Skip,
                Some("Requirement not met"),
            ),
            row(
                "x86/hyperv_ipi",
                "amd-avic",
                Outcome::Skip,
                Some("Requirement not met"),
            ),
            row(
                "x86/debug_regs",
                "amd-ir",
                Outcome::Xfail,
                Some("exit 254 (known: TCG)"),
            ),
            row(
                "x86/debug_regs",
                "amd-avic",
                Outcome::Fail,
                Some("exit 254"),
            ),
        ]
    }

    #[test]
    fn table_and_counts() {
        let t = table(&rows());
        assert!(t.starts_with("TEST"), "{t}");
        assert!(t.contains("kvm:x86/xapic_ipi_test  amd-avic"), "{t}");
        assert!(t.contains("qemu: fatal: AVIC"), "{t}");
        assert!(
            t.ends_with("1 passed, 2 failed, 2 skipped (1 known failures, 1 broken)\n"),
            "{t}"
        );
    }

    #[test]
    fn junit_cases_per_test_variant_kernel() {
        let x = junit(&rows());
        assert!(
            x.contains("tests=\"6\" failures=\"1\" errors=\"1\" skipped=\"2\""),
            "{x}"
        );
        assert_eq!(x.matches("<testcase ").count(), 6);
        assert_eq!(x.matches("<testsuite ").count(), 2);
        assert!(x.contains("<error type=\"BROKEN\" message=\"qemu: fatal: AVIC: guest read of the vAPIC page\">line &lt;1&gt;\nlast &amp; line</error>"), "{x}");
        assert!(
            x.contains("<skipped message=\"Requirement not met\"/>"),
            "{x}"
        );
        assert!(x.contains("known failure: exit 254 (known: TCG)"), "{x}");
        assert!(
            x.contains("classname=\"selftests.kvm.amd-ir\" name=\"x86/xapic_ipi_test\""),
            "{x}"
        );
    }

    #[test]
    fn ktap_lines_and_directives() {
        let k = ktap(&rows());
        assert!(
            k.starts_with(
                "KTAP version 1\n1..6\nok 1 kvm:x86/xapic_ipi_test amd-ir 7.2.13+deb14-amd64\n"
            ),
            "{k}"
        );
        assert!(k.contains("# last & line\nnot ok 2 kvm:x86/xapic_ipi_test amd-avic 7.2.13+deb14-amd64 # BROKEN: qemu: fatal"), "{k}");
        assert!(
            k.contains(
                "ok 3 kvm:x86/hyperv_ipi amd-ir 7.2.13+deb14-amd64 # SKIP Requirement not met"
            ),
            "{k}"
        );
        assert!(
            k.contains(
                "ok 5 kvm:x86/debug_regs amd-ir 7.2.13+deb14-amd64 # XFAIL exit 254 (known: TCG)"
            ),
            "{k}"
        );
    }

    #[test]
    fn baseline_lists_only_differences() {
        let d = baseline_diff(&rows(), "amd-ir");
        assert_eq!(
            d,
            [
                "kvm:x86/xapic_ipi_test  amd-ir pass  ->  amd-avic BROKEN: qemu: fatal: AVIC: guest read of the vAPIC page",
                "kvm:x86/debug_regs  amd-ir xfail  ->  amd-avic FAIL: exit 254",
            ]
        );
        assert!(baseline_diff(&rows(), "intel-ir").is_empty());
    }
}
