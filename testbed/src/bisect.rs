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
    mut probe: impl FnMut(usize) -> Probe<R>,
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
    if last == reference {
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
            Probe::Report(r) if r == reference => good = index,
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
