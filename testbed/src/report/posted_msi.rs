//! VT-d posted MSIs in L1 (the `intel-posted-msi` variant): the intel-iommu's
//! posting counters over a scenario, and the check every such report
//! carries, `posted-msi`: every device MSI L1 took was posted by the IOMMU
//! and L1 took every notification it sent.
//!
//! Linux posts the MSIs of PCI devices only (`intel_irq_remapping_alloc()`,
//! `X86_IRQ_ALLOC_TYPE_PCI_MSI`/`_MSIX`): the IO-APIC, HPET and the IOMMU's
//! own interrupts stay remapped. Its notification handler
//! (`sysvec_posted_msi_notification()`) counts once per notification (`PMN`)
//! and runs the handler of every vector it finds in PIR, each counted on its
//! own /proc/interrupts line. So over a scenario the IOMMU's `pi-posted`
//! equals L1's PCI MSI lines, and its `pi-notified` equals `PMN`: the IOMMU
//! notifies only when it set ON, and Linux clears ON once per notification.

use serde::Serialize;

use super::{checks::fail, CheckResult, Report};

/// Deltas of the intel-iommu's posted-interrupt counters (read-only QOM
/// properties of qemu-patches/0042) over one scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VtdPiCounts {
    /// `pi-posted`: PIR bits set through posted IRTEs.
    pub posted: u64,
    /// `pi-notified`: of those, the ones that set ON and sent the notification.
    pub notified: u64,
    /// `pi-urgent`: notified while SN was set (URG).
    pub urgent: u64,
    /// `pi-suppressed`: SN set, URG clear: PIR only.
    pub suppressed: u64,
    /// `pi-outstanding`: ON already set: PIR only.
    pub outstanding: u64,
    /// `pi-faults`: not posted: bad descriptor address or reserved bits.
    pub faults: u64,
    /// `irq-remapped`: interrupts remapped to an APIC (IO-APIC, timers, ...).
    pub remapped: u64,
}

impl VtdPiCounts {
    /// The QOM properties, in field order.
    pub const PROPERTIES: [&'static str; 7] = [
        "pi-posted",
        "pi-notified",
        "pi-urgent",
        "pi-suppressed",
        "pi-outstanding",
        "pi-faults",
        "irq-remapped",
    ];

    pub fn from_values(v: [u64; 7]) -> VtdPiCounts {
        VtdPiCounts {
            posted: v[0],
            notified: v[1],
            urgent: v[2],
            suppressed: v[3],
            outstanding: v[4],
            faults: v[5],
            remapped: v[6],
        }
    }

    fn values(&self) -> [u64; 7] {
        [
            self.posted,
            self.notified,
            self.urgent,
            self.suppressed,
            self.outstanding,
            self.faults,
            self.remapped,
        ]
    }

    /// `self - before`, counter by counter (counters only grow).
    pub fn since(&self, before: &VtdPiCounts) -> VtdPiCounts {
        let (a, b) = (self.values(), before.values());
        VtdPiCounts::from_values(std::array::from_fn(|i| a[i].saturating_sub(b[i])))
    }
}

/// The `posted-msi` check of a report whose variant posts L1's MSIs; `None`
/// elsewhere.
pub(super) fn check(r: &Report) -> Option<CheckResult> {
    let counts = r.vtd_pi.as_ref()?;
    let (passed, detail) = posted_msi(r, counts);
    Some(CheckResult {
        expectation: "posted-msi".into(),
        passed,
        detail,
    })
}

fn posted_msi(r: &Report, counts: &Result<VtdPiCounts, String>) -> (bool, String) {
    let c = match counts {
        Ok(c) => c,
        Err(e) => return fail(vec![format!("cannot tell: {e}")]),
    };
    match r.platform.posted_msi {
        Some(true) => {}
        Some(false) => {
            return fail(vec![
                "L1's kernel can post MSIs but does not (it needs intremap=posted_msi and an IOMMU that reports posting)".into(),
            ])
        }
        None => {
            return fail(vec![
                "L1's kernel cannot post MSIs: no PMN line in /proc/interrupts (CONFIG_X86_POSTED_MSI, Linux 6.10+; Debian's kernels lack it, a git: kernel has it)".into(),
            ])
        }
    }
    let Some(l1) = r.done.as_ref().and_then(|d| d.l1_msi) else {
        return fail(vec!["cannot tell: the agent did not count L1's MSIs".into()]);
    };
    let Some(pmn) = l1.posted_msi_notifications else {
        return fail(vec!["cannot tell: L1's PMN count went away".into()]);
    };
    let mut problems = Vec::new();
    if c.faults > 0 {
        problems.push(format!(
            "the IOMMU could not post {} interrupts (descriptor faults)",
            c.faults
        ));
    }
    if c.posted != l1.pci_msi {
        problems.push(format!(
            "L1 took {} device MSIs but the IOMMU posted {}",
            l1.pci_msi, c.posted
        ));
    }
    if c.posted != c.notified + c.suppressed + c.outstanding {
        problems.push(format!(
            "the IOMMU's counters disagree: posted {} != notified {} + suppressed {} + outstanding {}",
            c.posted, c.notified, c.suppressed, c.outstanding
        ));
    }
    if c.notified != pmn {
        problems.push(format!(
            "the IOMMU sent {} notifications but L1 took {pmn}",
            c.notified
        ));
    }
    if !problems.is_empty() {
        return fail(problems);
    }
    // how many MSIs a real L2's NIC made depends on NAPI timing, and how
    // many notifications carried them on timing everywhere: not in a body
    if c.posted == 0 {
        return (true, "no device MSI in L1: nothing to post".into());
    }
    let how_many = if r.scenario.needs_l2() {
        "all of L1's device MSIs (> 0)".to_owned()
    } else {
        format!("all {} of L1's device MSIs", c.posted)
    };
    (
        true,
        format!("{how_many} posted by the IOMMU; L1 took every notification"),
    )
}

#[cfg(test)]
mod tests;
