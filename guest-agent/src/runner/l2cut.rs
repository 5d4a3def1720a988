//! A settled cut of a real L2's interrupt counts: L1's host IRQ lines of
//! the L2's devices, L2's MSI-X lines and KVM's injections, read while none
//! of them moves, so that every interrupt lies on the same side of the cut
//! in all three.
//!
//! Devices interrupt without the scenario asking: e1000e's watchdog kicks
//! its receive vector every 2 s, and QEMU's 82574 sends a vector again when
//! its throttling timer expires. One that fell between the reading of L1's
//! /proc/interrupts and of L2's was counted by one side only. Measured on
//! intel-ir with Debian 7.2 at a load average of 7, before the cut: "L1 took
//! 113 device interrupts, KVM injected 117 into L2" (KVM's count then ran
//! from the start of the step), and "nic0/msix0 raised 2 times (L1), never
//! delivered in L2" (L2 read its counts before L1 did).

use std::time::{Duration, Instant};

use wire::{AgentMessage, HostAction, L2Command, L2Irq, L2Message, L2VectorCount};

use super::nested::l2_vectors;
use super::{JobState, Recv, Runner};
use crate::trace::KEvent;

/// How long a cut may wait for the counts to hold still. e1000e's watchdog,
/// the only source measured so far, leaves about 2 s between its kicks;
/// one reading of L2's is a command and its answer over the L2's emulated
/// UART, in a nested guest under TCG: 0.4-1.3 s at a load average of 4-6,
/// up to 4 s at 10.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// What moved during an L2 step, between its two cuts.
pub(super) struct Measured {
    /// The IOMMU's posted count after the step (none: it has no counter).
    pub posted_after: Option<u64>,
    /// KVM's MSI injections.
    pub injected: u64,
    pub vectors: Vec<L2VectorCount>,
}

/// The counts at a cut.
pub(super) struct Cut {
    /// L1's /proc/interrupts.
    pub l1: String,
    /// L2's MSI-X lines.
    pub l2: Vec<L2Irq>,
    /// Trace records before the cut (an index into the runner's `acc`).
    pub trace: usize,
}

impl Runner {
    /// Read L1's lines, L2's lines and L1's again, the trace drained before
    /// and after: the cut is taken once L1's lines of the L2's `devices`
    /// did not move and KVM injected no MSI around L2's reading. Then every
    /// interrupt L1 took before the cut was injected before it, and
    /// handled in L2 before L2 read its lines (L2 reads them only after
    /// taking a command over its serial port, long after an injection),
    /// and every one after the cut comes after L2's reading too. Posted
    /// interrupts pass neither L1 nor KVM: the IOMMU's count around the
    /// step bounds them.
    pub(super) fn settled_cut(
        &mut self,
        st: &mut JobState,
        pos: usize,
        index: usize,
        send: &mut dyn FnMut(AgentMessage),
    ) -> Result<Cut, String> {
        let l2 = st.l2s[pos].0.clone();
        let devices = st.l2s[pos].1.devices.clone();
        let t0 = Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            self.poll_trace();
            let from = self.acc.len();
            let l1a = read_l1();
            let l2r = self.l2_counts(st, pos, index, send)?;
            let l1b = read_l1();
            self.poll_trace();
            let injected = self.acc[from..]
                .iter()
                .filter(|r| matches!(r.event, KEvent::Msi { .. }))
                .count();
            let vectors = l2_vectors(st, &devices, &l1a, &l1b, &l2r, &l2r, &[])?;
            let Some(moved) = moved(&vectors, injected) else {
                crate::say!(
                    "{l2}: counts settled after {tries} reading(s), {} ms",
                    t0.elapsed().as_millis()
                );
                return Ok(Cut {
                    l1: l1b,
                    l2: l2r,
                    trace: self.acc.len(),
                });
            };
            if t0.elapsed() > SETTLE_LIMIT {
                return Err(format!(
                    "{l2}: the interrupt counts did not hold still around one reading of L2's in {} s ({tries} readings; the last: {moved})",
                    SETTLE_LIMIT.as_secs(),
                ));
            }
        }
    }

    /// The end of an L2 step measured from `start`: a settled cut, then
    /// the IOMMU's posted count, and what moved between the two cuts.
    pub(super) fn close_cut(
        &mut self,
        st: &mut JobState,
        pos: usize,
        index: usize,
        start: &Cut,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Result<Measured, String> {
        let end = self.settled_cut(st, pos, index, send)?;
        let posted_after =
            self.host_action(index, HostAction::IommuPosted, send, recv, &mut || {})?;
        let msis = super::nested::injected_vectors(&self.acc[start.trace..end.trace]);
        let devices = &st.l2s[pos].1.devices;
        let vectors = l2_vectors(st, devices, &start.l1, &end.l1, &start.l2, &end.l2, &msis)?;
        Ok(Measured {
            posted_after,
            injected: msis.len() as u64,
            vectors,
        })
    }

    fn l2_counts(
        &mut self,
        st: &mut JobState,
        pos: usize,
        index: usize,
        send: &mut dyn FnMut(AgentMessage),
    ) -> Result<Vec<L2Irq>, String> {
        let (name, vm) = &mut st.l2s[pos];
        match self.l2_command(index, vm, name, &L2Command::Counts, send)? {
            L2Message::Counts { interrupts } => Ok(interrupts),
            L2Message::Failed { message } => Err(format!("{name}: {message}")),
            other => Err(format!("{name} answered {other:?}")),
        }
    }
}

/// What moved between two readings of a cut, if anything: the lines that
/// counted, and KVM's injections.
fn moved(vectors: &[L2VectorCount], injected: usize) -> Option<String> {
    let mut what: Vec<String> = vectors
        .iter()
        .filter(|v| v.host_irq > 0 || v.delivered > 0)
        .map(|v| format!("{} L1 +{} L2 +{}", v.vector, v.host_irq, v.delivered))
        .collect();
    if injected > 0 {
        what.push(format!("KVM injected {injected}"));
    }
    (!what.is_empty()).then(|| what.join(", "))
}

fn read_l1() -> String {
    std::fs::read_to_string("/proc/interrupts").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(vector: &str, host_irq: u64, delivered: u64) -> L2VectorCount {
        L2VectorCount {
            vector: vector.into(),
            l2_action: "rx-0".into(),
            host_irq,
            host_chip: None,
            delivered,
            injected: None,
        }
    }

    #[test]
    fn a_cut_holds_only_when_nothing_moved() {
        assert_eq!(
            moved(&[v("nic0/msix0", 0, 0), v("nic1/msix0", 0, 0)], 0),
            None
        );
        // the e1000e watchdog's kick, seen by L1 and not yet by L2
        assert_eq!(
            moved(&[v("nic0/msix0", 1, 0), v("nic1/msix0", 0, 0)], 0).as_deref(),
            Some("nic0/msix0 L1 +1 L2 +0")
        );
        // posted into L2 (no L1 line), or injected by KVM with no line moving
        assert_eq!(
            moved(&[v("nic0/msix0", 0, 1)], 0).as_deref(),
            Some("nic0/msix0 L1 +0 L2 +1")
        );
        assert_eq!(
            moved(&[v("nic0/msix0", 0, 0)], 2).as_deref(),
            Some("KVM injected 2")
        );
    }
}
