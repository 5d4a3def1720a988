//! Real L2 steps: an L2 Linux under the VMM the boot carries, given NICs
//! through L1's VFIO (`crate::nested`), and traffic between them.

use std::time::{Duration, Instant};

use wire::{AgentMessage, HostAction, Step};

use super::{JobState, Recv, Runner, StepOut};
use crate::interrupts::{find_line, normalize_chip, vfio_irq_name};
use crate::nested::L2Backing;
use crate::say;
use crate::trace::KEvent;
use crate::vfio::bind_vfio_pci;

impl Runner {
    /// Executes the real-L2 steps.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn nested_step(
        &mut self,
        st: &mut JobState,
        index: usize,
        step: &Step,
        out: &mut StepOut,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Result<(), String> {
        match step {
            Step::StartL2 {
                l2,
                devices,
                queues,
                append,
                hotplug,
            } => match self.start_l2(
                st,
                index,
                l2,
                devices,
                *queues,
                append.as_deref(),
                *hotplug,
                send,
            ) {
                Ok(r) => {
                    out.l2_report = Some(Box::new(r));
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Step::L2Traffic {
                l2,
                from,
                to,
                frames,
            } => match self.l2_traffic(
                st,
                index,
                l2,
                from,
                to.as_deref().unwrap_or(from),
                *frames,
                send,
                recv,
            ) {
                Ok(r) => {
                    out.l2_report = Some(Box::new(r));
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Step::L2Link { l2, device, flaps } => {
                let r = self.l2_link(st, index, l2, device, *flaps, send, recv)?;
                out.l2_report = Some(Box::new(r));
                Ok(())
            }
            Step::StopL2 { l2 } => match st.l2s.iter().position(|(n, _)| n == l2) {
                None => Err(format!("no running L2 named {l2}")),
                Some(i) => {
                    let (_, vm) = st.l2s.remove(i);
                    let t0 = Instant::now();
                    let last_sent = &mut self.last_sent;
                    let mut tick = || {
                        if last_sent.elapsed()
                            >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2)
                        {
                            send(AgentMessage::Progress { index });
                            *last_sent = Instant::now();
                        }
                    };
                    let r = vm.stop(&mut tick).map_err(|e| format!("{l2}: {e}"));
                    say!(
                        "{l2}: L2 powered off, its QEMU gone after {} ms",
                        t0.elapsed().as_millis()
                    );
                    r
                }
            },
            Step::L2Unplug { .. }
            | Step::L2Replug { .. }
            | Step::L2Pause { .. }
            | Step::KillL2 { .. }
            | Step::L2Resume { .. } => {
                let last_sent = &mut self.last_sent;
                let mut tick = || {
                    if last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2)
                    {
                        crate::watchdog::alive();
                        send(AgentMessage::Progress { index });
                        *last_sent = Instant::now();
                    }
                };
                crate::l2ctl::control(&mut st.l2s, step, &mut tick)
                    .map(|r| out.l2_report = r.map(Box::new))
            }
            _ => unreachable!("not a real-L2 step: {}", step.action()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_l2(
        &mut self,
        st: &mut JobState,
        index: usize,
        l2: &str,
        devices: &[String],
        queues: u32,
        append: Option<&str>,
        hotplug: bool,
        send: &mut dyn FnMut(AgentMessage),
    ) -> Result<wire::L2StepReport, String> {
        if st.l2s.iter().any(|(n, _)| n == l2) {
            return Err(format!("L2 {l2} is already running"));
        }
        let mut assigned = Vec::new();
        let mut vdpa = Vec::new();
        for d in devices {
            if st.is_open(d) {
                return Err(format!(
                    "device {d} is open in the agent: close-device before giving it to an L2"
                ));
            }
            let model = st
                .devices
                .get(d)
                .map(|x| x.model)
                .ok_or_else(|| format!("unknown device {d}"))?;
            if let Some(spec) = model.vdpa() {
                // created and bound to vhost_vdpa, left for the VMM to open
                let node = crate::vdpa::VhostNode::create(d, spec)?;
                say!(
                    "{d}: vDPA device for the L2's VMM at {}",
                    node.node.display()
                );
                assigned.push((
                    d.clone(),
                    L2Backing::VhostVdpa {
                        node: node.node.display().to_string(),
                    },
                ));
                vdpa.push(node);
                continue;
            }
            let bdf = st.bdf(d)?;
            bind_vfio_pci(&bdf)?;
            assigned.push((d.clone(), L2Backing::Vfio { bdf }));
        }
        let last_sent = &mut self.last_sent;
        let mut tick = || {
            if last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2) {
                crate::watchdog::alive();
                send(AgentMessage::Progress { index });
                *last_sent = Instant::now();
            }
        };
        let (vm, ready, took) =
            crate::nested::L2Linux::start(l2, &assigned, vdpa, queues, append, hotplug, &mut tick)
                .map_err(|e| format!("{l2}: {e}"))?;
        let wire::L2Message::Ready {
            uptime_ms, nics, ..
        } = ready
        else {
            unreachable!("start returns ready")
        };
        say!(
            "{l2}: L2 ready {} ms after its QEMU started (L2 uptime {uptime_ms} ms): {}",
            took.as_millis(),
            nics.iter()
                .map(|n| format!(
                    "{} {} {} queues {} carrier {}",
                    n.bdf, n.ifname, n.driver, n.queues, n.carrier
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        // L2 addresses become scenario device names
        let nics = nics
            .into_iter()
            .map(|mut n| {
                if let Some((name, ..)) = vm.devices.iter().find(|(_, _, b)| *b == n.bdf) {
                    n.bdf = name.clone();
                }
                n
            })
            .collect();
        st.l2s.push((l2.to_string(), vm));
        Ok(wire::L2StepReport {
            boot_ms: Some(took.as_millis() as u64),
            l2_uptime_ms: Some(uptime_ms),
            nics,
            ..Default::default()
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn l2_traffic(
        &mut self,
        st: &mut JobState,
        index: usize,
        l2: &str,
        from: &str,
        to: &str,
        frames: u32,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Result<wire::L2StepReport, String> {
        let posted_before =
            self.host_action(index, HostAction::IommuPosted, send, recv, &mut || {})?;
        let pos = st
            .l2s
            .iter()
            .position(|(n, _)| n == l2)
            .ok_or_else(|| format!("no running L2 named {l2}"))?;
        let devices = st.l2s[pos].1.devices.clone();
        let l2_addr = |d: &str| {
            devices
                .iter()
                .find(|(n, ..)| n == d)
                .map(|(_, _, b)| b.clone())
                .ok_or_else(|| format!("device {d} is not in L2 {l2}"))
        };
        let (from_l2, to_l2) = (l2_addr(from)?, l2_addr(to)?);
        let start = self.settled_cut(st, pos, index, send)?;
        let cmd = wire::L2Command::Traffic {
            from: from_l2,
            to: to_l2,
            frames,
        };
        let answer = self.l2_command(index, &mut st.l2s[pos].1, l2, &cmd, send)?;
        let (sent, received) = match answer {
            wire::L2Message::Traffic { sent, received, .. } => (sent, received),
            wire::L2Message::Failed { message } => return Err(format!("{l2}: {message}")),
            other => return Err(format!("{l2} answered {other:?}")),
        };
        let super::l2cut::Measured {
            posted_after,
            injected,
            vectors,
        } = self.close_cut(st, pos, index, &start, send, recv)?;
        say!(
            "{l2}: {sent} frames {from} -> {to}, {received} received; {}",
            vectors_line(&vectors)
        );
        let posted = say_injected_posted(l2, injected, posted_before, posted_after);
        Ok(wire::L2StepReport {
            posted,
            injected: Some(injected),
            frames_sent: Some(sent),
            frames_received: Some(received),
            vectors,
            ..Default::default()
        })
    }
}

/// Per MSI-X vector of an L2's `devices` (scenario name, L1 address, L2
/// address): the delta of its L1 host IRQ line between two readings of
/// L1's /proc/interrupts, and of its line in L2's between two readings of
/// L2's. A vector neither L1 nor L2 has wired is left out.
/// `nic0/msix1 L1 3 L2 3, ...`: a step's vectors for the console.
pub(super) fn vectors_line(vectors: &[wire::L2VectorCount]) -> String {
    vectors
        .iter()
        .map(|v| match v.injected {
            Some(i) => format!("{} KVM {i} L2 {}", v.vector, v.delivered),
            None => format!("{} L1 {} L2 {}", v.vector, v.host_irq, v.delivered),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Say what KVM injected into an L2 and the IOMMU posted during a step;
/// the posts, where the IOMMU counts them.
pub(super) fn say_injected_posted(
    l2: &str,
    injected: u64,
    posted_before: Option<u64>,
    posted_after: Option<u64>,
) -> Option<u64> {
    say!("{l2}: KVM injected {injected} MSIs into the L2 during the step");
    let posted = posted_before
        .zip(posted_after)
        .map(|(b, a)| a.saturating_sub(b));
    if let Some(p) = posted {
        say!("{l2}: the IOMMU posted {p} interrupts during the step");
    }
    posted
}

/// The APIC vectors of the MSIs KVM injected during a step (`kvm_msi_set_irq`).
pub(super) fn injected_vectors(acc: &[crate::trace::TraceRecord]) -> Vec<u32> {
    acc.iter()
        .filter_map(|r| match r.event {
            KEvent::Msi { vec, .. } => Some(vec),
            _ => None,
        })
        .collect()
}

/// A virtio-net's vector in L2 by its action (`virtio0-input.0`): the
/// virtqueue it signals (receive queue k is vq 2k, transmit queue k is vq
/// 2k + 1) as the scenario names it (`vdpa0/vq1`), or the configuration
/// vector (`vdpa0/config`).
pub(super) fn virtio_vector_name(device: &str, action: &str) -> Option<String> {
    let what = action.split_once('-').map_or(action, |(_, w)| w);
    if what == "config" {
        return Some(format!("{device}/config"));
    }
    let (dir, k) = what.split_once('.')?;
    let k: u32 = k.parse().ok()?;
    let vq = match dir {
        "input" => 2 * k,
        "output" => 2 * k + 1,
        _ => return None,
    };
    Some(format!("{device}/vq{vq}"))
}

/// Per MSI-X vector of an L2's device, as [`l2_vectors`] says; a vDPA
/// device (a virtio-net in L2, vhost-vdpa in L1) has no L1 line: its L2
/// vectors are taken from L2's /proc/interrupts, each with what KVM
/// injected on its APIC vector (`injected`: the MSI vectors of the step's
/// `kvm_msi_set_irq` events).
fn vdpa_vectors(
    name: &str,
    l2_bdf: &str,
    l2_deltas: &std::collections::BTreeMap<(String, u32), (String, u64)>,
    after: &[wire::L2Irq],
    injected: &[u32],
) -> Vec<wire::L2VectorCount> {
    let mut out = Vec::new();
    for ((bdf, index), (action, delivered)) in l2_deltas {
        if bdf != l2_bdf {
            continue;
        }
        let apic = after
            .iter()
            .find(|i| i.bdf == *bdf && i.index == *index)
            .and_then(|i| i.apic_vector);
        out.push(wire::L2VectorCount {
            vector: virtio_vector_name(name, action)
                .unwrap_or_else(|| format!("{name}/msix{index}")),
            l2_action: action
                .split_once('-')
                .map(|(_, q)| q.to_string())
                .unwrap_or_default(),
            host_irq: 0,
            host_chip: None,
            delivered: *delivered,
            injected: apic.map(|a| injected.iter().filter(|v| **v == u32::from(a)).count() as u64),
        });
    }
    out
}

pub(super) fn l2_vectors(
    st: &JobState,
    devices: &[(String, String, String)],
    l1_before: &str,
    l1_after: &str,
    before: &[wire::L2Irq],
    after: &[wire::L2Irq],
    injected: &[u32],
) -> Result<Vec<wire::L2VectorCount>, String> {
    let l2_deltas = crate::l2linux::deltas(before, after);
    let mut vectors = Vec::new();
    for (name, l1_bdf, l2_bdf) in devices {
        let model = st
            .devices
            .get(name)
            .map(|d| d.model)
            .ok_or_else(|| format!("unknown device {name}"))?;
        if model.vdpa().is_some() {
            vectors.extend(vdpa_vectors(name, l2_bdf, &l2_deltas, after, injected));
            continue;
        }
        for n in 0..model.vectors() {
            let line = vfio_irq_name("msix", n, l1_bdf);
            let b = find_line(l1_before, &line).map(|l| l.count).unwrap_or(0);
            let a = find_line(l1_after, &line);
            let l2 = l2_deltas.get(&(l2_bdf.clone(), n));
            if a.is_none() && l2.is_none() {
                continue; // a vector neither L1 nor L2 has wired
            }
            let action = l2.map(|(act, _)| {
                act.split_once('-')
                    .map(|(_, q)| q.to_string())
                    .unwrap_or_default()
            });
            vectors.push(wire::L2VectorCount {
                vector: model.vector_name(name, n),
                l2_action: action.unwrap_or_default(),
                host_irq: a.as_ref().map(|l| l.count.saturating_sub(b)).unwrap_or(0),
                host_chip: a.map(|l| normalize_chip(&l.chip)),
                delivered: l2.map(|(_, c)| *c).unwrap_or(0),
                injected: None,
            });
        }
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_vectors_are_named_by_their_virtqueue() {
        assert_eq!(
            virtio_vector_name("vdpa0", "virtio0-input.0").as_deref(),
            Some("vdpa0/vq0")
        );
        assert_eq!(
            virtio_vector_name("vdpa0", "virtio0-output.0").as_deref(),
            Some("vdpa0/vq1")
        );
        assert_eq!(
            virtio_vector_name("vdpa0", "virtio3-output.1").as_deref(),
            Some("vdpa0/vq3")
        );
        assert_eq!(
            virtio_vector_name("vdpa0", "virtio0-config").as_deref(),
            Some("vdpa0/config")
        );
        assert_eq!(virtio_vector_name("vdpa0", "virtio0-weird"), None);
    }
}
