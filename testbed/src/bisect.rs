//! Finding the first point in an ordered history (kernel versions, commits)
//! where a scenario's report stops being what it was at the start.
//!
//! The search is `git bisect` semantics over a list: the first item is
//! "good" (its report is the reference), the last is "bad" (its report
//! differs), and we look for the first item whose report differs from the
//! reference. A probe may also say "skip" (the kernel could not be fetched
//! or booted, exit 125): skipped items are stepped around, and if the
//! boundary cannot be pinned down exactly the result says between which
//! two items it lies.

use std::fmt::Debug;

/// What probing one item gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe<R> {
    /// The report (or any comparable outcome) for this item.
    Report(R),
    /// This item cannot be tested; why.
    Skip(String),
}

/// Where the change is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<R> {
    /// `items[index]` is the first whose report differs from the reference;
    /// `items[index - 1]` still matches it.
    FirstChange { index: usize, before: R, after: R },
    /// The change lies after `last_good` and at or before `first_bad`, but
    /// the items in between were all skipped.
    Between {
        last_good: usize,
        first_bad: usize,
        skipped: Vec<usize>,
    },
    /// The last item's report equals the first's: nothing to bisect.
    NoChange,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BisectError {
    #[error("nothing to bisect: need at least two items, got {0}")]
    TooFew(usize),
    #[error("the first item cannot be tested ({0}): it must give the reference report")]
    GoodSkipped(String),
    #[error("the last item cannot be tested ({0}): it must show the change")]
    BadSkipped(String),
}

/// Bisects `len` items with `probe(index)`. Probes each item at most once;
/// the order of probes is the usual halving, so `len` items take about
/// log2(len) + 2 probes when nothing is skipped.
pub fn first_change<R: Clone + PartialEq + Debug>(
    len: usize,
    probe: impl FnMut(usize) -> Probe<R>,
) -> Result<Found<R>, BisectError> {
    first_change_by(len, probe, |a, b| a == b)
}

/// [`first_change`] with `same` deciding whether a report matches the
/// reference (e.g. only the verdicts of two reports are compared).
pub fn first_change_by<R: Clone + Debug>(
    len: usize,
    mut probe: impl FnMut(usize) -> Probe<R>,
    same: impl Fn(&R, &R) -> bool,
) -> Result<Found<R>, BisectError> {
    if len < 2 {
        return Err(BisectError::TooFew(len));
    }
    let reference = match probe(0) {
        Probe::Report(r) => r,
        Probe::Skip(why) => return Err(BisectError::GoodSkipped(why)),
    };
    let last = match probe(len - 1) {
        Probe::Report(r) => r,
        Probe::Skip(why) => return Err(BisectError::BadSkipped(why)),
    };
    if same(&last, &reference) {
        return Ok(Found::NoChange);
    }
    // Invariant: items[good] matches the reference, items[bad] differs.
    let (mut good, mut bad) = (0, len - 1);
    let mut bad_report = last;
    let mut skipped: Vec<usize> = Vec::new();
    while bad - good > 1 {
        // The untested items strictly between good and bad, nearest the middle first.
        let mid = (good + bad) / 2;
        let mut candidates: Vec<usize> = (good + 1..bad).filter(|i| !skipped.contains(i)).collect();
        if candidates.is_empty() {
            break;
        }
        candidates.sort_by_key(|&i| (i.abs_diff(mid), i));
        let index = candidates[0];
        match probe(index) {
            Probe::Report(r) if same(&r, &reference) => good = index,
            Probe::Report(r) => {
                bad = index;
                bad_report = r;
            }
            Probe::Skip(_) => skipped.push(index),
        }
    }
    if bad - good == 1 {
        return Ok(Found::FirstChange {
            index: bad,
            before: reference,
            after: bad_report,
        });
    }
    let mut between: Vec<usize> = skipped
        .into_iter()
        .filter(|&i| good < i && i < bad)
        .collect();
    between.sort_unstable();
    Ok(Found::Between {
        last_good: good,
        first_bad: bad,
        skipped: between,
    })
}

/// What a bisect asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    /// The first point at which the scenario's checks pass, when they fail
    /// at the good end, or fail, when they pass there: git bisect's
    /// good/bad, and what someone looking for a fix or a regression asks.
    Verdict,
    /// The first point at which the report body differs from the good
    /// end's, whatever the checks say.
    Report,
}

/// What one probe gave: whether the scenario's checks passed (and it ran
/// to its end), and what is compared for [`Question::Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub passed: bool,
    pub body: String,
}

impl Outcome {
    pub fn verdict(&self) -> &'static str {
        if self.passed {
            "pass"
        } else {
            "fail"
        }
    }
}

impl Question {
    /// Whether `a` and `b` give the same answer to this question.
    pub fn same(self, a: &Outcome, b: &Outcome) -> bool {
        match self {
            Question::Verdict => a.passed == b.passed,
            Question::Report => a.body == b.body,
        }
    }

    /// The question in words, e.g. `first kernel on which the checks pass`.
    pub fn text(self, kind: &str, good: &Outcome) -> String {
        match self {
            Question::Verdict if good.passed => format!("first {kind} on which the checks fail"),
            Question::Verdict => format!("first {kind} on which the checks pass"),
            Question::Report => format!("first {kind} whose report differs"),
        }
    }
}

/// The question a bisect answers, and why when it is not the one asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub question: Question,
    pub note: Option<String>,
}

/// Chooses the question from what the two ends gave: `asked` when given;
/// otherwise the verdict when the scenario has expectations and the checks
/// differ between the ends, else the report (with a note saying why).
pub fn choose(
    asked: Option<Question>,
    has_expectations: bool,
    good: &Outcome,
    bad: &Outcome,
) -> Chosen {
    if let Some(question) = asked {
        return Chosen {
            question,
            note: None,
        };
    }
    if !has_expectations {
        return Chosen {
            question: Question::Report,
            note: Some("the scenario has no expectations".into()),
        };
    }
    if good.passed != bad.passed {
        return Chosen {
            question: Question::Verdict,
            note: None,
        };
    }
    Chosen {
        question: Question::Report,
        note: Some(format!("the checks {} at both ends", good.verdict())),
    }
}

/// Whether anything lies between the two points of the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// The second point directly follows the first (the next stable
    /// release, the next commit): the change is at the second.
    Adjacent,
    /// Upstream has releases between them that were not tested; why.
    Untested(String),
}

/// The gap between two Debian kernels: adjacent only for consecutive
/// stable releases of one line (6.18.9, 6.18.10).
pub fn version_gap(a: &images::KernelVersion, b: &images::KernelVersion) -> Gap {
    if (a.major, a.minor) == (b.major, b.minor) {
        if b.patch == a.patch + 1 {
            return Gap::Adjacent;
        }
        let missing = if b.patch == a.patch + 2 {
            format!("upstream {}.{}.{}", a.major, a.minor, a.patch + 1)
        } else {
            format!(
                "upstream {}.{}.{} to {}.{}.{}",
                a.major,
                a.minor,
                a.patch + 1,
                a.major,
                a.minor,
                b.patch - 1
            )
        };
        return Gap::Untested(format!(
            "no Debian kernel lies between them ({missing} not packaged)"
        ));
    }
    Gap::Untested("no Debian kernel lies between them".into())
}

/// The lines that answer `question` for a boundary found between `before`
/// (same answer as the good end) and `after` (the other answer), each a
/// (name, outcome) pair; `kind` is `kernel` or `commit`.
pub fn describe(
    question: Question,
    kind: &str,
    good: &Outcome,
    before: (&str, &Outcome),
    after: (&str, &Outcome),
    gap: &Gap,
) -> Vec<String> {
    let answer = match question {
        Question::Verdict => format!("the checks first {} on {}", after.1.verdict(), after.0),
        Question::Report => format!("first {kind} whose report differs: {}", after.0),
    };
    let before_says = match question {
        Question::Verdict => format!("checks {}", before.1.verdict()),
        Question::Report => "the good end's report".to_string(),
    };
    let where_ = match gap {
        Gap::Adjacent => format!(
            "the change is in {} ({}, just before it, gives {before_says})",
            after.0, before.0
        ),
        Gap::Untested(why) => {
            format!(
                "the change lies between {} ({before_says}) and {}; {why}",
                before.0, after.0
            )
        }
    };
    vec![
        format!("question: {}", question.text(kind, good)),
        format!("answer: {answer}"),
        where_,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports: "old" before `change`, "new" from it on; `skip` items skip.
    fn history(
        len: usize,
        change: usize,
        skip: &[usize],
    ) -> (Vec<usize>, Result<Found<&'static str>, BisectError>) {
        let mut probed = Vec::new();
        let found = first_change(len, |i| {
            probed.push(i);
            if skip.contains(&i) {
                Probe::Skip("no kernel".into())
            } else if i < change {
                Probe::Report("old")
            } else {
                Probe::Report("new")
            }
        });
        (probed, found)
    }

    #[test]
    fn finds_the_first_change_at_every_position() {
        for len in 2..40 {
            for change in 1..len {
                let (probed, found) = history(len, change, &[]);
                assert_eq!(
                    found,
                    Ok(Found::FirstChange {
                        index: change,
                        before: "old",
                        after: "new"
                    }),
                    "len {len} change {change}"
                );
                let mut unique = probed.clone();
                unique.sort_unstable();
                unique.dedup();
                assert_eq!(
                    unique.len(),
                    probed.len(),
                    "an item was probed twice: {probed:?}"
                );
                let bound = (len as f64).log2().ceil() as usize + 2;
                assert!(
                    probed.len() <= bound,
                    "len {len}: {} probes > {bound}",
                    probed.len()
                );
            }
        }
    }

    #[test]
    fn steps_around_skipped_items() {
        // A skip away from the boundary does not matter.
        let (_, found) = history(10, 6, &[3]);
        assert_eq!(
            found,
            Ok(Found::FirstChange {
                index: 6,
                before: "old",
                after: "new"
            })
        );
        // Right before it, it does: 4 is old, 5 unknown, 6 new.
        let (_, found) = history(10, 6, &[5]);
        assert_eq!(
            found,
            Ok(Found::Between {
                last_good: 4,
                first_bad: 6,
                skipped: vec![5]
            })
        );
        let (_, found) = history(10, 6, &[4, 6]);
        // 5 is old, 6 is skipped, 7 is new: the change is at 6 or 7.
        assert_eq!(
            found,
            Ok(Found::Between {
                last_good: 5,
                first_bad: 7,
                skipped: vec![6]
            })
        );
    }

    #[test]
    fn no_change_and_bad_ends() {
        assert_eq!(first_change(5, |_| Probe::Report(1)), Ok(Found::NoChange));
        assert_eq!(
            first_change::<u8>(1, |_| Probe::Report(1)),
            Err(BisectError::TooFew(1))
        );
        assert_eq!(
            first_change::<u8>(5, |i| if i == 0 {
                Probe::Skip("down".into())
            } else {
                Probe::Report(1)
            }),
            Err(BisectError::GoodSkipped("down".into()))
        );
        assert_eq!(
            first_change::<u8>(5, |i| if i == 4 {
                Probe::Skip("down".into())
            } else {
                Probe::Report(1)
            }),
            Err(BisectError::BadSkipped("down".into()))
        );
    }

    #[test]
    fn a_change_that_comes_back_is_still_a_first_change() {
        // old old new old new: bisect finds *a* boundary with old before it;
        // with halving it lands on index 2 here.
        let reports = ["old", "old", "new", "old", "new"];
        let found = first_change(reports.len(), |i| Probe::Report(reports[i])).unwrap();
        match found {
            Found::FirstChange { index, .. } => {
                assert_eq!(reports[index - 1], "old");
                assert_eq!(reports[index], "new");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod question_tests {
    use super::*;

    fn outcome(passed: bool, body: &str) -> Outcome {
        Outcome {
            passed,
            body: body.into(),
        }
    }

    fn v(s: &str) -> images::KernelVersion {
        images::KernelVersion::parse(s).unwrap()
    }

    #[test]
    fn the_verdict_is_the_default_when_the_checks_differ_at_the_ends() {
        let (fail, pass) = (outcome(false, "a"), outcome(true, "b"));
        assert_eq!(
            choose(None, true, &fail, &pass),
            Chosen {
                question: Question::Verdict,
                note: None
            }
        );
        assert_eq!(choose(None, true, &pass, &fail).question, Question::Verdict);
        // the same verdict at both ends: only the report can tell them apart
        let chosen = choose(None, true, &fail, &outcome(false, "c"));
        assert_eq!(chosen.question, Question::Report);
        assert_eq!(chosen.note.as_deref(), Some("the checks fail at both ends"));
        let chosen = choose(None, false, &fail, &pass);
        assert_eq!(chosen.question, Question::Report);
        assert_eq!(
            chosen.note.as_deref(),
            Some("the scenario has no expectations")
        );
        // asked for: answered as asked
        assert_eq!(
            choose(Some(Question::Report), true, &fail, &pass).question,
            Question::Report
        );
        assert_eq!(
            choose(Some(Question::Verdict), false, &fail, &outcome(false, "c")).question,
            Question::Verdict
        );
    }

    /// CVE-2026-23198 on Debian's 6.18 kernels: the bug fails differently
    /// from run to run (a list_add BUG, a WARN), so the report differs
    /// between two affected kernels, while the verdict finds the fix.
    #[test]
    fn the_verdict_steps_over_reports_that_differ_while_the_checks_still_fail() {
        let kernels = ["6.18.5", "6.18.9", "6.18.12", "6.18.15"];
        let outcomes = [
            outcome(false, "list_add corruption"),
            outcome(false, "WARN in svm_vcpu_free"),
            outcome(true, "lossless"),
            outcome(true, "lossless"),
        ];
        let probe = |i: usize| Probe::Report(outcomes[i].clone());
        let q = Question::Verdict;
        let found = first_change_by(kernels.len(), probe, |a, b| q.same(a, b)).unwrap();
        let Found::FirstChange {
            index,
            before,
            after,
        } = found
        else {
            panic!("{found:?}")
        };
        assert_eq!(kernels[index], "6.18.12");
        // `before` is the reference (the good end); the boundary's left side is index - 1
        assert!(!before.passed && after.passed);
        let lines = describe(
            q,
            "kernel",
            &outcomes[0],
            ("debian:6.18.9", &outcomes[index - 1]),
            ("debian:6.18.12", &after),
            &version_gap(&v(kernels[index - 1]), &v(kernels[index])),
        );
        assert_eq!(
            lines,
            [
                "question: first kernel on which the checks pass",
                "answer: the checks first pass on debian:6.18.12",
                "the change lies between debian:6.18.9 (checks fail) and debian:6.18.12; \
                 no Debian kernel lies between them (upstream 6.18.10 to 6.18.11 not packaged)",
            ]
        );
        // the report question stops at the first affected kernel whose failure looks different
        let found =
            first_change(kernels.len(), |i| Probe::Report(outcomes[i].body.clone())).unwrap();
        assert!(
            matches!(found, Found::FirstChange { index: 1, .. }),
            "{found:?}"
        );
    }

    #[test]
    fn a_regression_is_the_first_kernel_on_which_the_checks_fail() {
        let good = outcome(true, "x");
        let lines = describe(
            Question::Verdict,
            "kernel",
            &good,
            ("debian:6.18.9", &good),
            ("debian:6.18.10", &outcome(false, "y")),
            &version_gap(&v("6.18.9"), &v("6.18.10")),
        );
        assert_eq!(lines[0], "question: first kernel on which the checks fail");
        assert_eq!(lines[1], "answer: the checks first fail on debian:6.18.10");
        assert_eq!(
            lines[2],
            "the change is in debian:6.18.10 (debian:6.18.9, just before it, gives checks pass)"
        );
    }

    #[test]
    fn kernels_of_different_lines_are_never_adjacent() {
        assert_eq!(version_gap(&v("6.18.9"), &v("6.18.10")), Gap::Adjacent);
        assert_eq!(
            version_gap(&v("6.18.9"), &v("6.18.11")),
            Gap::Untested(
                "no Debian kernel lies between them (upstream 6.18.10 not packaged)".into()
            )
        );
        assert_eq!(
            version_gap(&v("6.1.176"), &v("6.12.43")),
            Gap::Untested("no Debian kernel lies between them".into())
        );
        let report = describe(
            Question::Report,
            "kernel",
            &outcome(false, "a"),
            ("debian:6.1.176", &outcome(false, "a")),
            ("debian:6.12.43", &outcome(true, "b")),
            &version_gap(&v("6.1.176"), &v("6.12.43")),
        );
        assert_eq!(report[0], "question: first kernel whose report differs");
        assert_eq!(
            report[1],
            "answer: first kernel whose report differs: debian:6.12.43"
        );
        assert_eq!(
            report[2],
            "the change lies between debian:6.1.176 (the good end's report) and debian:6.12.43; \
             no Debian kernel lies between them"
        );
    }
}
