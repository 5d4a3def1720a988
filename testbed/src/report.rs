//! The normalized report of one scenario run, the checks of its
//! expectations, and its comparison against an insta snapshot.
//!
//! The report body ([`Report::body`]) is what a snapshot holds: deterministic
//! text with scenario names only (no timestamps, addresses, host IRQ numbers
//! or PIDs). The variant, the kernel release, the QEMU version and the
//! platform facts go into the snapshot's `info` metadata, which insta does not
//! compare, so one snapshot holds across kernels until behaviour changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use wire::{BypassEvent, Platform, Step, StepReport, VectorCount};

use crate::runner::IommuCounts;
use crate::scenario::Scenario;
pub use posted_msi::VtdPiCounts;

mod checks;
mod inhibit;
mod l2;
mod l2link;
mod level;
mod posted_msi;
mod route;
mod snapshot;

pub use l2::l2_vector_counts;

pub use snapshot::{compare_snapshot, snapshot_file, workspace_root, SnapshotOutcome};

/// What the report header holds besides the platform; none of it is compared.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Header {
    /// Variant name, e.g. `intel-ir`.
    pub variant: String,
    /// The guest's `uname -r`.
    pub kernel_release: String,
    /// e.g. `QEMU emulator version 10.0.2`.
    pub qemu_version: String,
}

/// The result of checking one expectation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The expectation as written, e.g. `connected vm0 dev0/msi0`.
    pub expectation: String,
    pub passed: bool,
    /// Why it passed or, on failure, what was expected and what was seen.
    pub detail: String,
}

/// Everything known about one scenario run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub scenario: Scenario,
    pub header: Header,
    pub platform: Platform,
    /// The agent's step reports, in step order.
    pub steps: Vec<StepReport>,
    /// The agent's `Done`, when the scenario got that far.
    pub done: Option<wire::Done>,
    /// How the run ended early (agent error, guest panic, timeout), if it did.
    pub failure: Option<String>,
    /// What the IOMMU counted over the scenario, where the variant's IOMMU
    /// posts interrupts (`Err`: its counters could not be read). `None`
    /// means a platform whose IOMMU posts nothing.
    pub iommu: Option<Result<IommuCounts, String>>,
    /// What the intel-iommu counted while posting L1's own MSIs, where the
    /// variant does that (`Err`: not read); `None` elsewhere.
    pub vtd_pi: Option<Result<VtdPiCounts, String>>,
    /// This run is a second try: the first stalled on the stock QEMU's lost
    /// wakeup with this failure. Not part of the body: the second try's
    /// report is the scenario's.
    pub retried_after: Option<String>,
}

impl Report {
    /// The report of a run as the runner recorded it.
    pub fn new(
        scenario: &Scenario,
        header: Header,
        platform: &Platform,
        run: &crate::runner::ScenarioRun,
    ) -> Report {
        Report::from_parts(
            scenario,
            header,
            platform.clone(),
            run.steps.clone(),
            run.done.clone(),
            run.failure.clone(),
        )
        .with_iommu(run.iommu.clone())
        .with_vtd_pi(run.vtd_pi.clone())
        .with_retried_after(run.retried_after.clone())
    }

    /// The same report, marked as a second try after `first`'s stall.
    pub fn with_retried_after(mut self, first: Option<String>) -> Report {
        self.retried_after = first;
        self
    }

    /// The same report with the intel-iommu's posting counts over the scenario.
    pub fn with_vtd_pi(mut self, vtd_pi: Option<Result<VtdPiCounts, String>>) -> Report {
        self.vtd_pi = vtd_pi;
        self
    }

    /// The same report with the IOMMU's counts over the scenario.
    pub fn with_iommu(mut self, iommu: Option<Result<IommuCounts, String>>) -> Report {
        self.iommu = iommu;
        self
    }

    /// The report from its parts: step reports in any order (they are sorted
    /// by index), `done` if the agent sent it, `failure` if the run ended early.
    pub fn from_parts(
        scenario: &Scenario,
        header: Header,
        platform: Platform,
        mut steps: Vec<StepReport>,
        done: Option<wire::Done>,
        failure: Option<String>,
    ) -> Report {
        steps.sort_by_key(|s| s.index);
        for s in &mut steps {
            by_vector(&mut s.bypass);
        }
        let mut done = done;
        if let Some(d) = done.as_mut() {
            by_vector(&mut d.cleanup);
        }
        Report {
            scenario: scenario.clone(),
            header,
            platform,
            steps,
            done,
            failure,
            iommu: None,
            vtd_pi: None,
            retried_after: None,
        }
    }

    /// The agent's report for step `index` (0-based), if it sent one.
    pub fn step_report(&self, index: usize) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.index == index)
    }

    /// The checks of every `[[expect]]`, in file order, then the checks a
    /// scenario carries without asking: `posted-msi` where the variant posts
    /// L1's MSIs (always listed), and `kernel-quiet` when it fails: a
    /// kernel that warned has gone wrong, whatever else the report says. A
    /// passing `kernel-quiet` is not listed, so that it is not in every
    /// snapshot.
    pub fn checks(&self) -> Vec<CheckResult> {
        let mut checks: Vec<CheckResult> = self
            .scenario
            .expect
            .iter()
            .map(|e| {
                let (passed, detail) = checks::check(self, e);
                CheckResult {
                    expectation: e.to_string(),
                    passed,
                    detail,
                }
            })
            .collect();
        checks.extend(posted_msi::check(self));
        let warnings = self.kernel_warnings();
        if !warnings.is_empty() {
            let shown: Vec<String> = warnings
                .iter()
                .map(|(when, w)| format!("{when}: {w}"))
                .collect();
            checks.push(CheckResult {
                expectation: "kernel-quiet".into(),
                passed: false,
                detail: format!(
                    "the kernel warned {} time{}: {}",
                    warnings.len(),
                    if warnings.len() == 1 { "" } else { "s" },
                    shown.join("; ")
                ),
            });
        }
        checks
    }

    /// Every kernel warning the agent saw during the scenario, normalized
    /// ([`normalize_warning`]), with where it was printed: `step 8
    /// destroy-vm` or `cleanup`. Warnings of the boot count for each of
    /// its scenarios (`boot`), so that a scenario's verdict is the same
    /// whether it shares its boot or has one of its own.
    pub fn kernel_warnings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .platform
            .boot_warnings
            .iter()
            .map(|w| ("boot".to_string(), normalize_warning(w)))
            .collect();
        for r in &self.steps {
            let action = self
                .scenario
                .steps
                .get(r.index)
                .map(|s| s.action())
                .unwrap_or("?");
            for w in &r.kernel_warnings {
                out.push((
                    format!("step {} {action}", r.index + 1),
                    normalize_warning(w),
                ));
            }
        }
        if let Some(done) = &self.done {
            for w in &done.kernel_warnings {
                out.push(("cleanup".to_string(), normalize_warning(w)));
            }
        }
        out
    }

    /// Whether every expectation passed.
    pub fn all_passed(&self) -> bool {
        self.checks().iter().all(|c| c.passed)
    }

    /// The normalized, human-readable report that snapshots hold.
    pub fn body(&self) -> String {
        let mut out = String::new();
        let s = &self.scenario;
        let _ = writeln!(out, "{}: {}", s.name, s.description);
        if !self.platform.tracing_failed.is_empty() {
            let _ = writeln!(
                out,
                "observed with gaps: {}",
                normalize(&self.platform.tracing_failed.join("; "))
            );
        }

        // Devices only where the scenario fixed an address: otherwise the
        // address depends on the variant (amd-iommu shifts devices).
        out.push_str("\ndevices\n");
        for d in &s.devices {
            let _ = match &d.bdf {
                Some(bdf) => writeln!(out, "   {} {} at {bdf}", d.name, d.model.label()),
                None => writeln!(out, "   {} {}", d.name, d.model.label()),
            };
        }
        if s.devices.is_empty() {
            out.push_str("   none\n");
        }

        out.push_str("\nsteps\n");
        let width = s.steps.len().to_string().len().max(2);
        let first_error = self
            .steps
            .iter()
            .find(|r| r.error.is_some())
            .map(|r| r.index);
        let l2_names: Vec<&str> = s.steps.iter().filter_map(Step::l2).collect();
        for (i, step) in s.steps.iter().enumerate() {
            let _ = write!(out, "  {:>width$} {}", i + 1, step_line(step));
            match self.step_report(i) {
                Some(r) => {
                    out.push('\n');
                    if let Some(e) = &r.error {
                        let _ = writeln!(out, "  {:width$}   failed: {}", "", normalize(e));
                    }
                    let (shown, vmm_irqfds) =
                        l2::shown_events(&r.bypass, &l2_names, s.l2_has_vdpa());
                    for ev in shown {
                        let _ = writeln!(out, "  {:width$}   {}", "", self.event_line(ev));
                    }
                    if let Some(line) = vmm_irqfds {
                        let _ = writeln!(out, "  {:width$}   {line}", "");
                    }
                    if let Some(l2) = &r.l2 {
                        for n in &l2.nics {
                            let _ = writeln!(
                                out,
                                "  {:width$}   in L2: {} bound to {}, {} queue{}, carrier {}",
                                "",
                                n.bdf,
                                n.driver,
                                n.queues,
                                if n.queues == 1 { "" } else { "s" },
                                if n.carrier { "up" } else { "down" }
                            );
                        }
                        for line in l2::traffic_lines(l2)
                            .into_iter()
                            .chain(l2link::link_lines(l2))
                        {
                            let _ = writeln!(out, "  {:width$}   {line}", "");
                        }
                    }
                }
                None => match first_error {
                    Some(e) if e < i => {
                        let _ = writeln!(out, "  (skipped: step {} failed)", e + 1);
                    }
                    _ => out.push_str("  (not run)\n"),
                },
            }
        }
        for r in &self.steps {
            if r.index >= s.steps.len() {
                let _ = writeln!(
                    out,
                    "   agent reported step {} which the scenario does not have",
                    r.index + 1
                );
            }
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(out, "   run ended early: {}", normalize(f));
        }

        out.push_str("\ncleanup\n");
        match &self.done {
            None => out.push_str("   not reached\n"),
            Some(done) => {
                let left = self.left_open();
                if left.is_empty() {
                    out.push_str("   nothing left open\n");
                } else {
                    let _ = writeln!(
                        out,
                        "   closed what the scenario left open: {}",
                        left.join(", ")
                    );
                }
                for ev in &done.cleanup {
                    let _ = writeln!(out, "       {}", self.event_line(ev));
                }
                if let Some(e) = &done.cleanup_error {
                    let _ = writeln!(out, "   failed: {}", normalize(e));
                }
            }
        }

        let warnings = self.kernel_warnings();
        if !warnings.is_empty() {
            out.push_str("\nkernel warnings\n");
            for (when, w) in &warnings {
                let _ = writeln!(out, "   {when}: {w}");
            }
        }

        out.push_str("\ninterrupts\n");
        let counts: Vec<(usize, &VectorCount)> = self
            .steps
            .iter()
            .flat_map(|r| r.interrupts.iter().map(move |c| (r.index, c)))
            .collect();
        let l2_counts: Vec<(usize, &wire::L2VectorCount, &wire::L2StepReport)> = self
            .steps
            .iter()
            .flat_map(|r| {
                r.l2.iter()
                    .flat_map(move |l| l.vectors.iter().map(move |v| (r.index, v, &**l)))
            })
            .collect();
        if counts.is_empty() && l2_counts.is_empty() {
            out.push_str("   none fired\n");
        }
        for (index, v, l2) in &l2_counts {
            let shown = match (s.steps.get(*index), l2.link_changes) {
                (Some(Step::L2Link { device, .. }), Some(changes))
                    if l2link::is_link_vector(v, device) =>
                {
                    l2link::link_vector_counts(v, changes, l2.posted)
                }
                (Some(Step::L2Traffic { from, to, .. }), _)
                    if l2::is_idle_receive_vector(v, to.as_deref().unwrap_or(from)) =>
                {
                    l2::idle_receive_counts(v)
                }
                _ => l2_vector_counts(v, l2.posted),
            };
            let _ = writeln!(
                out,
                "   step {:<w$} {} ({})  {}",
                index + 1,
                v.vector,
                if v.l2_action.is_empty() {
                    "other"
                } else {
                    v.l2_action.as_str()
                },
                shown,
                w = width,
            );
        }
        // an ipi step's counts are named by the VM that sent them
        let label = |index: usize, c: &VectorCount| match s.steps.get(index) {
            Some(Step::Ipi { vm, .. }) => format!("{vm} ipi {}", c.vector),
            _ => c.vector.clone(),
        };
        let vw = counts
            .iter()
            .map(|(i, c)| label(*i, c).len())
            .max()
            .unwrap_or(0);
        for (index, c) in counts {
            let signal = matches!(s.steps.get(index), Some(Step::Signal { .. }));
            let ipi = matches!(s.steps.get(index), Some(Step::Ipi { .. }));
            let _ = if ipi {
                // the L2's own ICR writes: no device, no eventfd, no MSI route
                write!(
                    out,
                    "   step {:<w$} {:<vw$}  sent {}",
                    index + 1,
                    label(index, c),
                    c.raised,
                    w = width,
                )
            } else if signal {
                // written by the agent: no device, no host IRQ line
                write!(
                    out,
                    "   step {:<w$} {:<vw$}  written to the eventfd {}  injected by KVM {}",
                    index + 1,
                    c.vector,
                    c.raised,
                    c.injected,
                    w = width,
                )
            } else {
                write!(
                    out,
                    "   step {:<w$} {:<vw$}  raised {}  L1 {} ({})  injected by KVM {}",
                    index + 1,
                    c.vector,
                    c.raised,
                    c.host_irq,
                    c.host_chip.as_deref().unwrap_or("no irq line"),
                    c.injected,
                    w = width,
                )
            };
            if let Some(d) = c.delivered {
                let _ = write!(out, "  delivered in L2 {d}");
            }
            if let Some(seen) = &c.route {
                let _ = write!(out, "  route {}", seen.to.name());
                if let Some(v) = seen.l2_vector {
                    let _ = write!(out, " {v:#04x}");
                }
                if c.delivered.is_some() {
                    let took: Vec<String> = seen
                        .l2_vectors
                        .iter()
                        .map(|(v, k)| format!("{v:#04x} x{k}"))
                        .collect();
                    let _ = write!(
                        out,
                        "  L2 took {}",
                        if took.is_empty() {
                            "nothing".to_string()
                        } else {
                            took.join(", ")
                        }
                    );
                }
            }
            if let Some(r) = c.resampled {
                let _ = write!(out, "  resampled {r}");
            }
            if let Some(u) = c.unmasked {
                let _ = write!(out, "  unmasked {u}");
            }
            // only where AVIC trapped any: an x2APIC L2's EOIs never trap
            if let Some(t) = c.eoi_trapped.filter(|t| *t > 0) {
                let _ = write!(out, "  EOIs trapped by AVIC {t}");
            }
            if let Some(sig) = c.signalled {
                let _ = write!(out, "  eventfd signalled {sig}");
            }
            out.push('\n');
        }
        // Only the total: how it split between running vCPUs (doorbell),
        // GA log wake-ups and IRR-only posts depends on scheduling, so the
        // split lives in the snapshot's info and in --json.
        match &self.iommu {
            None => {}
            // a real L2's interrupt count is NAPI timing: only whether any
            Some(Ok(c)) if s.needs_l2() => {
                let _ = writeln!(
                    out,
                    "   iommu  posted {}",
                    if c.posted > 0 { "> 0" } else { "none" }
                );
            }
            Some(Ok(c)) => {
                let _ = writeln!(out, "   iommu  posted {}", c.posted);
            }
            Some(Err(e)) => {
                let _ = writeln!(out, "   iommu  counters not read: {}", normalize(e));
            }
        }

        out.push_str("\nconnections\n");
        let conns: Vec<(String, &BypassEvent)> = self
            .all_events()
            .filter(|(_, ev)| {
                matches!(
                    ev,
                    BypassEvent::Connected { .. } | BypassEvent::Disconnected { .. }
                )
            })
            .collect();
        if conns.is_empty() {
            out.push_str("   none formed\n");
        }
        for (when, ev) in conns {
            let _ = writeln!(out, "   {when:<w$}  {}", self.event_line(ev), w = width + 5);
        }

        out.push_str("\nchecks\n");
        let checks = self.checks();
        if checks.is_empty() {
            out.push_str("   none\n");
        }
        for c in checks {
            let verdict = if c.passed { "pass" } else { "FAIL" };
            if c.detail.is_empty() {
                let _ = writeln!(out, "   {verdict}  {}", c.expectation);
            } else {
                let _ = writeln!(out, "   {verdict}  {}: {}", c.expectation, c.detail);
            }
        }
        out
    }

    /// The machine-readable report for `--json`: header, platform, steps,
    /// cleanup, interrupts and checks.
    pub fn to_json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .scenario
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let r = self.step_report(i);
                serde_json::json!({
                    "index": i,
                    "action": step.action(),
                    "step": step,
                    "ran": r.is_some(),
                    "error": r.and_then(|r| r.error.clone()),
                    "bypass": r.map(|r| r.bypass.clone()).unwrap_or_default(),
                    "interrupts": r.map(|r| r.interrupts.clone()).unwrap_or_default(),
                    "l2": r.and_then(|r| r.l2.as_deref().cloned()),
                })
            })
            .collect();
        let interrupts: Vec<serde_json::Value> = self
            .steps
            .iter()
            .flat_map(|r| {
                r.interrupts.iter().map(move |c| {
                    let mut v = serde_json::to_value(c).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("step".into(), r.index.into());
                    }
                    v
                })
            })
            .collect();
        let (can_post, why_not) = posting(&self.platform);
        serde_json::json!({
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "path": self.scenario.path,
            "header": self.header,
            "platform": self.platform,
            "can_post": can_post,
            "cannot_post_because": why_not,
            "steps": steps,
            "cleanup": self.done.as_ref().map(|d| serde_json::json!({
                "left_open": self.left_open(),
                "bypass": d.cleanup,
                "error": d.cleanup_error,
            })),
            "failure": self.failure,
            "retried_after": self.retried_after,
            "interrupts": interrupts,
            "kernel_warnings": self.kernel_warnings().into_iter()
                .map(|(when, warning)| serde_json::json!({ "when": when, "warning": warning }))
                .collect::<Vec<_>>(),
            "iommu": match &self.iommu {
                None => serde_json::Value::Null,
                Some(Ok(c)) => serde_json::to_value(c).unwrap_or_default(),
                Some(Err(e)) => serde_json::json!({ "error": e }),
            },
            "vtd_posted_msi": match &self.vtd_pi {
                None => serde_json::Value::Null,
                Some(Ok(c)) => serde_json::json!({
                    "iommu": c,
                    "l1": self.done.as_ref().and_then(|d| d.l1_msi),
                }),
                Some(Err(e)) => serde_json::json!({ "error": e }),
            },
            "checks": self.checks(),
        })
    }

    /// Every bypass event with where it happened (`step 4`, `cleanup`), in order.
    pub(crate) fn all_events(&self) -> impl Iterator<Item = (String, &BypassEvent)> + '_ {
        let steps = self.steps.iter().flat_map(|r| {
            r.bypass
                .iter()
                .map(move |e| (format!("step {}", r.index + 1), e))
        });
        let cleanup = self
            .done
            .iter()
            .flat_map(|d| d.cleanup.iter().map(|e| ("cleanup".to_string(), e)));
        steps.chain(cleanup)
    }

    /// What the scenario's steps left open (bound devices, live VMs), which
    /// the agent's cleanup closes.
    pub fn left_open(&self) -> Vec<String> {
        let mut devices: BTreeSet<&str> = BTreeSet::new();
        let mut vms: BTreeSet<&str> = BTreeSet::new();
        for (i, step) in self.scenario.steps.iter().enumerate() {
            // Only what ran, and only steps that succeeded: a failed
            // create-vm created nothing, a failed close-device closed nothing.
            match self.step_report(i) {
                None => break,
                Some(r) if r.error.is_some() => continue,
                Some(_) => {}
            }
            match step {
                Step::Bind { device } => {
                    devices.insert(device);
                }
                Step::CloseDevice { device } => {
                    devices.remove(device.as_str());
                }
                Step::CreateVm { vm, .. } => {
                    vms.insert(vm);
                }
                Step::DestroyVm { vm } => {
                    vms.remove(vm.as_str());
                }
                _ => {}
            }
        }
        devices.into_iter().chain(vms).map(str::to_string).collect()
    }

    fn event_line(&self, ev: &BypassEvent) -> String {
        match ev {
            BypassEvent::ProducerRegistered { producer, ret: 0 } => {
                format!("producer {producer} registered (ret 0)")
            }
            BypassEvent::ProducerRegistered { producer, ret } => {
                format!(
                    "producer {producer} registration failed (ret {})",
                    errno(*ret)
                )
            }
            BypassEvent::ProducerUnregistered { producer } => {
                format!("producer {producer} unregistered")
            }
            BypassEvent::ConsumerRegistered { consumer, ret: 0 } => {
                format!("consumer {consumer} registered (ret 0)")
            }
            BypassEvent::ConsumerRegistered { consumer, ret } => {
                format!(
                    "consumer {consumer} registration failed (ret {})",
                    errno(*ret)
                )
            }
            BypassEvent::ConsumerNotRegistered { consumer } => {
                let (can_post, why) = posting(&self.platform);
                if can_post {
                    format!("consumer {consumer} not registered, although the platform can post")
                } else {
                    format!(
                        "consumer {consumer} not registered: KVM has no device-posted IRQs ({why})"
                    )
                }
            }
            BypassEvent::ConsumerUnregistered { consumer } => {
                format!("consumer {consumer} unregistered")
            }
            BypassEvent::ProducerNotRegistered { producer } => {
                match self.scenario.device_of_vector(producer).map(|d| d.model) {
                    Some(m) if !m.host_irq() => format!(
                        "producer {producer} not registered: {} has no IRQ of its own per virtqueue",
                        m.label()
                    ),
                    _ => format!("producer {producer} not registered"),
                }
            }
            BypassEvent::Connected {
                producer,
                consumer,
                ret: 0,
            } => format!("connected {producer} -> {consumer} (ret 0)"),
            BypassEvent::Connected {
                producer,
                consumer,
                ret,
            } => format!(
                "connect {producer} -> {consumer} failed (ret {})",
                errno(*ret)
            ),
            BypassEvent::Disconnected { producer, consumer } => {
                format!("disconnected {producer} -> {consumer}")
            }
        }
    }

    /// The snapshot's `info` metadata: header and platform facts.
    pub(crate) fn info(&self) -> insta::internals::Content {
        use insta::internals::Content;
        let s = |v: &str| Content::from(v);
        let opt_bool = |v: Option<bool>| match v {
            Some(b) => Content::from(b),
            None => Content::from("unknown"),
        };
        let p = &self.platform;
        let list = |v: &[String]| Content::Seq(v.iter().map(|x| s(x)).collect());
        let mut map = vec![
            (s("variant"), s(&self.header.variant)),
            (s("kernel_release"), s(&self.header.kernel_release)),
            (s("qemu_version"), s(&self.header.qemu_version)),
            (
                s("kvm_vendor"),
                s(p.kvm_vendor.as_deref().unwrap_or("none")),
            ),
            (s("apicv"), opt_bool(p.apicv)),
            (s("device_posted_irqs"), opt_bool(p.device_posted_irqs)),
            (
                s("irq_remapping"),
                s(p.irq_remapping.as_deref().unwrap_or("off")),
            ),
            (s("irq_posting"), Content::from(p.irq_posting)),
            (s("modules_loaded"), list(&p.modules_loaded)),
            (s("modules_failed"), list(&p.modules_failed)),
            (s("tracing_failed"), list(&p.tracing_failed)),
        ];
        if let Some(mode) = p.avic_mode() {
            map.push((s("avic"), s(mode)));
        }
        // Not compared: how the posted interrupts split depends on timing.
        match &self.iommu {
            None => {}
            Some(Ok(c)) => {
                let n = |v: u64| Content::from(v);
                map.push((
                    s("iommu"),
                    Content::Map(vec![
                        (s("posted"), n(c.posted)),
                        (s("posted_running"), n(c.posted_running)),
                        (s("posted_logged"), n(c.posted_logged)),
                        (s("posted_idle"), n(c.posted_idle)),
                        (s("log_overflows"), n(c.log_overflows)),
                        (s("doorbell_failed"), n(c.doorbell_failed)),
                        (s("remapped"), n(c.remapped)),
                    ]),
                ));
            }
            Some(Err(e)) => map.push((s("iommu"), s(e))),
        }
        match &self.vtd_pi {
            None => {}
            Some(Ok(c)) => {
                let n = |v: u64| Content::from(v);
                let l1 = self.done.as_ref().and_then(|d| d.l1_msi);
                let mut m = vec![
                    (s("posted"), n(c.posted)),
                    (s("notified"), n(c.notified)),
                    (s("urgent"), n(c.urgent)),
                    (s("suppressed"), n(c.suppressed)),
                    (s("outstanding"), n(c.outstanding)),
                    (s("faults"), n(c.faults)),
                    (s("remapped"), n(c.remapped)),
                ];
                if let Some(l1) = l1 {
                    m.push((s("l1_pci_msi"), n(l1.pci_msi)));
                    if let Some(pmn) = l1.posted_msi_notifications {
                        m.push((s("l1_pmn"), n(pmn)));
                    }
                }
                map.push((s("vtd_posted_msi"), Content::Map(m)));
            }
            Some(Err(e)) => map.push((s("vtd_posted_msi"), s(e))),
        }
        if let Some(v) = p.posted_msi {
            map.push((s("posted_msi"), Content::from(v)));
        }
        Content::Map(map)
    }
}

/// Orders one step's irqbypass events by the vector they concern, keeping
/// each vector's own events in kernel order. Events of different vectors in
/// one step come from independent kernel work (KVM shuts irqfds down on a
/// workqueue, so destroying a VM with two irqfds unregisters them in either
/// order); their interleaving is timing, not behaviour, and must not reach
/// a snapshot. The order that means something, within a vector (connect
/// before disconnect, disconnect around an unregister), is kept.
pub fn by_vector(events: &mut [wire::BypassEvent]) {
    events.sort_by(|a, b| event_vector(a).cmp(event_vector(b)));
}

/// The vector an event is about: a producer is named by its vector, a
/// consumer `<vm>:<vector>`.
fn event_vector(ev: &wire::BypassEvent) -> &str {
    use wire::BypassEvent as E;
    match ev {
        E::ProducerRegistered { producer, .. }
        | E::ProducerNotRegistered { producer }
        | E::ProducerUnregistered { producer }
        | E::Connected { producer, .. }
        | E::Disconnected { producer, .. } => producer,
        E::ConsumerRegistered { consumer, .. }
        | E::ConsumerNotRegistered { consumer }
        | E::ConsumerUnregistered { consumer } => consumer
            .split_once(':')
            .map_or(consumer.as_str(), |(_, v)| v),
    }
}

/// A step as one line: `fire dev0/msi0 x5`.
pub fn step_line(step: &Step) -> String {
    match step {
        Step::Bind { device } => format!("bind {device}"),
        Step::EnableMsi { device, vectors } => format!(
            "enable-msi {device} ({})",
            crate::scenario::plural(*vectors as usize, "vector")
        ),
        Step::DisableMsi { device } => format!("disable-msi {device}"),
        Step::EnableMsix { device, vectors } => match vectors {
            wire::VectorSet::Count(n) => format!(
                "enable-msix {device} ({})",
                crate::scenario::plural(*n as usize, "vector")
            ),
            wire::VectorSet::List(_) => {
                let l: Vec<String> = vectors
                    .numbers()
                    .iter()
                    .map(|n| format!("msix{n}"))
                    .collect();
                format!("enable-msix {device} ({})", l.join(", "))
            }
        },
        Step::DisableMsix { device } => format!("disable-msix {device}"),
        Step::EnableVqs { device, vectors } => {
            let l: Vec<String> = vectors.numbers().iter().map(|n| format!("vq{n}")).collect();
            format!("enable-vqs {device} ({})", l.join(", "))
        }
        Step::Mask { vector } => format!("mask {vector}"),
        Step::Unmask { vector } => format!("unmask {vector}"),
        Step::Unbind { device } => format!("unbind {device}"),
        Step::Unplug { device } => format!("unplug {device}"),
        Step::Replug { device } => format!("replug {device}"),
        Step::CreateVm { vm, apic } => match apic {
            wire::L2Apic::X2apic => format!("create-vm {vm}"),
            wire::L2Apic::Xapic => format!("create-vm {vm} (xAPIC L2)"),
        },
        Step::Irqfd {
            vm,
            vector,
            resample,
            pin,
        } => {
            let mut l = format!("irqfd {vm} {vector}");
            if let Some(p) = pin {
                l.push_str(&format!(" (IOAPIC pin {p})"));
            }
            if *resample {
                l.push_str(" with resample");
            }
            l
        }
        Step::EnableIntx { device } => format!("enable-intx {device}"),
        Step::IntxUnmask { vm, vector } => format!("intx-unmask {vector} on {vm}'s resample"),
        Step::IrqfdDeassign { vm, vector } => format!("irqfd-deassign {vm} {vector}"),
        Step::Route {
            vm,
            vector,
            to,
            l2_vector,
        } => {
            let mut l = format!("route {vm} {vector} -> {}", to.name());
            if let Some(v) = l2_vector {
                l.push_str(&format!(" vector {v:#04x}"));
            }
            l
        }
        Step::Fire { vector, count } => format!("fire {vector} x{count}"),
        Step::Signal { vector, count } => format!("signal {vector} x{count}"),
        Step::CloseDevice { device } => format!("close-device {device}"),
        Step::DestroyVm { vm } => format!("destroy-vm {vm}"),
        Step::PanicL1 => "panic-l1".to_owned(),
        Step::PitReinject { vm, reinject: true } => {
            format!("pit-reinject {vm} on (APICv inhibit PIT_REINJ)")
        }
        Step::PitReinject {
            vm,
            reinject: false,
        } => format!("pit-reinject {vm} off"),
        Step::ReloadKvm => "reload-kvm".to_owned(),
        Step::StartVm {
            vm,
            mode,
            period_ms,
        } => match (mode, period_ms) {
            (wire::L2Mode::Alternate, p) => format!(
                "start-vm {vm} (alternate, {} ms phases)",
                p.unwrap_or(wire::DEFAULT_ALTERNATE_MS)
            ),
            (m, _) => format!("start-vm {vm} ({})", m.name()),
        },
        Step::StopVm { vm } => format!("stop-vm {vm}"),
        Step::Ipi { vm, vector, count } => format!("ipi {vm} {vector:#04x} x{count}"),
        Step::StartL2 {
            l2,
            devices,
            queues,
            append,
            hotplug,
        } => {
            let mut l = format!(
                "start-l2 {l2} with {} ({queues} queues)",
                devices.join(", ")
            );
            if let Some(a) = append {
                l.push_str(&format!(" append {a:?}"));
            }
            if *hotplug {
                l.push_str(", hotplug");
            }
            l
        }
        Step::L2Traffic {
            l2,
            from,
            to: Some(to),
            frames,
        } if to != from => format!("l2-traffic {l2} {from} -> {to} x{frames}"),
        Step::L2Traffic {
            l2, from, frames, ..
        } => {
            format!("l2-traffic {l2} {from} -> itself (looped back) x{frames}")
        }
        Step::L2Link { l2, device, flaps } => {
            format!("l2-link {l2} {device} down and up x{flaps}")
        }
        Step::StopL2 { l2 } => format!("stop-l2 {l2}"),
        Step::L2Unplug { l2, device } => format!("l2-unplug {l2} {device}"),
        Step::L2Replug { l2, device } => format!("l2-replug {l2} {device}"),
        Step::L2Pause { l2 } => format!("l2-pause {l2}"),
        Step::KillL2 { l2 } => format!("kill-l2 {l2}"),
        Step::L2Resume { l2 } => format!("l2-resume {l2}"),
    }
}

/// Whether KVM can register irqbypass consumers on this platform, and if
/// not, why (`apicv off, IOMMU cannot post`). The reason is built from the
/// facts that hold on every kernel, so it does not change with the kernel
/// having `kvm.enable_device_posted_irqs` or not.
pub fn posting(p: &Platform) -> (bool, String) {
    let mut why = Vec::new();
    match p.apicv {
        Some(true) => {}
        Some(false) => why.push("apicv off"),
        None => why.push(if p.kvm_vendor.is_none() {
            "no KVM vendor module"
        } else {
            "apicv unknown"
        }),
    }
    if !p.irq_posting {
        why.push("IOMMU cannot post");
    }
    let can = match p.device_posted_irqs {
        Some(v) => v,
        None => p.apicv == Some(true) && p.irq_posting,
    };
    if !can && why.is_empty() {
        why.push("kvm.enable_device_posted_irqs off");
    }
    if can {
        why.clear();
    }
    (can, why.join(", "))
}

/// `-16 EBUSY` for the common errnos, the number otherwise.
fn errno(ret: i64) -> String {
    let name = match -ret {
        1 => "EPERM",
        2 => "ENOENT",
        5 => "EIO",
        9 => "EBADF",
        12 => "ENOMEM",
        16 => "EBUSY",
        17 => "EEXIST",
        19 => "ENODEV",
        22 => "EINVAL",
        28 => "ENOSPC",
        95 => "EOPNOTSUPP",
        _ => return ret.to_string(),
    };
    format!("{ret} {name}")
}

/// Strip what varies between runs from free-form messages: kernel log
/// timestamps (`[   12.345678]`) and long hex addresses.
pub fn normalize(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let b = message.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // `[  12.345678]`
        if b[i] == b'[' {
            if let Some(len) = timestamp_len(&message[i..]) {
                out.push_str("[time]");
                i += len;
                continue;
            }
        }
        // `0xffffffff81000000`, `ffff888003c1e000`
        let at_word_start = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        if at_word_start {
            let hex_start = if message[i..].starts_with("0x") {
                i + 2
            } else {
                i
            };
            let n = b[hex_start..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            let end = hex_start + n;
            let word_ends = end == b.len() || !b[end].is_ascii_alphanumeric();
            if n >= 8 && word_ends && b[hex_start..end].iter().any(|c| c.is_ascii_digit()) {
                out.push_str("<addr>");
                i = end;
                continue;
            }
        }
        let ch = message[i..].chars().next().unwrap_or('?');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A kernel warning's headline without what differs between runs and
/// builds: `CPU: 0 PID: 138 ` and `[#1]`, the offsets in `func+0x99/0xb0`,
/// and what [`normalize`] strips.
pub fn normalize_warning(line: &str) -> String {
    let mut s = normalize(line);
    // `WARNING: CPU: 0 PID: 138 at ...`
    if let Some(cpu) = s.find("CPU: ") {
        if let Some(at) = s[cpu..].find(" at ") {
            let between = &s[cpu..cpu + at];
            if between.split_whitespace().count() == 4 && between.contains("PID: ") {
                s.replace_range(cpu..cpu + at + 1, "");
            }
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(plus) = rest.find("+0x") {
        out.push_str(&rest[..plus]);
        let tail = &rest[plus + 1..];
        // `+0x99/0xb0`: offset and function size
        let offset_len = 2 + tail[2..]
            .bytes()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        let size_len = tail[offset_len..]
            .strip_prefix("/0x")
            .map(|t| 3 + t.bytes().take_while(|c| c.is_ascii_hexdigit()).count())
            .unwrap_or(0);
        if offset_len > 2 {
            rest = &tail[offset_len + size_len..];
        } else {
            out.push('+');
            rest = tail;
        }
    }
    out.push_str(rest);
    let mut s = out;
    while let Some(i) = s.find("[#") {
        match s[i + 2..].find(']') {
            Some(n) if n > 0 && s[i + 2..i + 2 + n].bytes().all(|c| c.is_ascii_digit()) => {
                let end = i + 2 + n + 1;
                let end = if s[end..].starts_with(' ') {
                    end + 1
                } else {
                    end
                };
                s.replace_range(i..end, "");
            }
            _ => break,
        }
    }
    s.trim_end().to_string()
}

fn timestamp_len(s: &str) -> Option<usize> {
    let close = s.find(']')?;
    let inner = s[1..close].trim();
    let (a, b) = inner.split_once('.')?;
    (!a.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit())
        && b.len() == 6
        && b.bytes().all(|c| c.is_ascii_digit()))
    .then_some(close + 1)
}

/// For each step index, the VMs whose L2 runs when the step starts.
pub(crate) fn l2_running_before_each_step(scenario: &Scenario) -> Vec<BTreeSet<String>> {
    let mut running = BTreeSet::new();
    let mut out = Vec::with_capacity(scenario.steps.len());
    for s in &scenario.steps {
        out.push(running.clone());
        match s {
            Step::StartVm { vm, .. } => {
                running.insert(vm.clone());
            }
            Step::StopVm { vm } | Step::DestroyVm { vm } => {
                running.remove(vm);
            }
            _ => {}
        }
    }
    out
}

/// For each step: for a `fire`, whether its vector is masked at the device
/// (the raises are held pending); for an `unmask`, whether a raise is
/// pending (the device sends it, once); `None` for other steps. Masks go
/// with the vector's wiring: disabling, closing or unwiring drops them.
pub(crate) fn held_by_mask(scenario: &Scenario) -> Vec<Option<bool>> {
    // masked vector -> raised since the mask
    let mut masked: BTreeMap<String, bool> = BTreeMap::new();
    let mut out = Vec::with_capacity(scenario.steps.len());
    let of_device = |v: &str, d: &str| v.split_once('/').is_some_and(|(dev, _)| dev == d);
    for s in &scenario.steps {
        match s {
            Step::Fire { vector, .. } => {
                let m = masked.get_mut(vector);
                out.push(Some(m.is_some()));
                if let Some(p) = m {
                    *p = true;
                }
            }
            Step::Unmask { vector } => out.push(Some(masked.remove(vector).unwrap_or(false))),
            Step::Mask { vector } => {
                masked.insert(vector.clone(), false);
                out.push(None);
            }
            Step::DisableMsi { device }
            | Step::DisableMsix { device }
            | Step::CloseDevice { device }
            | Step::Unplug { device } => {
                masked.retain(|v, _| !of_device(v, device));
                out.push(None);
            }
            Step::EnableMsix { device, vectors } => {
                let keep = vectors.numbers();
                masked.retain(|v, _| {
                    !of_device(v, device)
                        || v.rsplit_once("msix")
                            .and_then(|(_, n)| n.parse::<u32>().ok())
                            .is_some_and(|n| keep.contains(&n))
                });
                out.push(None);
            }
            _ => out.push(None),
        }
    }
    out
}

/// For each step index, which (vm, vector) irqfds are attached when it runs.
/// An irqfd step that KVM refused (its step report has an error, e.g.
/// EBUSY for a second irqfd on one eventfd since 6.17) holds nothing.
pub(crate) fn irqfds_before_each_step(r: &Report) -> Vec<BTreeMap<String, BTreeSet<String>>> {
    let scenario = &r.scenario;
    // vector -> vms holding it
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut out = Vec::with_capacity(scenario.steps.len());
    for (i, s) in scenario.steps.iter().enumerate() {
        out.push(held.clone());
        match s {
            Step::Irqfd { .. } if r.step_report(i).is_some_and(|s| s.error.is_some()) => {}
            Step::Irqfd { vm, vector, .. } => {
                held.entry(vector.clone()).or_default().insert(vm.clone());
            }
            Step::IrqfdDeassign { vm, vector } => {
                if let Some(v) = held.get_mut(vector) {
                    v.remove(vm);
                }
            }
            Step::DestroyVm { vm } => {
                for v in held.values_mut() {
                    v.remove(vm);
                }
            }
            _ => {}
        }
        held.retain(|_, v| !v.is_empty());
    }
    out
}

#[cfg(test)]
mod tests;
