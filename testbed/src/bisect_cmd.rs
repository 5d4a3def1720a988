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
use std::path::Path;
use std::time::Instant;

use std::collections::HashMap;

use crate::bisect::{self, first_change_by, Chosen, Found, Outcome, Probe, Question};
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

/// What a probe's report says: whether its checks passed (and it ran to
/// its end), and its comparable body.
fn outcome(
    report: &crate::report::Report,
    console_log: &Path,
    console_match: &[String],
) -> Outcome {
    Outcome {
        passed: report.failure.is_none() && report.all_passed(),
        body: comparable(report, console_log, console_match),
    }
}

/// `run`'s probe with another kernel.
async fn probe_kernel(
    options: &RunOptions,
    kernel: images::KernelSpec,
    console_match: &[String],
    ui: &Ui,
) -> Result<Outcome, u8> {
    let mut options = options.clone();
    options.kernel = kernel;
    run::probe(&options, ui)
        .await
        .map(|(r, console)| outcome(&r, &console, console_match))
}

/// Whether the one scenario file of a bisect has `[[expect]]` tables
/// (exit 2 when it does not load).
fn has_expectations(options: &RunOptions) -> Result<bool, u8> {
    match options.paths.first().map(|p| crate::scenario::load(p)) {
        Some(Ok(s)) => Ok(!s.expect.is_empty()),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            Err(EXIT_USAGE)
        }
        None => {
            eprintln!("error: a bisect needs exactly one scenario file");
            Err(EXIT_USAGE)
        }
    }
}

/// The question line, with why the question is not the one asked for.
fn question_line(chosen: &Chosen, kind: &str, good: &Outcome) -> String {
    let mut line = format!("question: {}", chosen.question.text(kind, good));
    if let Some(note) = &chosen.note {
        line.push_str(&format!(" ({note})"));
    }
    line
}

/// The version bisect over the Debian kernels between `good` and `bad`.
/// `asked`: the question, or `None` to choose it from the ends.
pub async fn versions(
    options: RunOptions,
    good: &str,
    bad: &str,
    console_match: &[String],
    asked: Option<Question>,
) -> u8 {
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
    let expectations = match has_expectations(&options) {
        Ok(e) => e,
        Err(code) => return code,
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
    // every probe once: the ends choose the question, the search reuses them
    let mut probed: HashMap<usize, Probe<Outcome>> = HashMap::new();
    let started = Instant::now();
    let mut probe = |i: usize| -> Probe<Outcome> {
        if let Some(p) = probed.get(&i) {
            return p.clone();
        }
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
        let p = match got {
            Ok(o) => {
                let report = match probed.get(&0) {
                    None => "the reference report",
                    Some(Probe::Report(r)) if r.body == o.body => "report same as the reference",
                    Some(_) => "report differs",
                };
                ui.line(&format!(
                    "  {:<18} checks {}, {report} ({secs:.0} s)",
                    name(i),
                    o.verdict()
                ));
                Probe::Report(o)
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
        };
        probed.insert(i, p.clone());
        p
    };
    let ends = (probe(0), probe(items.len() - 1));
    let chosen = match &ends {
        (Probe::Report(g), Probe::Report(b)) => bisect::choose(asked, expectations, g, b),
        // first_change says which end cannot be tested
        _ => Chosen {
            question: asked.unwrap_or(Question::Report),
            note: None,
        },
    };
    let question = chosen.question;
    let found = first_change_by(items.len(), &mut probe, |a, b| question.same(a, b));
    ui.finish();
    if let Some(code) = aborted {
        return code;
    }
    let total = started.elapsed().as_secs_f64();
    let outcome_of = |i: usize| match probed.get(&i) {
        Some(Probe::Report(o)) => Some(o.clone()),
        _ => None,
    };
    let Some(good_outcome) = outcome_of(0) else {
        if let Err(e) = found {
            eprintln!("error: {e}");
        }
        return EXIT_SKIP;
    };
    println!("{}", question_line(&chosen, "kernel", &good_outcome));
    match found {
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SKIP
        }
        Ok(Found::NoChange) => {
            let same = match question {
                Question::Verdict => format!("the checks {} on both", good_outcome.verdict()),
                Question::Report => "the report is the same on both".into(),
            };
            println!(
                "answer: none: {same} of {} and {}: nothing to bisect ({total:.0} s)",
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
                "answer: unknown: the change lies after {} and by {}; {} could not be tested ({total:.0} s)",
                name(last_good),
                name(first_bad),
                skipped.join(", ")
            );
            EXIT_SKIP
        }
        Ok(Found::FirstChange { index, after, .. }) => {
            let before =
                outcome_of(index - 1).expect("the search probed the item before the change");
            let gap = bisect::version_gap(&items[index - 1], &items[index]);
            let lines = bisect::describe(
                question,
                "kernel",
                &good_outcome,
                (&name(index - 1), &before),
                (&name(index), &after),
                &gap,
            );
            for line in &lines[1..] {
                println!("{line}");
            }
            println!("({} kernels probed, {total:.0} s)", probed.len());
            println!();
            let title = |i: usize, o: &Outcome| format!("{} (checks {})", name(i), o.verdict());
            print!(
                "{}",
                side_by_side(
                    &title(index - 1, &before),
                    &before.body,
                    &title(index, &after),
                    &after.body
                )
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

/// Where the per-bisect files live: the reference outcome (the good
/// end's) and one per commit the step ran on, each as `NAME.txt` (the
/// body) and `NAME.verdict` (`pass` or `fail`).
const REFERENCE: &str = "reference";

fn write_outcome(state: &Path, name: &str, o: &Outcome) -> Result<(), String> {
    for (ext, text) in [("txt", o.body.as_str()), ("verdict", o.verdict())] {
        let p = state.join(format!("{name}.{ext}"));
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

fn read_outcome(state: &Path, name: &str) -> Option<Outcome> {
    let body = std::fs::read_to_string(state.join(format!("{name}.txt"))).ok()?;
    let passed = match std::fs::read_to_string(state.join(format!("{name}.verdict")))
        .ok()?
        .trim()
    {
        "pass" => true,
        "fail" => false,
        _ => return None,
    };
    Some(Outcome { passed, body })
}

/// The `--question` value that names `q` (for the step's command line).
fn question_arg(q: Question) -> &'static str {
    match q {
        Question::Verdict => "verdict",
        Question::Report => "report",
    }
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
    asked: Option<Question>,
) -> u8 {
    let expectations = match has_expectations(&options) {
        Ok(e) => e,
        Err(code) => return code,
    };
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
    let chosen = bisect::choose(asked, expectations, &ends[0], &ends[1]);
    let question = chosen.question;
    println!("{}", question_line(&chosen, "commit", &ends[0]));
    if question.same(&ends[0], &ends[1]) {
        let same = match question {
            Question::Verdict => format!("the checks {} at both", ends[0].verdict()),
            Question::Report => "the report is the same at both".into(),
        };
        println!("answer: none: {same} of {good} and {bad}: nothing to bisect");
        return EXIT_FAILED;
    }
    if let Err(e) = write_outcome(state.path(), REFERENCE, &ends[0]).and(write_outcome(
        state.path(),
        &bad_sha,
        &ends[1],
    )) {
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
        "--question".into(),
        question_arg(question).into(),
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
                let checks = read_outcome(state.path(), sha)
                    .map(|o| format!("checks {}", o.verdict()))
                    .unwrap_or_default();
                println!("  {} {v:<8} {checks:<11} {subject}", &sha[..12]);
            }
            match r.outcome {
                GitBisectOutcome::FirstBad { commit, subject } => {
                    let after = read_outcome(state.path(), &commit).unwrap_or_else(|| Outcome {
                        passed: !ends[0].passed,
                        body: String::new(),
                    });
                    let name = format!("{} {subject}", &commit[..12]);
                    let lines = bisect::describe(
                        question,
                        "commit",
                        &ends[0],
                        (good, &ends[0]),
                        (&name, &after),
                        &bisect::Gap::Adjacent,
                    );
                    for line in &lines[1..2] {
                        println!("{line}");
                    }
                    println!("the change is in {commit} {subject} (its parent gives the good end's answer; {total:.0} s in all)");
                    println!();
                    let title = |n: &str, o: &Outcome| format!("{n} (checks {})", o.verdict());
                    print!(
                        "{}",
                        side_by_side(
                            &title(&format!("{good} (good end)"), &ends[0]),
                            &ends[0].body,
                            &title(&commit[..12], &after),
                            &after.body
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
pub async fn step(
    options: RunOptions,
    state: &Path,
    console_match: &[String],
    question: Question,
) -> u8 {
    let images::KernelSpec::Git { tree, .. } = &options.kernel else {
        eprintln!("error: bisect-step needs a git: kernel");
        return 128;
    };
    let Some(head) = git_line(tree, &["rev-parse", "HEAD"]) else {
        eprintln!("error: {}: no HEAD", tree.display());
        return 128;
    };
    let subject = git_line(tree, &["log", "-1", "--format=%s", "HEAD"]).unwrap_or_default();
    let Some(reference) = read_outcome(state, REFERENCE) else {
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
            let o = outcome(&report, &console, console_match);
            let _ = write_outcome(state, &head, &o);
            if question.same(&o, &reference) {
                (0, format!("checks {}, same as the good end", o.verdict()))
            } else {
                (
                    1,
                    format!("checks {}, differs from the good end", o.verdict()),
                )
            }
        }
        Err(EXIT_SKIP) => (125, "skipped: no build or no boot".to_string()),
        Err(_) => (128, "aborting: bad input".to_string()),
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
