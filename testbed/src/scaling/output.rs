//! `testbed scaling`'s curves as text and JSON.

use super::fit::{self, CurvePoint, Growth};
use super::KernelRun;

fn yes(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "on",
        Some(false) => "off",
        None => "?",
    }
}

/// Whether KVM registered consumers, and the L1 facts that decide it.
pub fn consumers_line(run: &KernelRun) -> String {
    let facts = match &run.platform {
        Some(p) => format!(
            "APICv {}, enable_device_posted_irqs {}, IOMMU posting {}",
            yes(p.apicv),
            yes(p.device_posted_irqs),
            yes(Some(p.irq_posting))
        ),
        None => "L1 facts unknown".into(),
    };
    match run.done.as_ref().map(|d| &d.probe) {
        Some(p) => {
            let mut s = format!(
                "irqbypass consumers registered: {}/{} irqfds in the probe ({} calls, {} connections; {facts})",
                p.registered, p.irqfds, p.register_calls, p.connections
            );
            if let Some(e) = &p.error {
                s.push_str(&format!("; probe: {e}"));
            }
            if p.error.is_none() && p.registered == 0 {
                s.push_str(": this curve times KVM_IRQFD without irqbypass");
            }
            s
        }
        None => format!("irqbypass consumers: not probed ({facts})"),
    }
}

/// One line per kernel when its run ends.
pub fn kernel_summary(run: &KernelRun) -> String {
    let c = fit::curve(&run.points);
    let what = match (&run.failure, fit::growth(&c)) {
        (Some(f), _) => format!("failed: {f}"),
        (None, Some(g)) => fit_line(&g),
        (None, None) => format!("{} points, too few to fit", c.len()),
    };
    format!(
        "{} ({}): {what} [{:.0} s]",
        run.release,
        run.spec,
        run.wall.as_secs_f64()
    )
}

fn fit_line(g: &Growth) -> String {
    format!(
        "fitted exponent k = {:.2} over N = {}..{} ({} points, R² {:.3}): {}",
        g.exponent,
        g.from_n,
        g.to_n,
        g.points,
        g.r2,
        g.verdict.label()
    )
}

fn curve_table(c: &[CurvePoint]) -> String {
    let mut s = format!(
        "  {:>6} {:>5} {:>12} {:>12} {:>15} {:>18} {:>12} {:>7}\n",
        "N",
        "VMs",
        "total ms",
        "raw sum ms",
        "median call us",
        "last-tenth call us",
        "teardown ms",
        "local k"
    );
    for (p, k) in c.iter().zip(fit::local_slopes(c)) {
        s.push_str(&format!(
            "  {:>6} {:>5} {:>12.2} {:>12.2} {:>15.2} {:>18.2} {:>12.2} {:>7}\n",
            p.n,
            p.vms,
            p.total_ns / 1e6,
            p.raw_total_ns / 1e6,
            p.median_call_ns / 1e3,
            p.last_tenth_ns / 1e3,
            p.teardown_ns / 1e6,
            k.map(|k| format!("{k:.2}")).unwrap_or_else(|| "-".into())
        ));
    }
    s
}

/// The whole report: a curve per kernel, its fit, the thresholds.
pub fn report(variant: &str, job: &wire::ScalingJob, runs: &[KernelRun]) -> String {
    let mut s = format!(
        "irqfd registration on {variant}: N irqfds in ceil(N/{}) VMs, an eventfd and an MSI route each, no producer; \
         times from inside L1, median of {} repeat(s); total = sum over chunks of {} calls of chunk median x length \
         (robust to TCG's descheduling spikes), raw sum beside it\n",
        job.per_vm,
        job.repeats,
        wire::CHUNK_CALLS
    );
    for run in runs {
        s.push('\n');
        s.push_str(&format!(
            "kernel {} ({})\n",
            if run.release.is_empty() {
                "?"
            } else {
                &run.release
            },
            run.spec
        ));
        s.push_str(&format!("  {}\n", consumers_line(run)));
        let c = fit::curve(&run.points);
        if !c.is_empty() {
            s.push_str(&curve_table(&c));
        }
        match fit::growth(&c) {
            Some(g) => s.push_str(&format!("  {}; largest N {}\n", fit_line(&g), g.to_n)),
            None => s.push_str(&format!(
                "  no fit: {} point(s), {} needed in the upper part\n",
                c.len(),
                fit::MIN_FIT_POINTS
            )),
        }
        if let Some(f) = &run.failure {
            s.push_str(&format!("  failed: {f}\n"));
        }
        if let Some(d) = &run.done {
            if let Some(e) = &d.error {
                s.push_str(&format!("  the series stopped: {e}\n"));
            }
            for w in &d.kernel_warnings {
                s.push_str(&format!("  kernel warned: {w}\n"));
            }
        }
    }
    s.push('\n');
    s.push_str(&fit::thresholds());
    s.push('\n');
    s
}

pub fn json(variant: &str, job: &wire::ScalingJob, runs: &[KernelRun]) -> serde_json::Value {
    let kernels: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            let c = fit::curve(&r.points);
            let g = fit::growth(&c);
            serde_json::json!({
                "spec": r.spec,
                "release": r.release,
                "platform": r.platform,
                "probe": r.done.as_ref().map(|d| &d.probe),
                "nofile": r.done.as_ref().map(|d| d.nofile),
                "error": r.done.as_ref().and_then(|d| d.error.clone()),
                "kernel_warnings": r.done.as_ref().map(|d| d.kernel_warnings.clone()).unwrap_or_default(),
                "failure": r.failure,
                "wall_seconds": r.wall.as_secs_f64(),
                "points": r.points,
                "curve": c.iter().map(|p| serde_json::json!({
                    "n": p.n, "vms": p.vms, "repeats": p.repeats, "total_ns": p.total_ns, "raw_total_ns": p.raw_total_ns,
                    "median_call_ns": p.median_call_ns, "last_tenth_ns": p.last_tenth_ns, "teardown_ns": p.teardown_ns,
                })).collect::<Vec<_>>(),
                "fit": g.map(|g| serde_json::json!({
                    "exponent": g.exponent, "r2": g.r2, "from_n": g.from_n, "to_n": g.to_n,
                    "points": g.points, "verdict": g.verdict.label(),
                })),
            })
        })
        .collect();
    serde_json::json!({
        "variant": variant,
        "job": job,
        "thresholds": {
            "quadratic_at_least": fit::QUADRATIC_AT_LEAST,
            "linear_at_most": fit::LINEAR_AT_MOST,
            "upper_part_divisor": fit::UPPER_PART_DIVISOR,
        },
        "kernels": kernels,
    })
}
