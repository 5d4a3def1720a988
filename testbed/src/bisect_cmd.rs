//! `testbed bisect` and its step, `testbed bisect-step`.
//!
//! Both bisects look for the first point where one scenario's report body
//! on one variant stops being what it is at `--good` (the header, which
//! names the kernel, is not compared; a scenario that breaks is a change
//! too, its failure is in the body). `--console-match TEXT` adds the
//! boot's console lines containing TEXT to what is compared, for changes
//! the kernel only logs.
//!
//! - Over Debian kernels (`--good debian:6.1 --bad debian:6.12`): every
//!   kernel `testbed list kernels` shows between the two, searched with
//!   [`crate::bisect::first_change`]; nothing is built.
//! - Over a git tree (`--tree PATH --good REV --bad REV`): `git bisect run`
//!   in the tree itself (it must be clean; its branch or commit is checked
//!   out again afterwards, however the bisect ends), with `testbed
//!   bisect-step` as the step: it builds the checked-out commit
//!   (`git:TREE`, incrementally in the `O=` directory kept for the tree),
//!   runs the scenario and compares the body with the reference.
//!
//! Exit codes: 0 the first change was found; 1 the report is the same at
//! both ends (nothing to bisect); 2 bad input; 125 an end cannot be tested
//! or untestable kernels hide the boundary.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::bisect::{first_change, Found, Probe};
use crate::gitbisect::{self, GitBisectError, GitBisectOutcome, StepVerdict};
use crate::run::{self, RunOptions, EXIT_FAILED, EXIT_OK, EXIT_SKIP, EXIT_USAGE};
use crate::ui::Ui;

/// What is compared between two points: the report body, then the
/// console lines that contain one of `console_match` (without printk's
/// `[time]` prefix), when any are asked for.
fn comparable(
    report: &crate::report::Report,
    console_log: &Path,
    console_match: &[String],
) -> String {
    let mut out = report.body();
    if !console_match.is_empty() {
        let console = std::fs::read(console_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let quoted: Vec<String> = console_match.iter().map(|m| format!("{m:?}")).collect();
        let _ = writeln!(out, "\nconsole lines with {}", quoted.join(" or "));
        let mut any = false;
        for line in console
            .lines()
            .map(console_text)
            .filter(|l| console_match.iter().any(|m| l.contains(m.as_str())))
        {
            let _ = writeln!(out, "   {line}");
            any = true;
        }
        if !any {
            let _ = writeln!(out, "   none");
        }
    }
    out
}

/// A console line without its printk time stamp and trailing blanks.
fn console_text(line: &str) -> &str {
    let line = line.trim_end();
    match line.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((time, rest)) if time.trim().parse::<f64>().is_ok() => rest.trim_start(),
        _ => line,
    }
}

/// `run`'s probe with another kernel.
async fn probe_kernel(
    options: &RunOptions,
    kernel: images::KernelSpec,
    console_match: &[String],
    ui: &Ui,
) -> Result<String, u8> {
    let mut options = options.clone();
    options.kernel = kernel;
    run::probe(&options, ui)
        .await
        .map(|(r, console)| comparable(&r, &console, console_match))
}

/// The version bisect over the Debian kernels between `good` and `bad`.
pub async fn versions(options: RunOptions, good: &str, bad: &str, console_match: &[String]) -> u8 {
    let parse = |s: &str| -> Result<images::VersionReq, String> {
        let spec = if s.contains(':') {
            s.to_string()
        } else {
            format!("debian:{s}")
        };
        match spec.parse::<images::KernelSpec>() {
            Ok(images::KernelSpec::Debian(req)) => Ok(req),
            Ok(_) => Err(format!(
                "{s}: a version bisect takes debian: kernels (git trees need --tree)"
            )),
            Err(e) => Err(e.to_string()),
        }
    };
    let (good_req, bad_req) = match (parse(good), parse(bad)) {
        (Ok(g), Ok(b)) => (g, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let ui = Ui::new();
    let cache = images::Cache::default_location();
    let listed =
        tokio::task::block_in_place(|| images::list_debian_kernels(&cache, &mut |p| ui.images(p)));
    let mut versions: Vec<images::KernelVersion> = match listed {
        Ok(k) => k.into_iter().map(|k| k.version).collect(),
        Err(e) => {
            ui.finish();
            eprintln!("error: listing Debian kernels: {e}");
            return EXIT_SKIP;
        }
    };
    versions.sort();
    versions.dedup();
    let newest = |req: &images::VersionReq| versions.iter().rev().find(|v| req.matches(v)).copied();
    let (Some(first), Some(last)) = (newest(&good_req), newest(&bad_req)) else {
        ui.finish();
        let missing = if newest(&good_req).is_none() {
            good
        } else {
            bad
        };
        eprintln!("error: no Debian kernel matches {missing} (testbed list kernels shows them)");
        return EXIT_USAGE;
    };
    if first >= last {
        ui.finish();
        eprintln!("error: --good debian:{first} must be older than --bad debian:{last}");
        return EXIT_USAGE;
    }
    let items: Vec<images::KernelVersion> = versions
        .into_iter()
        .filter(|v| first <= *v && *v <= last)
        .collect();
    let name = |i: usize| format!("debian:{}", items[i]);
    ui.line(&format!(
        "bisecting {} kernels from {} to {}: scenario {} on {}",
        items.len(),
        name(0),
        name(items.len() - 1),
        scenario_names(&options),
        variant_name(&options)
    ));
    let mut aborted = None;
    let mut reference: Option<String> = None;
    let started = Instant::now();
    let found = first_change(items.len(), |i| {
        if aborted.is_some() {
            return Probe::Skip("the bisect was aborted".into());
        }
        let spec = images::KernelSpec::Debian(images::VersionReq {
            major: items[i].major,
            minor: Some(items[i].minor),
            patch: Some(items[i].patch),
        });
        let t = Instant::now();
        let got = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(probe_kernel(
                &options,
                spec,
                console_match,
                &ui,
            ))
        });
        let secs = t.elapsed().as_secs_f64();
        match got {
            Ok(body) => {
                let verdict = match &reference {
                    None => "reference".to_string(),
                    Some(r) if *r == body => "same as the reference".to_string(),
                    Some(_) => "differs".to_string(),
                };
                ui.line(&format!("  {:<18} {verdict} ({secs:.0} s)", name(i)));
                reference.get_or_insert_with(|| body.clone());
                Probe::Report(body)
            }
            Err(EXIT_SKIP) => {
                ui.line(&format!(
                    "  {:<18} skipped: no kernel or no boot ({secs:.0} s)",
                    name(i)
                ));
                Probe::Skip("no kernel or no boot".into())
            }
            Err(code) => {
                aborted = Some(code);
                Probe::Skip("aborted".into())
            }
        }
    });
    ui.finish();
    if let Some(code) = aborted {
        return code;
    }
    let total = started.elapsed().as_secs_f64();
    match found {
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SKIP
        }
        Ok(Found::NoChange) => {
            println!(
                "the report is the same on {} and {}: nothing to bisect ({total:.0} s)",
                name(0),
                name(items.len() - 1)
            );
            EXIT_FAILED
        }
        Ok(Found::Between {
            last_good,
            first_bad,
            skipped,
        }) => {
            let skipped: Vec<String> = skipped.into_iter().map(name).collect();
            println!(
                "the report changes after {} and by {}; {} could not be tested ({total:.0} s)",
                name(last_good),
                name(first_bad),
                skipped.join(", ")
            );
            EXIT_SKIP
        }
        Ok(Found::FirstChange {
            index,
            before,
            after,
        }) => {
            println!(
                "first kernel whose report differs: {} (the one before it, {}, gives the reference report of {}) ({total:.0} s)",
                name(index),
                name(index - 1),
                name(0)
            );
            println!();
            print!(
                "{}",
                side_by_side(&name(index - 1), &before, &name(index), &after)
            );
            EXIT_OK
        }
    }
}

fn scenario_names(options: &RunOptions) -> String {
    options
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn variant_name(options: &RunOptions) -> &'static str {
    options.variants.first().map(|v| v.name).unwrap_or("?")
}

/// Two reports in columns, aligned line by line: `|` a changed line, `<`
/// only on the left, `>` only on the right. The left column is as wide as
/// its longest line (up to 100 characters); nothing on the right is cut.
pub fn side_by_side(left_title: &str, left: &str, right_title: &str, right: &str) -> String {
    let l: Vec<&str> = left.lines().collect();
    let r: Vec<&str> = right.lines().collect();
    let width = l
        .iter()
        .chain([&left_title])
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0)
        .min(100);
    let cut = |s: &str| -> String {
        if s.chars().count() > width {
            let mut t: String = s.chars().take(width - 1).collect();
            t.push('…');
            t
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    let mut row = |a: &str, mark: char, b: &str| {
        let _ = writeln!(out, "{:<width$} {mark} {b}", cut(a));
    };
    row(left_title, ' ', right_title);
    row(
        &"-".repeat(width),
        ' ',
        &"-".repeat(right_title.chars().count().max(8)),
    );
    let diff = similar::TextDiff::from_slices(&l, &r);
    for op in diff.ops() {
        let (_, old, new) = op.as_tag_tuple();
        let (old, new) = (&l[old], &r[new]);
        if matches!(op, similar::DiffOp::Equal { .. }) {
            for (a, b) in old.iter().zip(new.iter()) {
                row(a, ' ', b);
            }
            continue;
        }
        for i in 0..old.len().max(new.len()) {
            let (a, b) = (old.get(i), new.get(i));
            let mark = match (a, b) {
                (Some(_), Some(_)) => '|',
                (Some(_), None) => '<',
                _ => '>',
            };
            row(a.copied().unwrap_or(""), mark, b.copied().unwrap_or(""));
        }
    }
    out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// Where the per-bisect files live: the reference body and one body per
/// commit the step ran on.
fn reference_file(state: &Path) -> PathBuf {
    state.join("reference.txt")
}

fn report_file(state: &Path, commit: &str) -> PathBuf {
    state.join(format!("{commit}.txt"))
}

fn git_line(tree: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(tree)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_run(tree: &Path, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(tree)
        .args(args)
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {} in {}: {}",
            args.join(" "),
            tree.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The git bisect. `step_args` are the run flags to hand on to each step.
pub async fn git_tree(
    options: RunOptions,
    tree: &Path,
    good: &str,
    bad: &str,
    console_match: &[String],
    step_args: Vec<OsString>,
) -> u8 {
    let ui = Ui::new();
    let fail = |ui: &Ui, msg: String, code: u8| {
        ui.finish();
        eprintln!("error: {msg}");
        code
    };
    let tree = match std::fs::canonicalize(tree) {
        Ok(t) => t,
        Err(e) => return fail(&ui, format!("{}: {e}", tree.display()), EXIT_USAGE),
    };
    let (Some(good_sha), Some(bad_sha)) = (
        git_line(
            &tree,
            &["rev-parse", "--verify", "-q", &format!("{good}^{{commit}}")],
        ),
        git_line(
            &tree,
            &["rev-parse", "--verify", "-q", &format!("{bad}^{{commit}}")],
        ),
    ) else {
        return fail(
            &ui,
            format!(
                "{}: --good {good} or --bad {bad} is not a commit there",
                tree.display()
            ),
            EXIT_USAGE,
        );
    };
    if let Err(e) = gitbisect::check_tree(&tree) {
        return fail(&ui, e.to_string(), EXIT_USAGE);
    }
    let state = match tempfile::Builder::new().prefix("testbed-bisect-").tempdir() {
        Ok(d) => d,
        Err(e) => return fail(&ui, format!("temporary directory: {e}"), EXIT_SKIP),
    };
    let kernel = images::KernelSpec::Git {
        tree: tree.clone(),
        rev: None,
    };
    let started = Instant::now();
    // the two ends first: the reference, and proof that the bad end differs
    let restore = match gitbisect::RestoreHead::new(&tree) {
        Ok(r) => r,
        Err(e) => return fail(&ui, e.to_string(), EXIT_SKIP),
    };
    let mut ends = Vec::new();
    for (label, sha) in [("good", &good_sha), ("bad", &bad_sha)] {
        if let Err(e) = git_run(&tree, &["checkout", "-q", "--detach", sha]) {
            return fail(&ui, e, EXIT_SKIP);
        }
        let t = Instant::now();
        match probe_kernel(&options, kernel.clone(), console_match, &ui).await {
            Ok(body) => {
                ui.line(&format!(
                    "  {label} {} : tested ({:.0} s)",
                    &sha[..12],
                    t.elapsed().as_secs_f64()
                ));
                ends.push(body);
            }
            Err(EXIT_SKIP) => {
                return fail(
                    &ui,
                    format!(
                        "the {label} end {} cannot be built or booted: it must be testable",
                        &sha[..12]
                    ),
                    EXIT_SKIP,
                )
            }
            Err(code) => {
                return fail(
                    &ui,
                    format!("the {label} end {} could not be tested", &sha[..12]),
                    code,
                )
            }
        }
    }
    drop(restore);
    ui.finish();
    if ends[0] == ends[1] {
        println!("the report is the same at {good} and {bad}: nothing to bisect");
        return EXIT_FAILED;
    }
    let write = |p: PathBuf, body: &str| {
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))
    };
    if let Err(e) = write(reference_file(state.path()), &ends[0])
        .and(write(report_file(state.path(), &bad_sha), &ends[1]))
    {
        eprintln!("error: {e}");
        return EXIT_SKIP;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: the testbed's own path: {e}");
            return EXIT_SKIP;
        }
    };
    let mut step: Vec<OsString> = vec![
        exe.into(),
        "bisect-step".into(),
        "--state".into(),
        state.path().into(),
    ];
    for m in console_match {
        step.push("--console-match".into());
        step.push(m.into());
    }
    step.extend(step_args);
    step.push("--kernel".into());
    step.push(format!("git:{}", tree.display()).into());
    let result = tokio::task::block_in_place(|| {
        gitbisect::drive(&tree, &good_sha, &bad_sha, &step, &mut |line| {
            eprintln!("git: {line}")
        })
    });
    let total = started.elapsed().as_secs_f64();
    match result {
        Err(e @ GitBisectError::StepAborted { .. }) => {
            eprintln!("error: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SKIP
        }
        Ok(r) => {
            println!("bisect log:");
            for line in r.log.lines() {
                println!("  {line}");
            }
            println!("steps: {}", r.steps.len());
            for (sha, verdict) in &r.steps {
                let subject =
                    git_line(&tree, &["log", "-1", "--format=%s", sha]).unwrap_or_default();
                let v = match verdict {
                    StepVerdict::Good => "same",
                    StepVerdict::Bad => "differs",
                    StepVerdict::Skip => "skipped",
                };
                println!("  {} {v:<8} {subject}", &sha[..12]);
            }
            match r.outcome {
                GitBisectOutcome::FirstBad { commit, subject } => {
                    println!(
                        "first commit whose report differs from {good}'s: {commit} {subject} ({total:.0} s in all)"
                    );
                    let after = std::fs::read_to_string(report_file(state.path(), &commit))
                        .unwrap_or_default();
                    println!();
                    print!(
                        "{}",
                        side_by_side(
                            &format!("{good} (reference)"),
                            &ends[0],
                            &commit[..12],
                            &after
                        )
                    );
                    EXIT_OK
                }
                GitBisectOutcome::OnlySkippedLeft { candidates } => {
                    println!(
                        "untestable commits hide the change; it is one of: {} ({total:.0} s)",
                        candidates.join(" ")
                    );
                    EXIT_SKIP
                }
            }
        }
    }
}

/// One `git bisect run` step: test HEAD of the worktree `options.kernel`
/// names, compare with the reference in `state`. Exits 0 same, 1 differs,
/// 125 cannot build or boot, 128 anything else (git aborts the bisect:
/// bad input must not read as "bad").
pub async fn step(options: RunOptions, state: &Path, console_match: &[String]) -> u8 {
    let images::KernelSpec::Git { tree, .. } = &options.kernel else {
        eprintln!("error: bisect-step needs a git: kernel");
        return 128;
    };
    let Some(head) = git_line(tree, &["rev-parse", "HEAD"]) else {
        eprintln!("error: {}: no HEAD", tree.display());
        return 128;
    };
    let subject = git_line(tree, &["log", "-1", "--format=%s", "HEAD"]).unwrap_or_default();
    let Ok(reference) = std::fs::read_to_string(reference_file(state)) else {
        eprintln!("error: no reference report in {}", state.display());
        return 128;
    };
    let ui = Ui::new();
    let t = Instant::now();
    let got = run::probe(&options, &ui).await;
    ui.finish();
    let secs = t.elapsed().as_secs_f64();
    let (code, verdict) = match got {
        Ok((report, console)) => {
            let body = comparable(&report, &console, console_match);
            let _ = std::fs::write(report_file(state, &head), &body);
            if body == reference {
                (0, "same as the reference")
            } else {
                (1, "differs")
            }
        }
        Err(EXIT_SKIP) => (125, "skipped: no build or no boot"),
        Err(_) => (128, "aborting: bad input"),
    };
    eprintln!(
        "bisect-step {} {subject}: {verdict} ({secs:.0} s)",
        &head[..12]
    );
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_their_time_stamps() {
        assert_eq!(
            console_text("[    0.123456] DMAR: Unknown option - 'x'  "),
            "DMAR: Unknown option - 'x'"
        );
        assert_eq!(console_text("DMAR: IOMMU enabled"), "DMAR: IOMMU enabled");
        assert_eq!(console_text("[x] not a time"), "[x] not a time");
    }

    #[test]
    fn side_by_side_marks_changes() {
        let s = side_by_side(
            "a",
            "same\nold line\ngone\ntail\n",
            "b",
            "same\nnew line\ntail\nadded\n",
        );
        let lines: Vec<&str> = s.lines().collect();
        assert!(
            lines[0].starts_with("a ") && lines[0].ends_with(" b"),
            "{s}"
        );
        assert_eq!(lines[2], "same       same", "{s}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("old line") && l.contains(" | new line")),
            "{s}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("gone") && l.ends_with('<')),
            "{s}"
        );
        assert!(lines.iter().any(|l| l.contains(" > added")), "{s}");
    }
}
