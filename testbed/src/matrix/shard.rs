//! Spreading a matrix over CI runners: `--shard I/N` runs the I-th of N
//! parts, `--emit github` prints the GitHub Actions matrix of those parts.
//!
//! The unit of a shard is a (kernel, variant) pair, never a single cell:
//! the scenarios of a pair share one L1 boot, and splitting them would boot
//! the same kernel on the same variant on two runners. Pairs are cut into
//! contiguous runs in kernel-major order, so a shard fetches as few kernels
//! as it can; shard sizes differ by at most one pair.

use std::fmt;
use std::str::FromStr;

/// One of N parts, 1-based as people count: `1/4` .. `4/4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("bad shard {s:?}: expected I/N with 1 <= I <= N, e.g. 1/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The positions of `len` units that belong to this shard.
    pub fn range(&self, len: usize) -> std::ops::Range<usize> {
        let start = len * (self.index - 1) / self.count;
        let end = len * self.index / self.count;
        start..end
    }
}

/// The GitHub Actions matrix of `count` shards over `units` (e.g.
/// `debian:7 intel-ir`), one line for `$GITHUB_OUTPUT`:
/// `matrix={"include":[{"shard":"1/2","cells":"..."}, ...]}`. Shards that
/// would be empty (more shards than units) are left out.
pub fn github_matrix(units: &[String], count: usize) -> String {
    let include: Vec<serde_json::Value> = (1..=count)
        .map(|index| Shard { index, count })
        .filter(|s| !s.range(units.len()).is_empty())
        .map(|s| serde_json::json!({ "shard": s.to_string(), "cells": units[s.range(units.len())].join(", ") }))
        .collect();
    format!("matrix={}", serde_json::json!({ "include": include }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("2/5".parse::<Shard>(), Ok(Shard { index: 2, count: 5 }));
        for bad in ["0/3", "4/3", "1/0", "1", "a/b", "-1/3", "1/3/4", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert_eq!(
                e,
                format!("bad shard {bad:?}: expected I/N with 1 <= I <= N, e.g. 1/4")
            );
        }
    }

    #[test]
    fn shards_cover_every_unit_once_and_are_balanced() {
        for len in 0..30 {
            for count in 1..9 {
                let ranges: Vec<_> = (1..=count)
                    .map(|index| Shard { index, count }.range(len))
                    .collect();
                let mut covered = Vec::new();
                for r in &ranges {
                    covered.extend(r.clone());
                }
                assert_eq!(
                    covered,
                    (0..len).collect::<Vec<_>>(),
                    "len {len} count {count}"
                );
                let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "len {len} count {count}: {sizes:?}");
            }
        }
    }

    #[test]
    fn kernel_major_units_stay_together() {
        // 3 kernels x 4 variants over 3 shards: one kernel per shard.
        let s = |index| Shard { index, count: 3 }.range(12);
        assert_eq!((s(1), s(2), s(3)), (0..4, 4..8, 8..12));
    }

    #[test]
    fn github_matrix_line() {
        let units: Vec<String> = [
            "debian:6.12 intel-ir",
            "debian:6.12 amd-ir",
            "debian:7 intel-ir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        insta::assert_snapshot!(github_matrix(&units, 2), @r#"matrix={"include":[{"cells":"debian:6.12 intel-ir","shard":"1/2"},{"cells":"debian:6.12 amd-ir, debian:7 intel-ir","shard":"2/2"}]}"#);
        // More shards than units: no empty jobs.
        let line = github_matrix(&units[..1], 3);
        assert_eq!(
            line,
            r#"matrix={"include":[{"cells":"debian:6.12 intel-ir","shard":"3/3"}]}"#
        );
    }
}
