//! The growth of registration time with N: medians of the repeats, the
//! log-log least-squares exponent over the upper part of the series, and
//! the verdict. Pure functions, so that a verdict can be shown to come out
//! either way on synthetic curves.

use std::collections::BTreeMap;

/// Exponent at or above which the growth is called quadratic: a list walk
/// per registration, T(N) = aN + bN², has a local exponent 1 + bN/(a + bN),
/// which reaches 1.7 once the walk costs more than twice the fixed part.
pub const QUADRATIC_AT_LEAST: f64 = 1.7;
/// Exponent at or below which the growth is called linear (an xarray
/// insert is O(log n); over a factor 8 of N that bends the slope by well
/// under 0.3).
pub const LINEAR_AT_MOST: f64 = 1.3;
/// The upper part of the series: points with N at least the largest N
/// divided by this (the last four points of a doubling series).
pub const UPPER_PART_DIVISOR: u32 = 8;
/// Fewer points than this in the upper part give no verdict.
pub const MIN_FIT_POINTS: usize = 3;

/// One N of the curve: medians over its repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    pub n: u32,
    pub vms: u32,
    pub repeats: usize,
    /// Median of the repeats' total registration time, chunked (robust to
    /// spikes, `wire::ScalingPoint::chunked_total_ns`): what is fitted.
    pub total_ns: f64,
    /// Median of the repeats' plain sum of the calls' times.
    pub raw_total_ns: f64,
    /// Median of the repeats' median per-call time.
    pub median_call_ns: f64,
    /// Median of the repeats' median over the last tenth of the calls.
    pub last_tenth_ns: f64,
    /// Median of the repeats' teardown time.
    pub teardown_ns: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Groups the agent's points by N, median of each measure over the repeats.
pub fn curve(points: &[wire::ScalingPoint]) -> Vec<CurvePoint> {
    let mut by_n: BTreeMap<u32, Vec<&wire::ScalingPoint>> = BTreeMap::new();
    for p in points {
        by_n.entry(p.n).or_default().push(p);
    }
    by_n.into_iter()
        .map(|(n, ps)| {
            let m = |f: &dyn Fn(&wire::ScalingPoint) -> u64| {
                median(&mut ps.iter().map(|p| f(p) as f64).collect::<Vec<_>>())
            };
            CurvePoint {
                n,
                vms: ps[0].vms,
                repeats: ps.len(),
                total_ns: m(&|p| p.chunked_total_ns),
                raw_total_ns: m(&|p| p.total_ns),
                median_call_ns: m(&|p| p.median_ns),
                last_tenth_ns: m(&|p| p.last_tenth_median_ns),
                teardown_ns: m(&|p| p.teardown_ns),
            }
        })
        .collect()
}

/// Least-squares slope of ln(y) over ln(x), and R².
pub fn loglog_slope(xy: &[(f64, f64)]) -> Option<(f64, f64)> {
    let pts: Vec<(f64, f64)> = xy
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    Some((slope, r2))
}

/// The growth of one curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Growth {
    /// Exponent of total registration time over N.
    pub exponent: f64,
    pub r2: f64,
    /// The N range fitted.
    pub from_n: u32,
    pub to_n: u32,
    pub points: usize,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Quadratic,
    Linear,
    /// Between the two thresholds.
    SuperLinear,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Quadratic => "quadratic",
            Verdict::Linear => "linear",
            Verdict::SuperLinear => "super-linear (between the thresholds)",
        }
    }

    pub fn of(exponent: f64) -> Verdict {
        if exponent >= QUADRATIC_AT_LEAST {
            Verdict::Quadratic
        } else if exponent <= LINEAR_AT_MOST {
            Verdict::Linear
        } else {
            Verdict::SuperLinear
        }
    }
}

/// The thresholds, said once under the curves.
pub fn thresholds() -> String {
    format!(
        "verdict on the exponent k of total registration time ~ N^k, fitted (log-log least squares) over \
         N >= largest/{UPPER_PART_DIVISOR}: quadratic if k >= {QUADRATIC_AT_LEAST}, linear if k <= {LINEAR_AT_MOST}"
    )
}

/// Fits the upper part of `curve`; `None` with fewer than
/// [`MIN_FIT_POINTS`] points there.
pub fn growth(curve: &[CurvePoint]) -> Option<Growth> {
    let top = curve.iter().map(|p| p.n).max()?;
    let upper: Vec<&CurvePoint> = curve
        .iter()
        .filter(|p| p.n.saturating_mul(UPPER_PART_DIVISOR) >= top)
        .collect();
    if upper.len() < MIN_FIT_POINTS {
        return None;
    }
    let xy: Vec<(f64, f64)> = upper.iter().map(|p| (f64::from(p.n), p.total_ns)).collect();
    let (exponent, r2) = loglog_slope(&xy)?;
    Some(Growth {
        exponent,
        r2,
        from_n: upper.first()?.n,
        to_n: top,
        points: upper.len(),
        verdict: Verdict::of(exponent),
    })
}

/// Local exponents between consecutive points (the first point has none).
pub fn local_slopes(curve: &[CurvePoint]) -> Vec<Option<f64>> {
    let mut out = vec![None];
    for w in curve.windows(2) {
        out.push(
            loglog_slope(&[
                (f64::from(w[0].n), w[0].total_ns),
                (f64::from(w[1].n), w[1].total_ns),
            ])
            .map(|s| s.0),
        );
    }
    out.truncate(curve.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synthetic(series: &[u32], t: impl Fn(f64) -> f64) -> Vec<CurvePoint> {
        series
            .iter()
            .map(|&n| CurvePoint {
                n,
                vms: 1,
                repeats: 1,
                total_ns: t(f64::from(n)),
                raw_total_ns: t(f64::from(n)),
                median_call_ns: 0.0,
                last_tenth_ns: 0.0,
                teardown_ns: 0.0,
            })
            .collect()
    }

    fn doubling(to: u32) -> Vec<u32> {
        (6..=to.trailing_zeros()).map(|s| 1u32 << s).collect()
    }

    #[test]
    fn a_list_walk_is_quadratic() {
        // 20 us of fixed work per call, 30 ns per list entry walked
        let c = synthetic(&doubling(16384), |n| 20_000.0 * n + 30.0 * n * n / 2.0);
        let g = growth(&c).unwrap();
        assert_eq!(g.verdict, Verdict::Quadratic, "{g:?}");
        assert!(g.exponent > 1.7 && g.exponent < 2.0, "{g:?}");
        assert_eq!((g.from_n, g.to_n, g.points), (2048, 16384, 4));
        // and the local exponent tends to 2
        let s = local_slopes(&c);
        assert!(s[0].is_none());
        let s: Vec<f64> = s.into_iter().flatten().collect();
        assert!(s.windows(2).all(|w| w[1] > w[0]), "{s:?}");
    }

    #[test]
    fn an_xarray_is_linear() {
        // fixed work plus a log n walk down the tree
        let c = synthetic(&doubling(16384), |n| n * (20_000.0 + 50.0 * n.log2()));
        let g = growth(&c).unwrap();
        assert_eq!(g.verdict, Verdict::Linear, "{g:?}");
        assert!((g.exponent - 1.0).abs() < 0.05, "{g:?}");
    }

    #[test]
    fn a_short_list_is_not_yet_quadratic() {
        // the walk is still small next to the fixed work at these N
        let c = synthetic(&doubling(1024), |n| 20_000.0 * n + 30.0 * n * n / 2.0);
        let g = growth(&c).unwrap();
        assert_eq!(g.verdict, Verdict::Linear, "{g:?}");
        let c = synthetic(&doubling(4096), |n| 20_000.0 * n + 30.0 * n * n / 2.0);
        assert_eq!(growth(&c).unwrap().verdict, Verdict::SuperLinear);
    }

    #[test]
    fn too_few_points_give_no_verdict() {
        assert!(growth(&synthetic(&[64, 128], |n| n)).is_none());
        // three points, but only two in the upper part
        assert!(growth(&synthetic(&[64, 2048, 16384], |n| n)).is_none());
        assert!(growth(&[]).is_none());
    }

    #[test]
    fn medians_over_repeats() {
        let p = |n, repeat, total_ns| wire::ScalingPoint {
            n,
            vms: 1,
            repeat,
            total_ns: total_ns * 2,
            chunked_total_ns: total_ns,
            median_ns: total_ns / u64::from(n),
            last_tenth_median_ns: 0,
            max_ns: 0,
            teardown_ns: 0,
        };
        let c = curve(&[
            p(128, 0, 900),
            p(64, 0, 100),
            p(64, 1, 5000),
            p(64, 2, 120),
            p(128, 1, 1000),
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].n, c[0].repeats, c[0].total_ns), (64, 3, 120.0));
        assert_eq!((c[1].n, c[1].repeats, c[1].total_ns), (128, 2, 950.0));
    }

    #[test]
    fn slope_of_a_power_law() {
        let (s, r2) = loglog_slope(&[(1.0, 3.0), (2.0, 12.0), (4.0, 48.0)]).unwrap();
        assert!((s - 2.0).abs() < 1e-9 && (r2 - 1.0).abs() < 1e-9);
        assert!(loglog_slope(&[(1.0, 1.0)]).is_none());
    }
}
