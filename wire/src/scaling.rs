//! Timing irqfd registration in L1 (`testbed scaling`).
//!
//! The host sends [`HostMessage::Scaling`](crate::HostMessage::Scaling); the
//! agent first registers a few irqfds with its kprobes on and reports what
//! irqbypass did ([`ConsumerProbe`]), then turns the probes off and, for each
//! N of the series and each repeat, creates VMs and N eventfds, times every
//! KVM_IRQFD, closes everything and sends one
//! [`AgentMessage::ScalingPoint`](crate::AgentMessage::ScalingPoint), with a
//! `Progress` heartbeat at least every [`HEARTBEAT_SECS`](crate::HEARTBEAT_SECS)
//! while it works, and one
//! [`AgentMessage::ScalingDone`](crate::AgentMessage::ScalingDone) at the end.

use serde::{Deserialize, Serialize};

/// Most irqfds one VM gets: each has a GSI of its own with an MSI route,
/// KVM takes GSIs below `KVM_MAX_IRQ_ROUTES` (4096) only, and the agent
/// leaves GSIs 0..23 to the IOAPIC.
pub const MAX_IRQFDS_PER_VM: u32 = 4096 - 24;

/// Calls per chunk of [`ScalingPoint::chunked_total_ns`].
pub const CHUNK_CALLS: usize = 16;

/// What to measure.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScalingJob {
    /// Irqfd counts, ascending.
    pub series: Vec<u32>,
    /// Irqfds per VM (at most [`MAX_IRQFDS_PER_VM`]): N irqfds live in
    /// ceil(N / per_vm) VMs, filled one after the other.
    pub per_vm: u32,
    /// Measurements per N.
    pub repeats: u32,
    /// Irqfds registered in the probe pass, with the kprobes on.
    pub probe_irqfds: u32,
}

/// Whether KVM registered an irqbypass consumer per irqfd, seen by the
/// agent's kprobes on `irq_bypass_register_consumer` (entry and return).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsumerProbe {
    /// Irqfds registered with the probes on.
    pub irqfds: u32,
    /// Calls of irq_bypass_register_consumer.
    pub register_calls: u32,
    /// Of those, the ones that returned 0.
    pub registered: u32,
    /// Connections formed (kvm_arch_irq_bypass_add_producer): none is
    /// expected, nothing produces on these eventfds.
    pub connections: u32,
    /// Why the probe pass could not count (no tracer, a failed ioctl).
    #[serde(default)]
    pub error: Option<String>,
}

/// One measurement: N irqfds registered from an empty irqbypass.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScalingPoint {
    pub n: u32,
    pub vms: u32,
    pub repeat: u32,
    /// Sum of the N KVM_IRQFD calls' times.
    pub total_ns: u64,
    /// The same sum robust to spikes: the calls in order, in chunks of
    /// [`CHUNK_CALLS`], each chunk counted as its median times its length.
    /// Under TCG on a shared host a call now and then takes milliseconds
    /// (L1's vCPU thread descheduled); a chunk's median ignores that, and
    /// still follows a per-call cost that grows with the call's index.
    pub chunked_total_ns: u64,
    /// Median of the N calls.
    pub median_ns: u64,
    /// Median of the last tenth of the calls (the slowest when
    /// registration is O(n) per call).
    pub last_tenth_median_ns: u64,
    pub max_ns: u64,
    /// Closing the eventfds and the VMs (KVM deassigns every irqfd).
    pub teardown_ns: u64,
}

/// The end of a [`ScalingJob`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScalingDone {
    pub probe: ConsumerProbe,
    /// RLIMIT_NOFILE the agent set for the series.
    pub nofile: u64,
    /// Why the series stopped early, if it did (the points so far stand).
    pub error: Option<String>,
    /// Headlines of kernel warnings logged during the job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentMessage, HostMessage};

    #[test]
    fn scaling_messages_round_trip() {
        let job = HostMessage::Scaling(ScalingJob {
            series: vec![64, 128],
            per_vm: 64,
            repeats: 3,
            probe_irqfds: 16,
        });
        let line = serde_json::to_string(&job).unwrap();
        assert!(line.contains(r#""type":"scaling""#), "{line}");
        assert_eq!(serde_json::from_str::<HostMessage>(&line).unwrap(), job);
        let p = AgentMessage::ScalingPoint(ScalingPoint {
            n: 64,
            vms: 1,
            repeat: 0,
            total_ns: 1_000_000,
            chunked_total_ns: 900_000,
            median_ns: 15_000,
            last_tenth_median_ns: 16_000,
            max_ns: 90_000,
            teardown_ns: 2_000_000,
        });
        let line = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<AgentMessage>(&line).unwrap(), p);
        let d = AgentMessage::ScalingDone(ScalingDone {
            probe: ConsumerProbe {
                irqfds: 16,
                register_calls: 16,
                registered: 16,
                connections: 0,
                error: None,
            },
            nofile: 70_000,
            error: None,
            kernel_warnings: vec![],
        });
        let line = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<AgentMessage>(&line).unwrap(), d);
    }
}
