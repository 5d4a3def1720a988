//! `route` steps (a GSI route changed under a live irqfd) and the `fire`
//! of a vector whose route one changed: where its interrupts went (L1's
//! line, KVM's injections, each L2 vector that took them).

use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use wire::{AgentMessage, RouteSeen, RouteTo, VectorCount};

use super::devices::write_ops;
use super::{parse_vector, JobState, Runner};
use crate::interrupts::{find_line, normalize_chip, vfio_irq_name};
use crate::l2::GuestMem;
use crate::say;
use crate::trace::KEvent;

/// How long one raised interrupt may take to show up anywhere.
const FIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the L2s and KVM's work queue get to catch up after the last one.
const SETTLE: Duration = Duration::from_millis(300);

impl Runner {
    /// Point `vm`'s route of `vector` elsewhere, the irqfd staying assigned.
    pub(super) fn reroute(
        &mut self,
        st: &mut JobState,
        vm: &str,
        vector: &str,
        to: RouteTo,
        l2_vector: Option<u8>,
    ) -> Result<(), String> {
        let next = st.next_vector;
        let v = st.vm(vm)?;
        if !v.irqfds.contains_key(vector) {
            return Err(format!("{vm} has no irqfd on {vector}"));
        }
        let fresh = l2_vector.is_none();
        let vec = match l2_vector {
            Some(v) => v,
            None => {
                let n = u16::from(super::kvm::FIRST_VECTOR) + next;
                u8::try_from(n)
                    .ok()
                    .filter(|n| *n < 0xff)
                    .ok_or("out of MSI vectors for routes")?
            }
        };
        let r = v.reroute(vector, to, vec)?;
        if fresh {
            st.next_vector += 1;
        }
        say!(
            "{vm}: route of {vector} (gsi {}) now {} vector {vec:#x}{}",
            r.gsi,
            to.name(),
            r.pin.map(|p| format!(" pin {p}")).unwrap_or_default()
        );
        Ok(())
    }

    /// Whether a `route` step changed the route of `vector` in a VM whose
    /// irqfd holds it.
    pub(super) fn rerouted(st: &JobState, vector: &str) -> bool {
        st.vms.iter().any(|(_, vm)| {
            vm.irqfds.contains_key(vector)
                && vm
                    .routes()
                    .iter()
                    .any(|r| r.source == vector && r.to.is_some())
        })
    }

    /// `fire` of a rerouted MSI or MSI-X vector: raise it `count` times,
    /// each time waiting until it shows up in L1 or in a running L2 (a
    /// posted one with no L2 running shows up nowhere: it waits out the
    /// timeout), then count where it went.
    pub(super) fn fire_rerouted(
        &mut self,
        st: &mut JobState,
        vector: &str,
        count: u32,
        index: usize,
        send: &mut dyn FnMut(AgentMessage),
    ) -> Result<VectorCount, String> {
        let (device, kind, idx) = parse_vector(vector)?;
        if st.masked.contains(vector) {
            return Err(format!("{vector} is masked: fire it after unmask"));
        }
        let spec = st.model(device)?;
        let dev = st.device(device)?;
        // the route of the first VM holding it; the MSI vectors it ever
        // had there (a stale MSI injection shows as one of them), the GSI
        let mut seen: Option<RouteSeen> = None;
        let mut gsis = Vec::new();
        let mut l2s: Vec<(Arc<GuestMem>, [u32; 256])> = Vec::new();
        for (_, vm) in &st.vms {
            if !vm.irqfds.contains_key(vector) {
                continue;
            }
            let Some(r) = vm.routes().iter().find(|r| r.source == vector) else {
                continue;
            };
            let to = r.to.unwrap_or(RouteTo::Msi);
            if to == RouteTo::Ioapic {
                gsis.push(r.gsi);
            }
            seen.get_or_insert(RouteSeen {
                to,
                l2_vector: (to != RouteTo::None).then_some(r.vector),
                l2_vectors: Vec::new(),
            });
            if let Some(l2) = vm.running_l2() {
                l2s.push((l2.mem.clone(), l2.mem.counters()));
            }
        }
        let mut seen = seen.ok_or_else(|| format!("no VM routes {vector}"))?;
        let msi_vectors: Vec<u8> = st
            .vms
            .iter()
            .filter(|(_, vm)| vm.irqfds.contains_key(vector))
            .flat_map(|(_, vm)| vm.vectors_of(vector))
            .collect();
        let irq_name = vfio_irq_name(kind, idx, &dev.bdf);
        let host_line = || {
            std::fs::read_to_string("/proc/interrupts")
                .ok()
                .and_then(|t| find_line(&t, &irq_name))
        };
        let took = |l2s: &[(Arc<GuestMem>, [u32; 256])]| -> [u64; 256] {
            let mut out = [0u64; 256];
            for (mem, base) in l2s {
                for (v, o) in out.iter_mut().enumerate().skip(0x40) {
                    *o += crate::l2::delta(base[v], mem.count(v as u8));
                }
            }
            out
        };
        let injected_now = |me: &Self| {
            me.injected(&msi_vectors)
                + me.acc
                    .iter()
                    .filter(|r| matches!(r.event, KEvent::SetIrq { gsi, level: 1 } if gsis.contains(&gsi)))
                    .count() as u64
        };
        // where the route delivers into a running L2, the next interrupt
        // waits until the L2 took this one (an IOAPIC pin's irqfd injects
        // from a work item, and a pending edge or IRR bit coalesces the
        // next); elsewhere until L1 saw it and KVM injected it (if it can)
        let into_l2 = !l2s.is_empty() && seen.to.delivers();
        let base = host_line().map(|l| l.count).unwrap_or(0);
        let host = |line: Option<crate::interrupts::IrqLine>| {
            line.map(|l| l.count.saturating_sub(base)).unwrap_or(0)
        };
        let t_all = Instant::now();
        for i in 0..u64::from(count) {
            write_ops(dev, spec.fire, idx)?;
            let t0 = Instant::now();
            loop {
                let arrived: u64 = took(&l2s).iter().sum();
                let done = arrived > i
                    || (!into_l2 && host(host_line()) > i && {
                        self.poll_trace();
                        !seen.to.injects() || injected_now(self) > i
                    });
                if done {
                    break;
                }
                self.heartbeat(index, send);
                if t0.elapsed() > FIRE_TIMEOUT {
                    say!(
                        "fire {vector}: interrupt {} seen nowhere after {FIRE_TIMEOUT:?}",
                        i + 1
                    );
                    break;
                }
                sleep(Duration::from_micros(200));
            }
            write_ops(dev, spec.ack, idx)?;
        }
        // KVM injects from its irqfd work queue, the L2 takes it later
        let t0 = Instant::now();
        while t0.elapsed() < SETTLE {
            self.poll_trace();
            sleep(Duration::from_millis(5));
        }
        let by_vector = took(&l2s);
        seen.l2_vectors = by_vector
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(v, n)| (v as u8, *n))
            .collect();
        let injected = injected_now(self);
        let line = host_line();
        say!(
            "fire {vector}: {count} raised in {} us through route {}; L2 vectors {:?}",
            t_all.elapsed().as_micros(),
            seen.to.name(),
            seen.l2_vectors
        );
        for (name, vm) in &st.vms {
            if let Some(e) = vm.running_l2().and_then(|l| l.error()) {
                return Err(format!("{name}: {e}"));
            }
        }
        Ok(VectorCount {
            vector: vector.to_string(),
            raised: u64::from(count),
            signalled: None,
            host_irq: host(line.clone()),
            host_chip: line.map(|l| normalize_chip(&l.chip)),
            injected,
            delivered: (!l2s.is_empty()).then(|| by_vector.iter().sum()),
            resampled: None,
            unmasked: None,
            eoi_trapped: None,
            route: Some(seen),
        })
    }
}
