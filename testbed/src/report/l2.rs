//! A real L2 Linux in the report: what its steps say, its vectors' counts
//! and the `l2-lossless` check (`l2link.rs`: its `l2-link` part).
//!
//! How many interrupts a number of frames makes depends on NAPI and
//! interrupt moderation timing, so the body holds relations (and whether
//! any came); the numbers are in `--json` (`steps[i].l2`).

use wire::{BypassEvent, L2StepReport, L2VectorCount, Step};

use super::checks::fail;
use super::Report;

/// The lines an `l2-traffic` step adds under its step line.
pub(super) fn traffic_lines(l2: &L2StepReport) -> Vec<String> {
    let (Some(sent), Some(received)) = (l2.frames_sent, l2.frames_received) else {
        return vec![];
    };
    let mut lines = vec![format!("frames sent {sent}, received {received}")];
    lines.extend(delivery_lines(l2));
    lines
}

/// How the interrupts of an `l2-traffic` or `l2-link` step reached the
/// L2: KVM's injections against L1's device interrupts, and whether the
/// IOMMU posted any.
pub(super) fn delivery_lines(l2: &L2StepReport) -> Vec<String> {
    let l1: u64 = l2.vectors.iter().map(|v| v.host_irq).sum();
    let irqfd = irqfd_injections(l2);
    let inj = match (l2.injected, irqfd) {
        (Some(i), None) if i == l1 => "= L1's device interrupts".to_string(),
        (Some(i), None) => format!("{i}, L1 took {l1}"),
        (Some(i), Some(f)) if i == l1 + f && l1 == 0 => {
            "= the vhost-vdpa vectors' irqfd injections (no L1 irq line)".to_string()
        }
        (Some(i), Some(f)) if i == l1 + f => {
            "= L1's device interrupts + the vhost-vdpa vectors' irqfd injections".to_string()
        }
        (Some(i), Some(f)) => format!("{i}, L1 took {l1}, the vhost-vdpa vectors' {f}"),
        (None, _) => "not counted".to_string(),
    };
    let mut lines = vec![format!("KVM's injections into L2 {inj}")];
    match l2.posted {
        None => {}
        Some(0) => lines.push("posted by the IOMMU: none".into()),
        Some(_) => lines.push("posted by the IOMMU: > 0".into()),
    }
    lines
}

/// What KVM injected on the vectors that have no L1 line (vhost-vdpa
/// without per-queue IRQs), summed; None where the step has none.
fn irqfd_injections(l2: &L2StepReport) -> Option<u64> {
    l2.vectors
        .iter()
        .filter(|v| v.host_chip.is_none())
        .filter_map(|v| v.injected)
        .reduce(|a, b| a + b)
}

/// What a vector was raised as, as far as L1 can tell: its L1 host IRQ
/// line's count, or where it has none (vhost-vdpa whose parent signals
/// the call eventfd from kernel code) KVM's irqfd injections on it.
fn raised(v: &L2VectorCount) -> u64 {
    match (&v.host_chip, v.injected) {
        (None, Some(i)) => i,
        _ => v.host_irq,
    }
}

/// The consumer name of an L2 VMM's irqfd with no producer (the agent's
/// `attrib::NO_PRODUCER`, then `-<n>`).
const NO_PRODUCER: &str = "no-producer-";

/// The events of a step as the body shows them. An L2's VMM (QEMU in L1)
/// registers and drops INTx irqfds (no producer) as the L2 changes the
/// device's INTx routing: they are summed up in one line, the net count.
/// An unregister followed by the same consumer's registration is left out
/// (the body shows the net change; `--json` has every event): what looked
/// like QEMU re-assigning a vector's irqfd 4 to 6 times (measured on
/// amd-avic) were INTx irqfds named after a vector whose eventfd and
/// irqfd later took their addresses, which the agent no longer does; a
/// real re-assignment stays shown as its net change.
///
/// `vdpa`: an L2 has a vDPA device, whose virtqueues' irqfds have no
/// producer either (vdpa_sim has no per-queue IRQ).
pub(super) fn shown_events<'e>(
    events: &'e [BypassEvent],
    l2s: &[&str],
    vdpa: bool,
) -> (Vec<&'e BypassEvent>, Option<String>) {
    let vmm = |c: &str| c.split_once(':').is_some_and(|(p, _)| l2s.contains(&p));
    let no_producer = |c: &str| {
        vmm(c)
            && c.split_once(':')
                .is_some_and(|(_, v)| v.starts_with(NO_PRODUCER))
    };
    let mut out: Vec<&BypassEvent> = Vec::new();
    let (mut reg, mut unreg) = (0i64, 0i64);
    for ev in events {
        match ev {
            BypassEvent::ConsumerRegistered { consumer, .. } if no_producer(consumer) => reg += 1,
            BypassEvent::ConsumerUnregistered { consumer } if no_producer(consumer) => unreg += 1,
            BypassEvent::ConsumerRegistered { consumer, ret: 0 }
                if vmm(consumer)
                    && matches!(out.last(), Some(BypassEvent::ConsumerUnregistered { consumer: c }) if c == consumer) =>
            {
                out.pop();
            }
            _ => out.push(ev),
        }
    }
    let which = if vdpa {
        "QEMU's irqfds of the vDPA device's virtqueues, or INTx irqfds"
    } else {
        "QEMU's INTx irqfds"
    };
    let summary = (reg + unreg > 0).then(|| {
        format!(
            "consumers without a producer ({which}) registered and unregistered, net {:+}",
            reg - unreg
        )
    });
    (out, summary)
}

/// What a snapshot says about one vector of a real L2's device.
/// `posted`: what the IOMMU posted during the step, where it counts.
pub fn l2_vector_counts(v: &L2VectorCount, posted: Option<u64>) -> String {
    let chip = v.host_chip.as_deref().unwrap_or("no irq line");
    let posting = posted.is_some_and(|p| p > 0);
    if let (None, Some(inj)) = (&v.host_chip, v.injected) {
        // vhost-vdpa without per-queue IRQs: KVM's irqfd is the first count
        return match (inj, v.delivered) {
            (0, 0) => format!("none  ({chip})"),
            (0, _) if posting => format!("KVM injected 0, delivered in L2 > 0: posted  ({chip})"),
            (a, b) if b > a => format!("KVM injected {a} < delivered in L2 {b}  ({chip})"),
            (_, 0) => format!("KVM injected > 0, never delivered in L2  ({chip})"),
            _ => format!("KVM injected >= delivered in L2 > 0  ({chip})"),
        };
    }
    match (v.host_irq, v.delivered) {
        (0, 0) => format!("none  ({chip})"),
        // nothing through L1: the IOMMU posted them into the L2 vCPU
        (0, _) if posting => format!("L1 0, delivered in L2 > 0: posted  ({chip})"),
        (_, b) if b > 0 && posting => format!("L1 > 0, delivered in L2 > 0, some posted  ({chip})"),
        (a, b) if b > a => format!("L1 {a} < delivered in L2 {b}  ({chip})"),
        (_, 0) => format!("L1 > 0, never delivered in L2  ({chip})"),
        _ => format!("L1 >= delivered in L2 > 0  ({chip})"),
    }
}

/// Whether `v` is a receive-only queue vector (the driver names it
/// `rx-<n>`, as e1000e does) of a NIC other than the one an `l2-traffic`
/// step sends `to`: no frame arrives there, yet its count depends on
/// timing. e1000e's watchdog (`e1000_watchdog_task`, every 2 s while the
/// link is up) writes the receive queue's cause to ICS "to ensure Rx ring
/// is cleaned", and QEMU's 82574 raises the vector for it. Measured on
/// intel-ir with Debian 7.2: the sender's receive vector ran 0 times in
/// most 64-frame steps, 1 in a 4-frame one and 4 in a 3000-frame one.
/// A combined vector (igb's `TxRx-<n>`) carries the frames and is not
/// idle.
pub fn is_idle_receive_vector(v: &L2VectorCount, to: &str) -> bool {
    v.l2_action.starts_with("rx") && v.vector.split_once('/').is_some_and(|(d, _)| d != to)
}

/// What a snapshot says about an idle receive vector
/// ([`is_idle_receive_vector`]): nothing that depends on timing. Its
/// numbers are in `--json`, and `l2-lossless` accounts for it as for
/// every other vector.
pub fn idle_receive_counts(v: &L2VectorCount) -> String {
    let chip = v.host_chip.as_deref().unwrap_or("no irq line");
    format!("no frames to receive: any count is its driver's own kick  ({chip})")
}

/// Frames and interrupts of every `l2-traffic` step, link changes and
/// interrupts of every `l2-link` step (`l2link::link_problems`). Measured on
/// intel-ir with Debian 7.2 (2 igb, 2 queues, 64 frames): L1's host IRQ
/// lines saw more interrupts than L2's handlers ran (45 against 27 on one
/// transmit vector) while KVM injected every one L1 saw: a vector raised
/// again while the previous one is still pending in the L2 vCPU's local
/// APIC (IRR) is merged into it, as on hardware, and a slow nested vCPU
/// leaves it pending longer. So what must hold is: every frame sent
/// arrived; KVM injected exactly what the devices' L1 lines took (nothing
/// lost between VFIO and KVM); no L2 vector ran its handler more often
/// than L1 saw it raised (nothing invented), and one raised at all ran at
/// least once (nothing lost for good); the receiving NIC's queue vectors
/// took interrupts.
///
/// Where the IOMMU posts (amd-avic: its counter is read around the step),
/// an interrupt reaches L2 either through L1 or posted into the vCPU's
/// vAPIC page, which L1 never sees: then what L2's handlers ran beyond
/// L1's count, summed over the vectors, must not exceed what the IOMMU
/// posted during the step (posted interrupts merge in the IRR too), and
/// something posted must have run somewhere.
pub(super) fn l2_lossless(r: &Report) -> (bool, String) {
    let mut problems = Vec::new();
    let mut steps = 0;
    for (i, step) in r.scenario.steps.iter().enumerate() {
        if !matches!(step, Step::L2Traffic { .. } | Step::L2Link { .. }) {
            continue;
        }
        steps += 1;
        let k = i + 1;
        let Some(rep) = r.step_report(i) else {
            problems.push(format!("step {k}: not run"));
            continue;
        };
        let Some(l2) = &rep.l2 else {
            problems.push(format!("step {k}: no L2 counts"));
            continue;
        };
        match step {
            Step::L2Traffic { frames, .. } => {
                let to = step.l2_traffic_to().unwrap_or_default();
                traffic_problems(k, to, *frames, l2, &mut problems)
            }
            Step::L2Link { device, flaps, .. } => {
                super::l2link::link_problems(k, device, *flaps, l2, &mut problems)
            }
            _ => unreachable!("filtered above"),
        }
        accounting_problems(k, l2, &mut problems);
    }
    if steps == 0 {
        problems.push("the scenario has no l2-traffic or l2-link step".into());
    }
    if problems.is_empty() {
        (true, String::new())
    } else {
        fail(problems)
    }
}

/// An `l2-traffic` step's own part: every frame arrived, and the receiving
/// NIC's queue vectors took interrupts.
fn traffic_problems(
    k: usize,
    to: &str,
    frames: u32,
    l2: &L2StepReport,
    problems: &mut Vec<String>,
) {
    let (sent, received) = (l2.frames_sent.unwrap_or(0), l2.frames_received.unwrap_or(0));
    if sent != u64::from(frames) || received != sent {
        problems.push(format!(
            "step {k}: {frames} frames asked, {sent} sent, {received} received"
        ));
    }
    let rx: u64 = l2
        .vectors
        .iter()
        .filter(|v| {
            v.vector.starts_with(&format!("{to}/"))
                && (v.l2_action.starts_with("rx") || v.l2_action.starts_with("input"))
        })
        .map(|v| v.delivered)
        .sum();
    if rx == 0 {
        problems.push(format!(
            "step {k}: {to}'s receive vectors took no interrupt in L2"
        ));
    }
}

/// What every counted L2 step must account for: KVM injected what L1
/// took, no vector ran in L2 beyond what L1 took and the IOMMU posted, and
/// none that L1 took was never delivered.
///
/// A vector with no L1 line (vhost-vdpa whose parent has no per-queue
/// IRQ: vdpa_sim signals the call eventfd, KVM's irqfd injects) is
/// counted where KVM injects it, per APIC vector: then "raised" is KVM's
/// injections on it, and KVM's total must be L1's lines plus those (no
/// MSI injected that no vector of the L2's devices asked for).
fn accounting_problems(k: usize, l2: &L2StepReport, problems: &mut Vec<String>) {
    let l1: u64 = l2.vectors.iter().map(|v| v.host_irq).sum();
    let irqfd = irqfd_injections(l2);
    match l2.injected {
        Some(inj) if inj == l1 + irqfd.unwrap_or(0) => {}
        Some(inj) if irqfd.is_some() => problems.push(format!(
            "step {k}: L1 took {l1} device interrupts and KVM injected {} on the vhost-vdpa vectors, but {inj} into L2 in all",
            irqfd.unwrap_or(0)
        )),
        Some(inj) => problems.push(format!(
            "step {k}: L1 took {l1} device interrupts, KVM injected {inj} into L2"
        )),
        None => problems.push(format!("step {k}: KVM injections not counted")),
    }
    let beyond_l1: u64 = l2
        .vectors
        .iter()
        .map(|v| v.delivered.saturating_sub(raised(v)))
        .sum();
    match l2.posted {
        None => {
            for v in l2.vectors.iter().filter(|v| v.delivered > raised(v)) {
                if v.host_chip.is_none() && v.injected.is_some() {
                    problems.push(format!(
                        "step {k}: {} delivered in L2 {} times, KVM injected it only {}",
                        v.vector,
                        v.delivered,
                        raised(v)
                    ));
                } else {
                    problems.push(format!(
                        "step {k}: {} delivered in L2 {} times, raised (L1) only {}",
                        v.vector, v.delivered, v.host_irq
                    ));
                }
            }
        }
        Some(posted) => {
            if beyond_l1 > posted {
                problems.push(format!(
                    "step {k}: L2's handlers ran {beyond_l1} times more than L1 took, the IOMMU posted only {posted}"
                ));
            }
            let delivered: u64 = l2.vectors.iter().map(|v| v.delivered).sum();
            if posted > 0 && delivered == 0 {
                problems.push(format!(
                    "step {k}: the IOMMU posted {posted}, L2 handled none"
                ));
            }
        }
    }
    for v in l2
        .vectors
        .iter()
        .filter(|v| raised(v) > 0 && v.delivered == 0)
    {
        if v.host_chip.is_none() && v.injected.is_some() {
            problems.push(format!(
                "step {k}: {} injected {} times by KVM, never delivered in L2",
                v.vector,
                raised(v)
            ));
        } else {
            problems.push(format!(
                "step {k}: {} raised {} times (L1), never delivered in L2",
                v.vector, v.host_irq
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use wire::{Platform, StepReport};

    use super::*;
    use crate::report::Header;

    const SCENARIO: &str = r#"
description = "igb to a real L2"

[[device]]
name = "nic0"
model = "igb"
hub = "lan"

[[device]]
name = "nic1"
model = "igb"
hub = "lan"

[[step]]
action = "start-l2"
l2 = "l2"
devices = ["nic0", "nic1"]

[[step]]
action = "l2-traffic"
l2 = "l2"
from = "nic0"
to = "nic1"
frames = 64

[[step]]
action = "stop-l2"
l2 = "l2"

[[expect]]
check = "l2-lossless"
"#;

    fn vector(vector: &str, action: &str, host_irq: u64, delivered: u64) -> L2VectorCount {
        L2VectorCount {
            vector: vector.into(),
            l2_action: action.into(),
            host_irq,
            host_chip: Some("IR-PCI-MSIX".into()),
            delivered,
            injected: None,
        }
    }

    /// amd-avic as measured: nothing through L1, everything posted.
    fn report(posted: Option<u64>, injected: u64, tx: (u64, u64), rx: (u64, u64)) -> Report {
        report_with(
            posted,
            injected,
            vec![
                vector("nic0/msix3", "TxRx-0", tx.0, tx.1),
                vector("nic1/msix1", "rx-0", rx.0, rx.1),
            ],
        )
    }

    fn report_with(posted: Option<u64>, injected: u64, vectors: Vec<L2VectorCount>) -> Report {
        let s = crate::scenario::parse(Path::new("nested/igb-l2-msix.toml"), SCENARIO).unwrap();
        let step = |index| StepReport {
            index,
            error: None,
            bypass: vec![],
            interrupts: vec![],
            kernel_warnings: vec![],
            l2: None,
        };
        let mut steps: Vec<StepReport> = (0..3).map(step).collect();
        steps[1].l2 = Some(Box::new(L2StepReport {
            frames_sent: Some(64),
            frames_received: Some(64),
            injected: Some(injected),
            posted,
            vectors,
            ..Default::default()
        }));
        let header = Header {
            variant: "amd-avic".into(),
            kernel_release: "7.2.13+deb14-amd64".into(),
            qemu_version: "10.0.13".into(),
        };
        let platform = Platform {
            kernel_release: "7.2.13+deb14-amd64".into(),
            modules_loaded: vec![],
            modules_failed: vec![],
            kvm_vendor: Some("kvm_amd".into()),
            apicv: Some(true),
            device_posted_irqs: Some(true),
            irq_remapping: Some("amd x2apic".into()),
            irq_posting: true,
            iommufd: false,
            tracing_failed: vec![],
            boot_warnings: vec![],
            ipiv: Some(true),
            x2avic: Some(false),
            posted_msi: None,
        };
        Report::from_parts(&s, header, platform, steps, None, None)
    }

    #[test]
    fn posted_interrupts_count_as_delivered_through_the_iommu() {
        let r = report(Some(40), 0, (0, 15), (0, 20));
        assert_eq!(l2_lossless(&r), (true, String::new()));
        let body = r.body();
        assert!(body.contains("posted by the IOMMU: > 0\n"), "{body}");
        assert!(
            body.contains("nic1/msix1 (rx-0)  L1 0, delivered in L2 > 0: posted  (IR-PCI-MSIX)"),
            "{body}"
        );
    }

    #[test]
    fn l2_handling_more_than_l1_and_the_iommu_fails() {
        let (ok, detail) = l2_lossless(&report(Some(30), 0, (0, 15), (0, 20)));
        assert!(!ok);
        assert!(
            detail
                .contains("L2's handlers ran 35 times more than L1 took, the IOMMU posted only 30"),
            "{detail}"
        );
        // without IOMMU counters, every vector beyond L1 is blamed
        let (ok, detail) = l2_lossless(&report(None, 0, (0, 15), (0, 20)));
        assert!(!ok);
        assert!(
            detail.contains("nic0/msix3 delivered in L2 15 times, raised (L1) only 0"),
            "{detail}"
        );
    }

    #[test]
    fn posted_but_never_handled_fails() {
        let (ok, detail) = l2_lossless(&report(Some(12), 0, (0, 0), (0, 0)));
        assert!(!ok);
        assert!(
            detail.contains("the IOMMU posted 12, L2 handled none"),
            "{detail}"
        );
    }

    #[test]
    fn through_l1_only_keeps_the_l1_bounds() {
        let r = report(None, 12, (5, 4), (7, 7));
        assert_eq!(l2_lossless(&r), (true, String::new()));
        let (ok, detail) = l2_lossless(&report(None, 11, (5, 4), (7, 0)));
        assert!(!ok);
        assert!(
            detail.contains("L1 took 12 device interrupts, KVM injected 11 into L2"),
            "{detail}"
        );
        assert!(
            detail.contains("nic1/msix1 raised 7 times (L1), never delivered in L2"),
            "{detail}"
        );
    }

    /// e1000e as measured: the sender's receive vector (rx-0) is kicked by
    /// the driver's watchdog or not, depending on how long the step took.
    /// The body is the same either way; the accounting still covers it.
    #[test]
    fn the_senders_receive_vector_shows_no_timing() {
        let e1000e = |idle: (u64, u64)| {
            report_with(
                None,
                9 + 7 + idle.0,
                vec![
                    vector("nic0/msix0", "rx-0", idle.0, idle.1),
                    vector("nic0/msix1", "tx-0", 9, 5),
                    vector("nic1/msix0", "rx-0", 7, 6),
                    vector("nic1/msix1", "tx-0", 0, 0),
                ],
            )
        };
        let (quiet, kicked) = (e1000e((0, 0)), e1000e((2, 1)));
        assert_eq!(quiet.body(), kicked.body());
        let body = quiet.body();
        assert!(
            body.contains("nic0/msix0 (rx-0)  no frames to receive: any count is its driver's own kick  (IR-PCI-MSIX)"),
            "{body}"
        );
        // the receiver's vectors keep their relations, its idle transmit
        // vector (which no watchdog kicks) its "none"
        assert!(
            body.contains("nic1/msix0 (rx-0)  L1 >= delivered in L2 > 0"),
            "{body}"
        );
        assert!(body.contains("nic1/msix1 (tx-0)  none"), "{body}");
        assert_eq!(l2_lossless(&kicked), (true, String::new()));
        // a kick L1 never saw but L2 ran still fails the accounting
        let (ok, detail) = l2_lossless(&e1000e((0, 1)));
        assert!(!ok);
        assert!(
            detail.contains("nic0/msix0 delivered in L2 1 times, raised (L1) only 0"),
            "{detail}"
        );
        let (ok, detail) = l2_lossless(&e1000e((2, 0)));
        assert!(!ok);
        assert!(
            detail.contains("nic0/msix0 raised 2 times (L1), never delivered in L2"),
            "{detail}"
        );
    }

    const VDPA_SCENARIO: &str = r#"
description = "vdpa_sim_net to a real L2"

[[device]]
name = "vdpa0"
model = "vdpa-sim-net"

[[step]]
action = "start-l2"
l2 = "l2"
devices = ["vdpa0"]

[[step]]
action = "l2-traffic"
l2 = "l2"
from = "vdpa0"
frames = 64

[[step]]
action = "stop-l2"
l2 = "l2"

[[expect]]
check = "l2-lossless"
"#;

    /// A vhost-vdpa vector: no L1 line, KVM's injections on its APIC vector.
    fn vdpa_vector(name: &str, action: &str, injected: u64, delivered: u64) -> L2VectorCount {
        L2VectorCount {
            host_chip: None,
            injected: Some(injected),
            ..vector(name, action, 0, delivered)
        }
    }

    /// The vDPA L2's traffic step: `rx`, `tx` = (KVM injected, L2 delivered).
    fn vdpa_report(injected: u64, rx: (u64, u64), tx: (u64, u64), received: u64) -> Report {
        let mut r = report(None, injected, (0, 0), (0, 0));
        r.scenario =
            crate::scenario::parse(Path::new("built-kernel/vdpa-sim-l2.toml"), VDPA_SCENARIO)
                .unwrap();
        let l2 = r.steps[1].l2.as_mut().unwrap();
        l2.frames_received = Some(received);
        l2.vectors = vec![
            vdpa_vector("vdpa0/config", "config", 0, 0),
            vdpa_vector("vdpa0/vq0", "input.0", rx.0, rx.1),
            vdpa_vector("vdpa0/vq1", "output.0", tx.0, tx.1),
        ];
        r
    }

    #[test]
    fn a_vhost_vdpa_vector_is_counted_where_kvm_injects_it() {
        let r = vdpa_report(50, (30, 28), (20, 20), 64);
        assert_eq!(l2_lossless(&r), (true, String::new()));
        let body = r.body();
        assert!(
            body.contains("l2-traffic l2 vdpa0 -> itself (looped back) x64"),
            "{body}"
        );
        assert!(
            body.contains(
                "KVM's injections into L2 = the vhost-vdpa vectors' irqfd injections (no L1 irq line)"
            ),
            "{body}"
        );
        assert!(
            body.contains(
                "vdpa0/vq0 (input.0)  KVM injected >= delivered in L2 > 0  (no irq line)"
            ),
            "{body}"
        );
        assert!(
            body.contains("vdpa0/config (config)  none  (no irq line)"),
            "{body}"
        );
    }

    #[test]
    fn a_vhost_vdpa_vector_handled_beyond_kvms_injections_fails() {
        let (ok, detail) = l2_lossless(&vdpa_report(50, (30, 31), (20, 20), 64));
        assert!(!ok);
        assert!(
            detail.contains("vdpa0/vq0 delivered in L2 31 times, KVM injected it only 30"),
            "{detail}"
        );
        // an MSI KVM injected that no vector of the L2's devices accounts for
        let (ok, detail) = l2_lossless(&vdpa_report(51, (30, 28), (20, 20), 64));
        assert!(!ok);
        assert!(
            detail.contains("KVM injected 50 on the vhost-vdpa vectors, but 51 into L2 in all"),
            "{detail}"
        );
        // injected, never handled; nothing on the receive queue; frames lost
        let (ok, detail) = l2_lossless(&vdpa_report(20, (0, 0), (20, 0), 60));
        assert!(!ok);
        assert!(
            detail.contains("vdpa0/vq1 injected 20 times by KVM, never delivered in L2"),
            "{detail}"
        );
        assert!(
            detail.contains("vdpa0's receive vectors took no interrupt in L2"),
            "{detail}"
        );
        assert!(
            detail.contains("64 frames asked, 64 sent, 60 received"),
            "{detail}"
        );
    }

    #[test]
    fn an_l2_vmms_irqfd_churn_is_shown_as_its_net_change() {
        let reg = |c: &str| BypassEvent::ConsumerRegistered {
            consumer: c.into(),
            ret: 0,
        };
        let unreg = |c: &str| BypassEvent::ConsumerUnregistered { consumer: c.into() };
        let p = BypassEvent::ProducerRegistered {
            producer: "nic0/msix1".into(),
            ret: 0,
        };
        let events = vec![
            reg("l2:nic0/msix1"),
            unreg("l2:nic0/msix1"),
            reg("l2:nic0/msix1"),
            p.clone(),
            reg("l2:no-producer-1"),
            unreg("l2:no-producer-1"),
            reg("l2:no-producer-2"),
            // not an L2's VMM: exactly as it happened
            reg("vm0:dev0/msi0"),
            unreg("vm0:dev0/msi0"),
            reg("vm0:dev0/msi0"),
        ];
        let (shown, line) = shown_events(&events, &["l2"], false);
        assert_eq!(
            shown,
            vec![&events[0], &p, &events[7], &events[8], &events[9]]
        );
        assert_eq!(
            line.as_deref(),
            Some("consumers without a producer (QEMU's INTx irqfds) registered and unregistered, net +1")
        );
        // unregister, register, unregister: the net change is the unregister
        let events = vec![
            unreg("l2:nic1/msix4"),
            reg("l2:nic1/msix4"),
            unreg("l2:nic1/msix4"),
        ];
        let (shown, line) = shown_events(&events, &["l2"], false);
        assert_eq!(shown, vec![&events[2]]);
        assert_eq!(line, None);
    }
}
