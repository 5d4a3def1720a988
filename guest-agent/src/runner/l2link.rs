//! `l2-link`: a NIC's link goes down and up through L0's QMP while a real
//! L2 runs; every change is an interrupt on the NIC's link vector, which
//! needs no DMA, counted in L1 and in L2 as `l2-traffic` counts frames'.

use std::time::{Duration, Instant};

use wire::{AgentMessage, HostAction, L2Command, L2Message};

use super::{JobState, Recv, Runner};
use crate::nested::L2Linux;
use crate::say;

/// What the L2 agent said once the link was as asked.
struct LinkState {
    link_irqs: u64,
}

impl Runner {
    /// One command to a running L2, sending heartbeats while it runs.
    pub(super) fn l2_command(
        &mut self,
        index: usize,
        vm: &mut L2Linux,
        l2: &str,
        cmd: &L2Command,
        send: &mut dyn FnMut(AgentMessage),
    ) -> Result<L2Message, String> {
        let last_sent = &mut self.last_sent;
        let mut tick = || {
            if last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2) {
                crate::watchdog::alive();
                send(AgentMessage::Progress { index });
                *last_sent = Instant::now();
            }
        };
        vm.command(l2, cmd, &mut tick)
            .map_err(|e| format!("{l2}: {e}"))
    }

    /// Wait in L2 for carrier `up` and a link vector count of at least
    /// `link_irqs` on the NIC at L2 address `bdf`.
    #[allow(clippy::too_many_arguments)]
    fn await_link(
        &mut self,
        index: usize,
        vm: &mut L2Linux,
        l2: &str,
        bdf: &str,
        up: bool,
        link_irqs: u64,
        send: &mut dyn FnMut(AgentMessage),
    ) -> Result<LinkState, String> {
        let cmd = L2Command::Link {
            bdf: bdf.to_string(),
            up,
            link_irqs,
        };
        match self.l2_command(index, vm, l2, &cmd, send)? {
            L2Message::Link { link_irqs, .. } => Ok(LinkState { link_irqs }),
            L2Message::Failed { message } => Err(format!("{l2}: {message}")),
            other => Err(format!("{l2} answered {other:?}")),
        }
    }

    /// Flap `device`'s link `flaps` times (down, then up) through the
    /// host; after each change wait in L2 for a new interrupt on the link
    /// vector and the carrier to follow, so that every change is one
    /// interrupt of its own.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn l2_link(
        &mut self,
        st: &mut JobState,
        index: usize,
        l2: &str,
        device: &str,
        flaps: u32,
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
        let bdf = devices
            .iter()
            .find(|(n, ..)| n == device)
            .map(|(_, _, b)| b.clone())
            .ok_or_else(|| format!("device {device} is not in L2 {l2}"))?;
        let first = self.await_link(index, &mut st.l2s[pos].1, l2, &bdf, true, 0, send)?;
        let start = self.settled_cut(st, pos, index, send)?;
        let mut seen = first.link_irqs;
        let mut last = None;
        let mut changes = 0u64;
        let t0 = Instant::now();
        for _ in 0..flaps {
            for up in [false, true] {
                let action = HostAction::SetLink {
                    device: device.to_string(),
                    up,
                };
                self.host_action(index, action, send, recv, &mut || {})?;
                changes += 1;
                let now =
                    self.await_link(index, &mut st.l2s[pos].1, l2, &bdf, up, seen + 1, send)?;
                seen = now.link_irqs;
                last = Some(now);
            }
        }
        let last_irqs = last.map_or(first.link_irqs, |l| l.link_irqs);
        let super::l2cut::Measured {
            posted_after,
            injected,
            vectors,
        } = self.close_cut(st, pos, index, &start, send, recv)?;
        say!(
            "{l2}: {device} link changed {changes} times in {} ms, its link vector in L2 {} -> {}; {}",
            t0.elapsed().as_millis(),
            first.link_irqs,
            last_irqs,
            super::nested::vectors_line(&vectors)
        );
        let posted = super::nested::say_injected_posted(l2, injected, posted_before, posted_after);
        Ok(wire::L2StepReport {
            link_changes: Some(changes),
            posted,
            injected: Some(injected),
            vectors,
            ..Default::default()
        })
    }
}
