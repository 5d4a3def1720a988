//! A real L2 Linux: what the L1 agent and the agent in its L2 role say to
//! each other (JSON lines over the L2's second serial port, which is the
//! L1 QEMU's stdio), and what a step reports about it.

use serde::{Deserialize, Serialize};

/// Combined queues per NIC when a `start-l2` names none.
pub const L2_DEFAULT_QUEUES: u32 = 2;
/// Most frames one `l2-traffic` step may send.
pub const L2_MAX_FRAMES: u32 = 100_000;
/// Most link flaps (down, then up) one `l2-link` step may make.
pub const L2_MAX_FLAPS: u32 = 50;

/// L1 agent to L2 agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum L2Command {
    /// Send `frames` frames from the NIC at L2 address `from` to the one at
    /// `to` (broadcast when `to` is `from`: a device that loops frames
    /// back) and wait for them.
    Traffic {
        from: String,
        to: String,
        frames: u32,
    },
    /// Wait until the NIC at L2 address `bdf` has carrier `up` and its link
    /// vector (the MSI-X line named after the interface: link and other
    /// causes) has counted at least `link_irqs` in L2's /proc/interrupts;
    /// answered with [`L2Message::Link`]. `link_irqs = 0` reads the state
    /// as it is (once the carrier is `up`).
    Link {
        bdf: String,
        up: bool,
        link_irqs: u64,
    },
    /// A NIC came back at L2 address `bdf` (hot-plugged): wait for its
    /// driver, set `queues`, bring its link up; answered with `Ready`.
    BringUp { bdf: String, queues: u32 },
    /// Read L2's MSI-X lines as they are; answered with [`L2Message::Counts`].
    Counts,
    /// Stop the L2: it resets (it has no ACPI to power off with), and its QEMU exits.
    Poweroff,
}

/// L2 agent to L1 agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum L2Message {
    /// Drivers bound, queues set, links up.
    Ready {
        uptime_ms: u64,
        nics: Vec<L2Nic>,
        interrupts: Vec<L2Irq>,
    },
    /// The answer to [`L2Command::Traffic`]: frames sent and received.
    /// The L1 agent reads the interrupt counts around it
    /// ([`L2Command::Counts`]).
    Traffic { sent: u64, received: u64 },
    /// The answer to [`L2Command::Link`]: the carrier and the link vector's
    /// count when both were as asked.
    Link { carrier: bool, link_irqs: u64 },
    /// The answer to [`L2Command::Counts`]: every MSI-X line of L2.
    Counts { interrupts: Vec<L2Irq> },
    /// Something in L2 went wrong; the L2 stays up for the next command.
    Failed { message: String },
}

/// A network interface of the L2.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct L2Nic {
    /// PCI address in L2.
    pub bdf: String,
    pub ifname: String,
    pub driver: String,
    /// Combined queues after ETHTOOL_SCHANNELS.
    pub queues: u32,
    pub carrier: bool,
}

/// One MSI-X line of L2's /proc/interrupts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct L2Irq {
    /// PCI address in L2.
    pub bdf: String,
    /// The MSI-X table index (the hwirq column of a per-device MSI domain).
    pub index: u32,
    /// The action, e.g. `eth1-TxRx-0`.
    pub name: String,
    /// Summed over CPUs.
    pub count: u64,
    /// The APIC vector the entry's MSI message asks for (its data's low
    /// byte, read from the device's MSI-X table), where the L2 read it:
    /// KVM's `kvm_msi_set_irq` in L1 names the same vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apic_vector: Option<u8>,
}

/// What a real L2 did during a step.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct L2StepReport {
    /// `start-l2`: from spawning the VMM to the L2 agent's ready message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ms: Option<u64>,
    /// `start-l2`: the L2's own uptime when it was ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2_uptime_ms: Option<u64>,
    /// `start-l2`: the NICs as L2 sees them (scenario device names in `bdf`'s place).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<L2Nic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_received: Option<u64>,
    /// `l2-link`: link changes the host made (two per flap), each seen by
    /// L2's driver before the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_changes: Option<u64>,
    /// `l2-traffic`, `l2-link`: MSIs L1's KVM injected into the L2 during the step
    /// (`kvm_msi_set_irq`, all vectors: the L2 has no other MSI source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<u64>,
    /// `l2-traffic`, `l2-link`: interrupts the IOMMU posted during the step (into the
    /// L2 vCPU's vAPIC page, L1 not involved); none where it has no counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted: Option<u64>,
    /// `l2-traffic`, `l2-link`: per MSI-X vector of the L2's devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vectors: Vec<L2VectorCount>,
}

/// One vector of an L2's device during `l2-traffic` or `l2-link`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct L2VectorCount {
    /// e.g. `nic1/msix1`.
    pub vector: String,
    /// L2's action name without the interface, e.g. `TxRx-0` (`eth1-TxRx-0`),
    /// or the interface's own vector (link, other causes): empty.
    pub l2_action: String,
    /// Delta of the vector's `vfio-msix[n](bdf)` line in L1's /proc/interrupts.
    pub host_irq: u64,
    pub host_chip: Option<String>,
    /// Delta of the vector's line in L2's /proc/interrupts.
    pub delivered: u64,
    /// MSIs L1's KVM injected on this vector during the step, counted per
    /// vector where no L1 host IRQ line precedes them (a vhost-vdpa
    /// device without per-queue IRQs: its parent signals the call eventfd,
    /// which is KVM's irqfd). None for a vector with an L1 line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<u64>,
}
