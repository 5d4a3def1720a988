//! An `l2-link` step in the report: its lines, its link vector's counts
//! and its part of the `l2-lossless` check.
//!
//! Unlike frames, link changes make a known number of interrupts: the
//! agent waits, after each change, until L2's driver took a new interrupt
//! on the link vector and the carrier followed, so no two changes merge.
//! The body shows the link vector's numbers; the queue vectors, which the
//! igb driver's watchdog raises (EICS) on its own timer, keep relations.

use wire::{L2StepReport, L2VectorCount};

/// The lines an `l2-link` step adds under its step line.
pub(super) fn link_lines(l2: &L2StepReport) -> Vec<String> {
    let Some(changes) = l2.link_changes else {
        return vec![];
    };
    let mut lines = vec![format!(
        "link changes {changes}, each seen by L2's driver before the next"
    )];
    lines.extend(super::l2::delivery_lines(l2));
    lines
}

/// `device`'s link vector among an L2 step's vectors: the one L2's driver
/// names after the interface itself (no queue in its action), e.g.
/// igb's `eth0` on msix0 ("other": link and other causes).
pub fn link_vector<'a>(l2: &'a L2StepReport, device: &str) -> Option<&'a L2VectorCount> {
    l2.vectors.iter().find(|v| is_link_vector(v, device))
}

pub fn is_link_vector(v: &L2VectorCount, device: &str) -> bool {
    v.l2_action.is_empty() && v.vector.split_once('/').is_some_and(|(d, _)| d == device)
}

/// What a snapshot says about an `l2-link` step's link vector: its
/// numbers, which do not depend on timing.
pub fn link_vector_counts(v: &L2VectorCount, changes: u64, posted: Option<u64>) -> String {
    let chip = v.host_chip.as_deref().unwrap_or("no irq line");
    let how = if posted.is_some_and(|p| p > 0) && v.delivered > v.host_irq {
        ", posted"
    } else {
        ""
    };
    format!(
        "link changes {changes}: L1 {}, delivered in L2 {}{how}  ({chip})",
        v.host_irq, v.delivered
    )
}

/// An `l2-link` step's own part of `l2-lossless`: the host made every
/// link change asked for, and on `device`'s link vector L2's driver took
/// exactly one interrupt per change, each of which L1's host IRQ line
/// took, or, where the IOMMU posts, L1 and the IOMMU together.
pub(super) fn link_problems(
    k: usize,
    device: &str,
    flaps: u32,
    l2: &L2StepReport,
    problems: &mut Vec<String>,
) {
    let asked = 2 * u64::from(flaps);
    let changes = match l2.link_changes {
        Some(c) if c == asked => c,
        Some(c) => {
            problems.push(format!("step {k}: {asked} link changes asked, {c} made"));
            c
        }
        None => {
            problems.push(format!("step {k}: no link changes counted"));
            return;
        }
    };
    let Some(v) = link_vector(l2, device) else {
        problems.push(format!("step {k}: no link vector of {device} counted"));
        return;
    };
    if v.delivered != changes {
        problems.push(format!(
            "step {k}: {} (link) delivered in L2 {} times for {changes} link changes",
            v.vector, v.delivered
        ));
    }
    match l2.posted.filter(|p| *p > 0) {
        None if v.host_irq != changes => problems.push(format!(
            "step {k}: {} (link) took {} interrupts in L1 for {changes} link changes",
            v.vector, v.host_irq
        )),
        Some(posted) if v.host_irq > changes || v.host_irq + posted < changes => {
            problems.push(format!(
                "step {k}: {} (link) took {} interrupts in L1 and the IOMMU posted {posted} for {changes} link changes",
                v.vector, v.host_irq
            ))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use wire::{Platform, StepReport};

    use super::*;
    use crate::report::{Header, Report};

    const SCENARIO: &str = r#"
description = "an igb's link flapped under a real L2"

[[device]]
name = "nic0"
model = "igb"

[[step]]
action = "start-l2"
l2 = "l2"
devices = ["nic0"]

[[step]]
action = "l2-link"
l2 = "l2"
device = "nic0"
flaps = 3

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

    /// A link step's report: `link` = (L1, L2) on nic0/msix0, the queue
    /// vector's as the watchdog makes them.
    fn report(changes: u64, posted: Option<u64>, injected: u64, link: (u64, u64)) -> Report {
        let s = crate::scenario::parse(Path::new("nested/igb-l2-link.toml"), SCENARIO).unwrap();
        let step = |index| StepReport {
            index,
            error: None,
            bypass: vec![],
            interrupts: vec![],
            kernel_warnings: vec![],
            l2: None,
        };
        let mut steps: Vec<StepReport> = (0..3).map(step).collect();
        let tx = if posted.is_some() { (0, 7) } else { (9, 7) };
        steps[1].l2 = Some(Box::new(L2StepReport {
            link_changes: Some(changes),
            injected: Some(injected),
            posted,
            vectors: vec![
                vector("nic0/msix0", "", link.0, link.1),
                vector("nic0/msix1", "TxRx-0", tx.0, tx.1),
            ],
            ..Default::default()
        }));
        let header = Header {
            variant: "amd-ir".into(),
            kernel_release: "7.2.13+deb14-amd64".into(),
            qemu_version: "10.0.2".into(),
        };
        Report::from_parts(&s, header, Platform::default(), steps, None, None)
    }

    #[test]
    fn every_link_change_delivered_through_l1_passes() {
        let r = report(6, None, 15, (6, 6));
        assert_eq!(super::super::l2::l2_lossless(&r), (true, String::new()));
        let body = r.body();
        assert!(body.contains("l2-link l2 nic0 down and up x3\n"), "{body}");
        assert!(
            body.contains("link changes 6, each seen by L2's driver before the next\n"),
            "{body}"
        );
        assert!(
            body.contains(
                "nic0/msix0 (other)  link changes 6: L1 6, delivered in L2 6  (IR-PCI-MSIX)"
            ),
            "{body}"
        );
        assert!(
            body.contains("nic0/msix1 (TxRx-0)  L1 >= delivered in L2 > 0  (IR-PCI-MSIX)"),
            "{body}"
        );
    }

    /// The expectation can fail: L2's driver took one link interrupt less
    /// than the host made link changes (and than L1 took).
    #[test]
    fn a_lost_link_interrupt_fails() {
        let (ok, detail) = super::super::l2::l2_lossless(&report(6, None, 15, (6, 5)));
        assert!(!ok);
        assert!(
            detail.contains("step 2: nic0/msix0 (link) delivered in L2 5 times for 6 link changes"),
            "{detail}"
        );
        // lost before L1: L1's line and L2 both short, KVM injected what L1 took
        let (ok, detail) = super::super::l2::l2_lossless(&report(6, None, 14, (5, 5)));
        assert!(!ok);
        assert!(
            detail.contains("nic0/msix0 (link) took 5 interrupts in L1 for 6 link changes"),
            "{detail}"
        );
        // one more in L2 than changes made: invented, or two changes merged elsewhere
        let (ok, detail) = super::super::l2::l2_lossless(&report(6, None, 16, (7, 7)));
        assert!(!ok);
        assert!(
            detail.contains("delivered in L2 7 times for 6 link changes"),
            "{detail}"
        );
        // a change the host did not make
        let (ok, detail) = super::super::l2::l2_lossless(&report(5, None, 14, (5, 5)));
        assert!(!ok);
        assert!(
            detail.contains("step 2: 6 link changes asked, 5 made"),
            "{detail}"
        );
    }

    #[test]
    fn posted_link_interrupts_are_counted_by_the_iommu() {
        let r = report(6, Some(13), 0, (0, 6));
        assert_eq!(super::super::l2::l2_lossless(&r), (true, String::new()));
        let body = r.body();
        assert!(
            body.contains("nic0/msix0 (other)  link changes 6: L1 0, delivered in L2 6, posted  (IR-PCI-MSIX)"),
            "{body}"
        );
        // the IOMMU posted fewer than L2 took beyond L1
        let (ok, detail) = super::super::l2::l2_lossless(&report(6, Some(4), 0, (0, 6)));
        assert!(!ok);
        assert!(
            detail.contains("nic0/msix0 (link) took 0 interrupts in L1 and the IOMMU posted 4 for 6 link changes"),
            "{detail}"
        );
        // posted, but one never reached L2's driver
        let (ok, detail) = super::super::l2::l2_lossless(&report(6, Some(13), 0, (0, 5)));
        assert!(!ok);
        assert!(
            detail.contains("nic0/msix0 (link) delivered in L2 5 times for 6 link changes"),
            "{detail}"
        );
    }
}
