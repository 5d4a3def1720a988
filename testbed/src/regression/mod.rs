//! `testbed regressions`: the regression corpus (`regressions/`), one
//! scenario per real upstream bug or behaviour change, each with a
//! `[regression]` table ([`file`]) naming the change and, per Debian
//! kernel, whether the scenario's checks must pass or fail there.
//!
//! The run groups the cases by kernel: each kernel is fetched once, and
//! per variant the entries that run on it share boots (`plan`), so the
//! CI selection (`--ci`: one failing and one passing kernel per entry)
//! costs one boot per (kernel, variant) pair. A case is as expected when
//! the verdict (every check passed and the scenario ran to its end) is
//! the expected one and, where the entry lists `failing` checks, those
//! are among the failed ones. No snapshot is compared: the corpus is
//! about verdicts across kernels, the snapshots about one kernel's text.
//!
//! Exit codes: 0 every case as expected; 1 one was not; 2 bad input;
//! 125 a kernel could not be fetched or booted (and nothing was unexpected).

pub mod file;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

pub use file::{Expect, KernelCase, Regression, RegressionError};

use crate::plan;
use crate::report::Report;
use crate::run::{self, RunOptions, EXIT_FAILED, EXIT_OK, EXIT_SKIP, EXIT_USAGE};
use crate::scenario::Scenario;
use crate::ui::Ui;

/// One corpus entry: the scenario and what it records.
#[derive(Debug, Clone)]
pub struct Entry {
    pub scenario: Scenario,
    pub regression: Regression,
}

/// Loads every scenario of `paths`; each must have a `[regression]` table.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Entry>, String> {
    let scenarios = run::load_scenarios(paths).map_err(|e| e.message)?;
    scenarios
        .into_iter()
        .map(|scenario| match file::load(&scenario.path) {
            Ok(Some(regression)) => {
                if !scenario.runs_on(regression.variant) {
                    return Err(format!(
                        "{}: the scenario does not run on its regression's variant {}",
                        scenario.path.display(),
                        regression.variant
                    ));
                }
                Ok(Entry {
                    scenario,
                    regression,
                })
            }
            Ok(None) => Err(format!(
                "{}: no [regression] table: a corpus entry names its upstream change and kernels",
                scenario.path.display()
            )),
            Err(e) => Err(e.to_string()),
        })
        .collect()
}

/// What one case gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// The verdict, and the names of the checks that failed (`broken` when
    /// the scenario did not run to its end).
    Verdict { passed: bool, failed: Vec<String> },
    /// No verdict: the kernel or the boot failed; why.
    NoRun(String),
}

/// The verdict of a report: passed, and the failed checks by name.
pub fn verdict(report: &Report) -> Got {
    let mut failed: Vec<String> = report
        .checks()
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| {
            c.expectation
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    if report.failure.is_some() {
        failed.push("broken".into());
    }
    Got::Verdict {
        passed: failed.is_empty(),
        failed,
    }
}

/// Whether `got` is what `case` expects; `Err` says what differs.
pub fn judge(case: &KernelCase, got: &Got) -> Result<(), String> {
    match got {
        Got::NoRun(why) => Err(why.clone()),
        Got::Verdict { passed, failed } => {
            let expected = case.expect == Expect::Pass;
            if *passed != expected {
                return Err(if *passed {
                    "the checks pass: expected them to fail".to_string()
                } else {
                    format!(
                        "the checks fail ({}): expected them to pass",
                        failed.join(", ")
                    )
                });
            }
            let missing: Vec<&str> = case
                .failing
                .iter()
                .filter(|c| !failed.contains(c))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "expected {} among the failed checks; failed: {}",
                    missing.join(", "),
                    failed.join(", ")
                ));
            }
            Ok(())
        }
    }
}

/// The cases to run, grouped by kernel (in first-seen order per kernel,
/// kernels sorted): (entry index, case index).
pub fn plan(entries: &[Entry], ci_only: bool) -> BTreeMap<String, Vec<(usize, usize)>> {
    let mut by_kernel: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (e, entry) in entries.iter().enumerate() {
        for (c, case) in entry.regression.kernels.iter().enumerate() {
            if !ci_only || case.ci {
                by_kernel
                    .entry(case.kernel.clone())
                    .or_default()
                    .push((e, c));
            }
        }
    }
    by_kernel
}

struct Row {
    entry: usize,
    case: usize,
    got: Got,
    judged: Result<(), String>,
}

/// `testbed regressions`.
pub async fn main(options: RunOptions, ci_only: bool) -> u8 {
    let entries = match load(&options.paths) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let by_kernel = plan(&entries, ci_only);
    let ui = Ui::new();
    let started = Instant::now();
    let cache = images::Cache::default_location();
    let project = run::project_dir(&entries[0].scenario.path);
    let results = options
        .results
        .clone()
        .unwrap_or_else(|| project.join("results"))
        .join("regressions");
    let fail = |ui: &Ui, e: run::PrepareError| {
        ui.finish();
        eprintln!("error: {}", e.message);
        e.code
    };
    let runtime = match run::runtime_dir() {
        Ok(r) => r,
        Err(e) => return fail(&ui, e),
    };
    let agent = match run::write_agent(runtime.path()) {
        Ok(a) => a,
        Err(e) => return fail(&ui, e),
    };
    let patched = entries.iter().any(|e| {
        crate::variant::lookup(e.regression.variant)
            .is_ok_and(|v| v.qemu == crate::variant::QemuKind::Patched)
    });
    let patched_qemu = if patched {
        match run::prepare_patched_qemu(&cache, &project, options.qemu_tree.as_deref(), &mut |p| {
            ui.images(p)
        }) {
            Ok(b) => Some(b),
            Err(e) => return fail(&ui, e),
        }
    } else {
        None
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut boots = 0;
    for (kernel, cases) in &by_kernel {
        let no_run = |why: String| {
            cases
                .iter()
                .map(move |&(entry, case)| (entry, case, why.clone()))
        };
        let spec: images::KernelSpec = match kernel.parse() {
            Ok(s) => s,
            Err(e) => {
                ui.finish();
                eprintln!("error: {kernel}: {e}");
                return EXIT_USAGE;
            }
        };
        let images =
            match run::prepare_kernel(&cache, &spec, &options, &agent, &mut |p| ui.images(p)) {
                Ok(i) => i,
                Err(e) => {
                    for (entry, case, why) in no_run(e.message) {
                        rows.push(Row {
                            entry,
                            case,
                            judged: Err(why.clone()),
                            got: Got::NoRun(why),
                        });
                    }
                    continue;
                }
            };
        // per variant, the entries' scenarios in shared boots
        let mut variants: Vec<&'static str> = cases
            .iter()
            .map(|&(e, _)| entries[e].regression.variant)
            .collect();
        variants.dedup();
        variants.sort_unstable();
        variants.dedup();
        for variant_name in variants {
            let variant = crate::variant::lookup(variant_name).expect("checked when loading");
            let here: Vec<(usize, usize)> = cases
                .iter()
                .copied()
                .filter(|&(e, _)| entries[e].regression.variant == variant_name)
                .collect();
            let scenarios: Vec<Scenario> = here
                .iter()
                .map(|&(e, _)| entries[e].scenario.clone())
                .collect();
            for (i, group) in plan::group(&scenarios, options.fresh_boot)
                .iter()
                .enumerate()
            {
                let dir = format!("{}/{variant_name}", kernel.replace(':', "-"));
                let target = run::BootTarget {
                    images: &images,
                    patched_qemu: patched_qemu.as_ref(),
                    log_dir: results.join(&dir).join(format!("boot-{i}")),
                    runtime_dir: runtime.path().join(format!("{boots}")),
                };
                boots += 1;
                let t = Instant::now();
                let outcomes = run::boots(
                    &options,
                    &target,
                    variant,
                    &group.scenarios,
                    &group.devices,
                    &mut |e| ui.run(e),
                )
                .await;
                let secs = t.elapsed().as_secs_f64();
                for scenario in &group.scenarios {
                    let &(entry, case) = here
                        .iter()
                        .find(|&&(e, _)| entries[e].scenario.name == scenario.name)
                        .expect("in this group");
                    let got = match &outcomes {
                        Err(why) => Got::NoRun(why.clone()),
                        Ok(o) => {
                            let o = crate::runner::outcome_of(o, &scenario.name);
                            match run::scenario_report(variant, scenario, o) {
                                Ok(report) => verdict(&report),
                                Err(why) => Got::NoRun(format!(
                                    "{why} (console log: {})",
                                    o.console_log.display()
                                )),
                            }
                        }
                    };
                    let judged = judge(&entries[entry].regression.kernels[case], &got);
                    ui.line(&format!(
                        "{:<48} {:<16} {:<10} {} ({secs:.0} s boot)",
                        scenario.name,
                        kernel,
                        variant_name,
                        if judged.is_ok() {
                            "as expected"
                        } else {
                            "UNEXPECTED"
                        }
                    ));
                    rows.push(Row {
                        entry,
                        case,
                        got,
                        judged,
                    });
                }
            }
        }
    }
    ui.finish();
    print_table(&entries, &rows);
    println!(
        "{} cases on {} kernels in {boots} boots, {:.0} s",
        rows.len(),
        by_kernel.len(),
        started.elapsed().as_secs_f64()
    );
    if rows
        .iter()
        .any(|r| r.judged.is_err() && !matches!(r.got, Got::NoRun(_)))
    {
        EXIT_FAILED
    } else if rows.iter().any(|r| matches!(r.got, Got::NoRun(_))) {
        EXIT_SKIP
    } else {
        EXIT_OK
    }
}

fn print_table(entries: &[Entry], rows: &[Row]) {
    println!();
    println!(
        "{:<48} {:<16} {:<10} {:<6} {:<6} RESULT",
        "ENTRY", "KERNEL", "VARIANT", "EXPECT", "GOT"
    );
    for r in rows {
        let entry = &entries[r.entry];
        let case = &entry.regression.kernels[r.case];
        let got = match &r.got {
            Got::Verdict { passed: true, .. } => "pass",
            Got::Verdict { passed: false, .. } => "fail",
            Got::NoRun(_) => "-",
        };
        let result = match (&r.judged, &r.got) {
            (Ok(()), _) => "as expected",
            (Err(_), Got::NoRun(_)) => "NOT RUN",
            (Err(_), _) => "UNEXPECTED",
        };
        println!(
            "{:<48} {:<16} {:<10} {:<6} {got:<6} {result}",
            entry.scenario.name,
            case.kernel,
            entry.regression.variant,
            case.expect.label()
        );
        if let Got::Verdict { failed, .. } = &r.got {
            if !failed.is_empty() {
                println!("    failed checks: {}", failed.join(", "));
            }
        }
        if let Err(why) = &r.judged {
            println!("    {why}");
        }
    }
    let ok = rows.iter().filter(|r| r.judged.is_ok()).count();
    println!();
    println!("{ok} as expected, {} not", rows.len() - ok);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(expect: Expect, failing: &[&str]) -> KernelCase {
        KernelCase {
            kernel: "debian:6.18.9".into(),
            expect,
            failing: failing.iter().map(|s| s.to_string()).collect(),
            shows: "x".into(),
            ci: true,
            verified: None,
        }
    }

    fn got(passed: bool, failed: &[&str]) -> Got {
        Got::Verdict {
            passed,
            failed: failed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_case_is_judged_on_its_verdict_and_named_checks() {
        assert_eq!(
            judge(&case(Expect::Fail, &[]), &got(false, &["broken"])),
            Ok(())
        );
        assert_eq!(judge(&case(Expect::Pass, &[]), &got(true, &[])), Ok(()));
        assert_eq!(
            judge(&case(Expect::Fail, &[]), &got(true, &[])),
            Err("the checks pass: expected them to fail".into())
        );
        assert_eq!(
            judge(
                &case(Expect::Pass, &[]),
                &got(false, &["lossless", "kernel-quiet"])
            ),
            Err("the checks fail (lossless, kernel-quiet): expected them to pass".into())
        );
        // failing for another reason than the one recorded is not the bug
        assert_eq!(
            judge(
                &case(Expect::Fail, &["lossless"]),
                &got(false, &["pairing"])
            ),
            Err("expected lossless among the failed checks; failed: pairing".into())
        );
        assert_eq!(
            judge(
                &case(Expect::Fail, &["lossless"]),
                &got(false, &["pairing", "lossless"])
            ),
            Ok(())
        );
        assert!(judge(&case(Expect::Pass, &[]), &Got::NoRun("no boot".into())).is_err());
    }

    #[test]
    fn the_corpus_in_the_repository_loads_and_plans_one_pass_and_one_fail_per_entry() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../regressions");
        let entries = load(&[dir]).unwrap();
        assert!(entries.len() >= 3, "{} entries", entries.len());
        let plan = plan(&entries, true);
        for (e, entry) in entries.iter().enumerate() {
            let cases: Vec<&KernelCase> = plan
                .values()
                .flatten()
                .filter(|&&(i, _)| i == e)
                .map(|&(_, c)| &entry.regression.kernels[c])
                .collect();
            let sides: Vec<Expect> = cases.iter().map(|c| c.expect).collect();
            assert!(
                sides.contains(&Expect::Pass) && sides.contains(&Expect::Fail),
                "{}: {sides:?}",
                entry.scenario.name
            );
            assert_eq!(cases.len(), 2, "{}", entry.scenario.name);
        }
    }
}
