//! `testbed bench`: per-phase medians of one scenario's boots next to its
//! restores, and `--boot-sharing`: the whole set three ways (shared boots,
//! one boot per scenario, one restored L1 per scenario) with their reports
//! compared.

use std::time::{Duration, Instant};

use crate::plan;
use crate::restore::GroupMode;
use crate::run::{
    prepare, scenario_report, RunOptions, EXIT_FAILED, EXIT_OK, EXIT_SKIP, EXIT_USAGE,
};
use crate::runner;
use crate::scenario::Scenario;
use crate::ui::Ui;

pub async fn bench(options: RunOptions, iterations: usize) -> u8 {
    let ui = Ui::new();
    let prepared = match prepare(&options, &ui) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if options.variants.is_empty() {
        return EXIT_USAGE;
    }
    let scenario = &prepared.scenarios[0];
    let group = plan::group(std::slice::from_ref(scenario), true);
    let mut summaries = Vec::new();
    for variant in &options.variants {
        let mut phases: Vec<[f64; 5]> = Vec::new();
        let mut rates: Vec<f64> = Vec::new();
        let mut posted = 0u64;
        let mut raised = 0u64;
        for i in 0..iterations.max(1) {
            let started = Instant::now();
            let outcomes = match prepared
                .boots(
                    &options,
                    variant,
                    i,
                    &group[0].scenarios,
                    &group[0].devices,
                    &ui,
                )
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_SKIP;
                }
            };
            // a second L1 (a retried stall) is no boot to time
            let outcome = &outcomes[0];
            if let Some(f) = &outcome.failure {
                eprintln!("error: {} boot {i} failed: {}", variant.name, f.message);
                return EXIT_FAILED;
            }
            let t = &outcome.timings;
            phases.push([
                t.qemu_start.as_secs_f64(),
                t.boot_to_ready.as_secs_f64(),
                t.scenarios.iter().map(Duration::as_secs_f64).sum(),
                t.shutdown.as_secs_f64(),
                started.elapsed().as_secs_f64(),
            ]);
            for run in &outcome.runs {
                let (n, secs) = fire_rate(scenario, run);
                if secs > 0.0 {
                    rates.push(n as f64 / secs);
                }
                raised += n;
                if let Some(Ok(c)) = &run.iommu {
                    posted += c.posted;
                }
            }
        }
        // the same scenario from a restored L1, the state saved first (not timed)
        let mut restores: Vec<[f64; 5]> = Vec::new();
        for i in 0..iterations.max(1) + 1 {
            let started = Instant::now();
            let restored = match prepared
                .restore(
                    &options,
                    variant,
                    1000 + i,
                    &group[0].scenarios,
                    &group[0].devices,
                    &ui,
                )
                .await
            {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_SKIP;
                }
            };
            let outcome = &restored.outcomes[0];
            if let Some(f) = &outcome.failure {
                eprintln!("error: {} restore {i} failed: {}", variant.name, f.message);
                return EXIT_FAILED;
            }
            if let GroupMode::Shared { reason } = &restored.mode {
                println!("bench: {} cannot restore: {reason}", variant.name);
                break;
            }
            if i == 0 {
                // the first may save the state, and it warms the file into the page cache
                continue;
            }
            let t = &outcome.timings;
            restores.push([
                t.qemu_start.as_secs_f64(),
                t.boot_to_ready.as_secs_f64(),
                t.scenarios.iter().map(Duration::as_secs_f64).sum(),
                t.shutdown.as_secs_f64(),
                started.elapsed().as_secs_f64(),
            ]);
        }
        summaries.push((variant.name, phases, rates, posted, raised, restores));
    }
    ui.finish();
    let mut first_rate = None;
    for (name, phases, rates, posted, raised, restores) in &summaries {
        println!(
            "bench: scenario {} on {} ({}, {}), {} boots, medians:",
            scenario.name,
            name,
            prepared.images.kernel.release,
            options.accel.name(),
            phases.len()
        );
        let names = [
            "qemu start",
            "kernel boot to agent ready",
            "scenario",
            "shutdown",
            "total",
        ];
        for (i, label) in names.iter().enumerate() {
            let (median, min, max) = median_min_max(phases.iter().map(|p| p[i]).collect());
            println!("  {label:<28} {median:>7.3} s   (min {min:.3}, max {max:.3})");
        }
        if !restores.is_empty() {
            println!(
                "  from a restored L1, {} restores, medians:",
                restores.len()
            );
            let names = [
                "qemu start",
                "load + resume to agent ready",
                "scenario",
                "quit",
                "total",
            ];
            for (i, label) in names.iter().enumerate() {
                let (median, min, max) = median_min_max(restores.iter().map(|p| p[i]).collect());
                println!("  {label:<28} {median:>7.3} s   (min {min:.3}, max {max:.3})");
            }
            let start_up = |p: &[f64; 5]| p[0] + p[1];
            let (boot, _, _) = median_min_max(phases.iter().map(start_up).collect());
            let (restore, _, _) = median_min_max(restores.iter().map(start_up).collect());
            println!(
                "  {:<28} {restore:>7.3} s by restore, {boot:.3} s by boot: restore = {:.3} x boot",
                "L1 start-up (to agent ready)",
                restore / boot
            );
        }
        if rates.is_empty() {
            println!("  {:<28} no fire step", "interrupts/s (fire steps)");
            continue;
        }
        let (median, min, max) = median_min_max(rates.clone());
        let ratio = match first_rate {
            None => {
                first_rate = Some((*name, median));
                String::new()
            }
            Some((first, rate)) => format!("   = {:.2} x {first}", median / rate),
        };
        println!(
            "  {:<28} {median:>7.0}     (min {min:.0}, max {max:.0}){ratio}",
            "interrupts/s (fire steps)"
        );
        if *raised > 0 {
            println!(
                "  {:<28} {posted} of {raised} raised ({:.0}%)",
                "posted by the IOMMU",
                *posted as f64 * 100.0 / *raised as f64
            );
        }
    }
    EXIT_OK
}

/// Interrupts raised by a run's `fire` steps and those steps' wall time (s).
pub fn fire_rate(scenario: &Scenario, run: &runner::ScenarioRun) -> (u64, f64) {
    let mut raised = 0u64;
    let mut secs = 0.0;
    for (i, step) in scenario.steps.iter().enumerate() {
        if let wire::Step::Fire { count, .. } = step {
            if let Some(t) = run.step_times.get(i) {
                raised += u64::from(*count);
                secs += t.as_secs_f64();
            }
        }
    }
    (raised, secs)
}

fn median_min_max(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

/// `testbed bench --boot-sharing`: runs the whole scenario set per variant
/// three ways, in shared L1 boots, one boot per scenario (`--fresh-boot`)
/// and one restored L1 per scenario (`testbed run`'s default),
/// `iterations` times each, and prints the median wall time of each and
/// their ratios to shared boots. A restore pass that had to save a state
/// first is timed without that boot and save (they are printed apart): the
/// comparison is on a warm cache. It also compares the three ways' report
/// bodies scenario by scenario: scenarios must leave no state behind and a
/// restored L1 must behave as a booted one, so no report may differ.
pub async fn bench_boot_sharing(options: RunOptions, iterations: usize) -> u8 {
    let ui = Ui::new();
    let prepared = match prepare(&options, &ui) {
        Ok(p) => p,
        Err(code) => {
            ui.finish();
            return code;
        }
    };
    const WAYS: [&str; 3] = [
        "shared boots",
        "one boot per scenario",
        "one restore per scenario",
    ];
    let mut lines = Vec::new();
    let mut all_same = true;
    for variant in &options.variants {
        let here: Vec<Scenario> = prepared
            .scenarios
            .iter()
            .filter(|s| s.runs_on(variant.name))
            .cloned()
            .collect();
        if here.is_empty() {
            continue;
        }
        // per way: wall times, L1s started, and each iteration's bodies
        let mut secs: [Vec<f64>; 3] = Default::default();
        let mut boots = [0usize; 3];
        let mut saves = Vec::new();
        let mut shared_reasons = std::collections::BTreeSet::new();
        let mut differing = std::collections::BTreeSet::new();
        // every boot gets its own number: its sockets and logs are its own
        let mut boot_no = 0;
        for _ in 0..iterations.max(1) {
            let mut bodies: [std::collections::BTreeMap<String, String>; 3] = Default::default();
            for way in 0..3 {
                let started = Instant::now();
                let mut untimed = Duration::ZERO;
                let groups = plan::group(&here, way == 1);
                boots[way] = 0;
                for group in &groups {
                    let i = boot_no;
                    boot_no += 1;
                    let outcomes = if way == 2 {
                        match prepared
                            .restore(&options, variant, i, &group.scenarios, &group.devices, &ui)
                            .await
                        {
                            Ok(g) => {
                                match &g.mode {
                                    GroupMode::Restored {
                                        saved: Some((boot, save)),
                                        ..
                                    } => {
                                        untimed += *boot + *save;
                                        saves.push((*boot + *save).as_secs_f64());
                                    }
                                    GroupMode::Shared { reason } => {
                                        shared_reasons.insert(reason.clone());
                                    }
                                    GroupMode::Restored { saved: None, .. } => {}
                                }
                                g.outcomes
                            }
                            Err(e) => {
                                ui.finish();
                                eprintln!("error: {e}");
                                return EXIT_SKIP;
                            }
                        }
                    } else {
                        match prepared
                            .boots(&options, variant, i, &group.scenarios, &group.devices, &ui)
                            .await
                        {
                            Ok(o) => o,
                            Err(e) => {
                                ui.finish();
                                eprintln!("error: {e}");
                                return EXIT_SKIP;
                            }
                        }
                    };
                    boots[way] += outcomes.len();
                    for scenario in &group.scenarios {
                        let outcome = crate::runner::outcome_of(&outcomes, &scenario.name);
                        match scenario_report(variant, scenario, outcome) {
                            Ok(report) => bodies[way].insert(scenario.name.clone(), report.body()),
                            Err(why) => {
                                ui.finish();
                                eprintln!(
                                    "error: {} {} {i}, {}: {why}",
                                    variant.name, WAYS[way], scenario.name
                                );
                                return EXIT_FAILED;
                            }
                        };
                    }
                }
                secs[way].push((started.elapsed().saturating_sub(untimed)).as_secs_f64());
            }
            for (name, body) in &bodies[0] {
                for way in 1..3 {
                    let other = bodies[way]
                        .get(name)
                        .map(String::as_str)
                        .unwrap_or_default();
                    if other != body {
                        differing.insert(format!(
                            "{name} ({} vs shared: {})",
                            WAYS[way],
                            first_difference(body, other)
                        ));
                    }
                }
            }
        }
        lines.push(format!(
            "bench: {} scenarios on {} ({}, {}), {} iterations, medians:",
            here.len(),
            variant.name,
            prepared.images.kernel.release,
            options.accel.name(),
            secs[0].len()
        ));
        let (shared, _, _) = median_min_max(secs[0].clone());
        for (way, label) in WAYS.iter().enumerate() {
            let (median, min, max) = median_min_max(secs[way].clone());
            let ratio = if way == 0 {
                String::new()
            } else {
                format!("   = {:.2} x shared", median / shared)
            };
            let l1s = if way == 2 { "L1s" } else { "boots" };
            lines.push(format!(
                "  {label:<32} {median:>7.1} s   (min {min:.1}, max {max:.1}, {} {l1s}){ratio}",
                boots[way]
            ));
        }
        if !saves.is_empty() {
            lines.push(format!(
                "  {:<32} {:>7.1} s in all, not in the restore times ({} states)",
                "boots that saved a state",
                saves.iter().sum::<f64>(),
                saves.len()
            ));
        }
        for reason in &shared_reasons {
            lines.push(format!("  {:<32} {reason}", "restore fell back to sharing"));
        }
        if differing.is_empty() {
            lines.push(format!(
                "  {:<32} all {} identical",
                "reports, three ways",
                here.len()
            ));
        } else {
            all_same = false;
            lines.push(format!("  {:<32} DIFFER:", "reports, three ways"));
            for d in &differing {
                lines.push(format!("    {d}"));
            }
        }
    }
    ui.finish();
    for l in lines {
        println!("{l}");
    }
    if all_same {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// The first line where two report bodies differ, both ways.
fn first_difference(a: &str, b: &str) -> String {
    let (mut la, mut lb) = (a.lines(), b.lines());
    loop {
        match (la.next(), lb.next()) {
            (Some(x), Some(y)) if x == y => continue,
            (x, y) => return format!("{:?} / {:?}", x.unwrap_or("(end)"), y.unwrap_or("(end)")),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_difference_names_both_lines() {
        assert_eq!(
            super::first_difference("a\nb\nc", "a\nB\nc"),
            "\"b\" / \"B\""
        );
        assert_eq!(super::first_difference("a", "a\nb"), "\"(end)\" / \"b\"");
    }
}
