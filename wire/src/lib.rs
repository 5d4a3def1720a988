//! Messages between the testbed (host) and the guest agent (L1 guest).
//!
//! Transport: the agent's dedicated serial port (`/dev/ttyS1` in the guest, a
//! unix socket on the host), in raw mode, one JSON object per line in each
//! direction. The host speaks first only after the agent said [`AgentMessage::Ready`].
//!
//! Naming: everything here uses scenario names, never kernel addresses or host
//! IRQ numbers. Devices are `dev0`, VMs `vm0`, vectors `<device>/msi<n>` (or
//! `msix<n>`, or `vq<n>` for a vDPA device's virtqueues), consumers `<vm>:<vector>`. The agent does the attribution of
//! kernel objects to these names, because only it knows which step was running
//! when a kernel event happened.
//!
//! The same [`Step`] type is what scenario files contain under `[[step]]`, so a
//! scenario step and what the agent executes can never drift apart.

use serde::{Deserialize, Serialize};

mod device;
mod exec;
mod nested;
mod route;
mod scaling;
pub use device::{
    Attach, DeviceModel, IrqKind, Mgmtdev, ModelSpec, RegValue, RegWrite, VdpaSpec, VqFire,
};
pub use exec::{EventCounts, ExecJob, ExecResult, ExecStatus, MAX_EXEC_OUTPUT};
pub use nested::{
    L2Command, L2Irq, L2Message, L2Nic, L2StepReport, L2VectorCount, L2_DEFAULT_QUEUES,
    L2_MAX_FLAPS, L2_MAX_FRAMES,
};
pub use route::{RouteSeen, RouteTo, NO_VCPU_APIC_ID};
pub use scaling::{
    ConsumerProbe, ScalingDone, ScalingJob, ScalingPoint, CHUNK_CALLS, MAX_IRQFDS_PER_VM,
};

/// Bumped on any incompatible change; the host refuses an agent that differs.
pub const PROTOCOL_VERSION: u32 = 9;

/// The name the agent gives a kernel object it did not see being
/// registered (or a producer registered where no step expected one).
pub const UNKNOWN_NAME: &str = "unknown";

/// Longest the agent stays silent while a step runs.
pub const HEARTBEAT_SECS: u64 = 2;

/// Host to agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum HostMessage {
    /// Run one scenario; the agent answers with one `Step` per step, then `Done`.
    Run(Job),
    /// Sync the console and power the guest off.
    Poweroff,
    /// The host finished the [`HostAction`] the agent asked for during a
    /// step; `error` says why it failed.
    HostActionDone {
        error: Option<String>,
        /// The answer to [`HostAction::IommuPosted`]: the IOMMU's count of
        /// posted interrupts (`ga-posted`); none where it has no counters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        posted: Option<u64>,
    },
    /// Run one program (a selftest); the agent answers with
    /// [`AgentMessage::ExecOutput`] lines, then [`AgentMessage::Exited`].
    Exec(ExecJob),
    /// Time KVM_IRQFD registration (`testbed scaling`); the agent answers
    /// with [`AgentMessage::ScalingPoint`]s, then [`AgentMessage::ScalingDone`].
    Scaling(ScalingJob),
    /// The guest was restored from a saved state into a new QEMU, whose
    /// agent socket the host just accepted. The agent steps the guest's
    /// wall clock to `unix_time_ns` (the host's), puts back what the VMM
    /// did not migrate, and answers with a fresh [`AgentMessage::Ready`]
    /// carrying [`Ready::resume`].
    Resumed { unix_time_ns: u64 },
}

/// Something only the host can do (through QMP) in the middle of a step.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HostAction {
    /// `device_del` the device, then wait for QEMU's DEVICE_DELETED.
    DeviceDel { device: String },
    /// `device_add` the device back where it was.
    DeviceAdd { device: String },
    /// Read the IOMMU's posted-interrupt counter (`qom-get ... ga-posted`),
    /// so that a step inside which a real L2 runs can count what was
    /// posted during it.
    IommuPosted,
    /// QMP `set_link`: the NIC's link goes down (`up = false`) or up, and
    /// its model raises its link-status-change interrupt.
    SetLink { device: String, up: bool },
}

/// Agent to host.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AgentMessage {
    /// Sent once, after modules are loaded and tracing is set up.
    Ready(Ready),
    /// Sent after each step, in step order, as soon as the step finished.
    Step(StepReport),
    /// Step `index` needs the host to act; the agent goes on with the step
    /// (it may have to release the device while the host waits) and expects
    /// [`HostMessage::HostActionDone`].
    HostAction { index: usize, action: HostAction },
    /// The agent is still busy with step `index`; sent at least every
    /// [`HEARTBEAT_SECS`] during a long step, so the host can tell a slow
    /// step from a hung guest.
    Progress { index: usize },
    /// The scenario finished (all steps ran, or a step failed and the rest were skipped).
    /// The agent has torn down everything the scenario left open.
    Done(Done),
    /// Something outside any step went wrong (bad job, tracing broke). The agent
    /// stays alive and waits for the next message.
    Failed { message: String },
    /// One line of a running [`ExecJob`]'s output (stdout and stderr
    /// interleaved as the program wrote them), without its newline.
    ExecOutput { line: String },
    /// The [`ExecJob`] ended.
    Exited(ExecResult),
    /// One measurement of a [`ScalingJob`].
    ScalingPoint(ScalingPoint),
    /// The [`ScalingJob`] ended.
    ScalingDone(ScalingDone),
}

/// End of a scenario.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Done {
    /// irqbypass activity while the agent closed what the scenario left open
    /// (VMs, devices), so that the next scenario starts clean.
    pub cleanup: Vec<BypassEvent>,
    /// What went wrong during cleanup, if anything.
    pub cleanup_error: Option<String>,
    /// Kernel warnings printed while the agent cleaned up (see
    /// [`StepReport::kernel_warnings`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_warnings: Vec<String>,
    /// L1's own MSIs from `Run` to `Done` (cleanup included), read at every
    /// step boundary so that lines freed during the scenario still count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l1_msi: Option<L1Msi>,
}

/// What L1's /proc/interrupts counted over a scenario, summed over CPUs.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct L1Msi {
    /// Every PCI MSI and MSI-X line (chip `PCI-MSI*` or `IR-PCI-MSI*`):
    /// the interrupts L1's devices sent, whoever handled them.
    pub pci_msi: u64,
    /// `PMN`, posted-MSI notification events (the kernel's handler of the
    /// VT-d notification vector, which runs the handlers of the posted
    /// vectors); `None` on a kernel without CONFIG_X86_POSTED_MSI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted_msi_notifications: Option<u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub protocol: u32,
    pub platform: Platform,
    /// Set in the answer to [`HostMessage::Resumed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Box<Resume>>,
}

/// What the agent found and did when the guest was resumed from a saved
/// state. Timing only: it never reaches a report body.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// Host wall clock minus the guest's before the agent set it, in ms:
    /// about how long the saved state sat (the guest's clocks stood still).
    pub clock_step_ms: i64,
    /// The guest's clocksource (`current_clocksource`).
    pub clocksource: String,
    /// PCI functions whose command register, BARs or interrupt line the
    /// restored QEMU did not have (a device model without migration state,
    /// e.g. edu), written back from what the agent read before the save.
    pub pci_restored: Vec<String>,
    /// Kernel lines since the save that say the restore disturbed the
    /// guest: warnings ([`kernel_warning`]: RCU stalls, soft lockups) and
    /// the clocksource watchdog giving up on a clocksource.
    pub noise: Vec<String>,
}

/// A kernel line that says the guest's time went wrong after a restore
/// (besides [`kernel_warning`]s).
pub fn resume_noise(message: &str) -> bool {
    kernel_warning(message)
        || message.contains("Marking clocksource")
        || message.contains("timekeeping watchdog")
        || message.contains("hrtimer: interrupt took")
}

/// Facts about the L1 guest that explain behaviour, read once at start.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// `uname -r`.
    pub kernel_release: String,
    /// Modules the agent loaded, in load order, e.g. `["irqbypass", "kvm", "kvm_amd", ...]`.
    pub modules_loaded: Vec<String>,
    /// Modules that failed to load, with the error (e.g. `kvm_intel: ENODEV`).
    pub modules_failed: Vec<String>,
    /// `kvm_amd` or `kvm_intel`, whichever loaded.
    pub kvm_vendor: Option<String>,
    /// APIC virtualization as KVM sees it: `kvm_amd.avic` or `kvm_intel.enable_apicv`.
    pub apicv: Option<bool>,
    /// `kvm.enable_device_posted_irqs` where the kernel has it (6.16+): whether
    /// KVM will register irqbypass consumers at all.
    pub device_posted_irqs: Option<bool>,
    /// The interrupt-remapping mode the kernel reported, e.g. `intel x2apic`,
    /// `amd`, or `None` when it is off.
    pub irq_remapping: Option<String>,
    /// The IOMMU reported IRQ posting support (AMD-Vi "Virtual APIC enabled",
    /// or Intel posted-interrupt capability).
    pub irq_posting: bool,
    /// `/dev/iommu` exists: the kernel has iommufd (CONFIG_IOMMUFD), which
    /// VFIO's selftests open by default. Debian's kernels lack it.
    #[serde(default)]
    pub iommufd: bool,
    /// Kprobes or trace events the agent could not place or enable, with the
    /// reason (e.g. a symbol this kernel does not have). Empty when the agent
    /// observes everything; otherwise bypass reports are incomplete.
    #[serde(default)]
    pub tracing_failed: Vec<String>,
    /// Kernel warnings printed before the first scenario (see
    /// [`kernel_warning`]): they belong to no scenario, but a kernel that
    /// warns while booting is worth knowing about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_warnings: Vec<String>,
    /// `kvm_amd.enable_ipiv`: KVM uses AVIC's IPI virtualization (it turns
    /// it off on family 17h/18h, erratum #1235). `None` off AMD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipiv: Option<bool>,
    /// kvm_amd logged "x2AVIC enabled" (`true`) or only "AVIC enabled"
    /// (`false`, hybrid AVIC: x2APIC MSRs intercepted); `None` when it
    /// logged neither (AVIC off, or not AMD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x2avic: Option<bool>,
    /// Whether L1's device MSIs go through VT-d interrupt posting (Linux's
    /// posted MSIs): `Some(true)` with CONFIG_X86_POSTED_MSI, `intremap=posted_msi`
    /// and an IOMMU that can post; `Some(false)` when the kernel has the
    /// option but does not use it; `None` without it (no `PMN` line in
    /// /proc/interrupts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted_msi: Option<bool>,
}

impl Platform {
    /// How KVM runs AVIC in an AMD L1, from what the agent read there
    /// (`kvm_amd.avic`, `kvm_amd.enable_ipiv`, kvm_amd's load messages);
    /// `None` when KVM is not kvm_amd.
    pub fn avic_mode(&self) -> Option<&'static str> {
        if self.kvm_vendor.as_deref() != Some("kvm_amd") {
            return None;
        }
        if self.apicv != Some(true) || self.x2avic.is_none() {
            return Some("no AVIC");
        }
        Some(match (self.x2avic == Some(true), self.ipiv == Some(true)) {
            (true, true) => "x2AVIC + IPI virtualization",
            (true, false) => "x2AVIC, no IPI virtualization",
            (false, true) => "hybrid AVIC + IPI virtualization",
            (false, false) => "hybrid AVIC, no IPI virtualization",
        })
    }
}

/// One scenario, resolved: device addresses are known.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub scenario: String,
    pub devices: Vec<JobDevice>,
    pub steps: Vec<Step>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobDevice {
    /// Scenario name, e.g. `dev0`.
    pub name: String,
    pub model: DeviceModel,
    /// PCI address in the guest, full form `0000:00:04.0`, resolved by the
    /// host through QMP; empty for a device that is not on PCI (`vdpa-sim-net`).
    pub bdf: String,
}

/// One scenario step. Scenario files hold these under `[[step]]` with an
/// `action` key; the agent executes them in order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Bind the device to vfio-pci, open it through VFIO (type1 container, or
    /// no-IOMMU mode when the guest has no IOMMU) and enable bus mastering.
    /// A vDPA model instead gets a vDPA device (generic netlink
    /// `VDPA_CMD_DEV_NEW` on its management device, after binding the PCI
    /// function to the model's driver where it has one), bound to
    /// vhost_vdpa and opened: owner, features, the IOTLB mapping of the
    /// agent's ring memory, every virtqueue's size, addresses, base, kick
    /// eventfd and enable; status FEATURES_OK. No call eventfd yet.
    Bind { device: String },
    /// A vDPA device's call eventfds for a set of its virtqueues
    /// (VHOST_SET_VRING_CALL, `vectors` as for `enable-msix`), then status
    /// DRIVER_OK: vhost-vdpa registers an irqbypass producer for each
    /// wired virtqueue whose parent driver gives it an IRQ of its own
    /// (vp_vdpa's per-queue MSI-X vectors), none where it has none
    /// (vdpa_sim). Once per bind: `close-device` tears it down.
    EnableVqs { device: String, vectors: VectorSet },
    /// Give the device `vectors` MSI eventfds with VFIO_DEVICE_SET_IRQS:
    /// VFIO registers one irqbypass producer per vector. A vector's eventfd
    /// belongs to the vector, not to this step: one an earlier `irqfd` made
    /// is reused, so the consumer can come first.
    EnableMsi {
        device: String,
        #[serde(default = "one")]
        vectors: u32,
    },
    /// Disable MSI (VFIO_DEVICE_SET_IRQS with count 0): producers unregister.
    DisableMsi { device: String },
    /// Give an MSI-X device eventfds for a set of its vectors with
    /// VFIO_DEVICE_SET_IRQS: `vectors = 4` means msix0..msix3, a list such
    /// as `[0, 3]` wires exactly those (the others get no eventfd: no
    /// producer). The first one enables MSI-X; while enabled, a later one
    /// changes the set in place: new vectors get an eventfd (growing, where
    /// the kernel allocates MSI-X vectors dynamically), dropped ones lose
    /// theirs (their producers unregister), kept ones are untouched.
    EnableMsix { device: String, vectors: VectorSet },
    /// Disable MSI-X (VFIO_DEVICE_SET_IRQS with count 0): producers unregister.
    DisableMsix { device: String },
    /// Mask the vector at the device (igb EIMC, e1000e IMC): raising it is
    /// then held pending in the device, however often it is raised.
    Mask { vector: String },
    /// Unmask the vector at the device: a raise held pending since the mask
    /// is sent now, once. Reports the released interrupt's counts
    /// (`raised` = 1 when one was pending, else 0).
    Unmask { vector: String },
    /// Hot-unplug the device from L1 through QMP `device_del`, while it may
    /// still be open and wired. vfio-pci's remove then asks the agent for the
    /// device back (VFIO's request interrupt) and the agent closes it, so
    /// its producers unregister while irqfds stay; the step ends when QEMU
    /// reports DEVICE_DELETED. The device sits behind its own PCIe root
    /// port, and the scenario must `replug` it before it ends.
    Unplug { device: String },
    /// Hot-plug the unplugged device back (QMP `device_add` on its root
    /// port) and wait until L1 has enumerated it; `bind` then opens it.
    Replug { device: String },
    /// Unbind the closed device from vfio-pci (and clear driver_override),
    /// leaving it without a driver; a later `bind` binds and opens it again.
    /// Eventfds and irqfds stay: a consumer waits for the producer to return.
    Unbind { device: String },
    /// Give the device's INTx (its legacy level-triggered pin, vector
    /// `<device>/intx0`) an eventfd with VFIO_DEVICE_SET_IRQS
    /// (VFIO_PCI_INTX_IRQ_INDEX, ACTION_TRIGGER): VFIO's handler masks the
    /// line and signals the eventfd on every assertion, and the line stays
    /// masked until it is unmasked (`intx-unmask`). The device's MSI must be
    /// off. VFIO registers no irqbypass producer for INTx.
    EnableIntx { device: String },
    /// Wire VFIO's unmask-by-eventfd (VFIO_DEVICE_SET_IRQS on the INTx
    /// index, ACTION_UNMASK | DATA_EVENTFD) to the resample eventfd of
    /// `vm`'s irqfd on the INTx `vector`: every EOI of the level interrupt
    /// in the VM then re-arms the device's line in L1.
    IntxUnmask { vm: String, vector: String },
    /// Create a KVM VM with an in-kernel irqchip and one vCPU. `apic`: the
    /// mode the tiny L2 (`start-vm`) runs its local APIC in, `x2apic` (the
    /// default: MSR accesses) or `xapic` (MMIO at 0xFEE00000: with AVIC
    /// the CPU's vAPIC page, whose EOI of a level interrupt exits to KVM).
    CreateVm {
        vm: String,
        #[serde(default, skip_serializing_if = "L2Apic::is_x2apic")]
        apic: L2Apic,
    },
    /// Route a GSI as MSI to the VM's vCPU 0 and attach the vector's eventfd
    /// with KVM_IRQFD: KVM registers an irqbypass consumer when it can post.
    /// The device must be bound; its MSI need not be enabled yet (the eventfd
    /// is made here if no `enable-msi` made it before).
    ///
    /// An INTx vector (`<device>/intx0`) is routed instead to an IOAPIC pin
    /// of the VM (`pin`, default the first free one from 16), whose
    /// redirection entry the agent programs (level, fixed, to vCPU 0), and
    /// with `resample = true` attached with KVM_IRQFD_FLAG_RESAMPLE and a
    /// resample eventfd that KVM signals when the VM EOIs the interrupt.
    /// The device's BAR0 page is mapped into the VM, so that the L2
    /// acknowledges the device (its `ack` writes) before its EOI, as a
    /// guest driver does.
    Irqfd {
        vm: String,
        vector: String,
        #[serde(default)]
        resample: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<u32>,
    },
    /// KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN: the consumer unregisters.
    IrqfdDeassign { vm: String, vector: String },
    /// Make the device raise the vector `count` times (edu: write BAR0+0x60,
    /// then ack at BAR0+0x64), waiting for each to be signalled. A vDPA
    /// virtqueue is fired as its model's [`VqFire`] says (a transmit queue:
    /// one frame posted and kicked), and acknowledged by waiting for the
    /// device to complete the buffer.
    Fire {
        vector: String,
        #[serde(default = "one")]
        count: u32,
    },
    /// Write the vector's eventfd `count` times from the agent itself, as a
    /// software producer would (no device, no host IRQ, nothing the IOMMU
    /// can post): every irqfd holding the eventfd makes KVM inject, waiting
    /// for each to be delivered in a running L2 (or injected, or counted on
    /// the eventfd where no irqfd holds it). The vector's eventfd must exist:
    /// an earlier `irqfd` or `enable-msi` made it; no `enable-msi` is needed.
    Signal {
        vector: String,
        #[serde(default = "one")]
        count: u32,
    },
    /// Close the VFIO device (and its group and container): VFIO tears down its
    /// interrupts, so producers unregister while irqfds may stay.
    CloseDevice { device: String },
    /// Close the VM: its irqfds go, so consumers unregister. A running L2 is
    /// stopped first.
    DestroyVm { vm: String },
    /// Run the VM's vCPU on its own agent thread with the agent's tiny L2
    /// program (real mode, x2APIC, one counter per interrupt vector), whose
    /// main loop waits for interrupts as `mode` says. Returns once the L2
    /// reported ready and acknowledged the mode. While it runs, `fire` waits
    /// for each interrupt of a vector routed to the VM to be delivered in L2
    /// and reports `delivered`. A stopped L2 may be started again, in any mode.
    StartVm {
        vm: String,
        #[serde(default)]
        mode: L2Mode,
        /// `alternate` only: how long each spinning and each halted phase
        /// lasts, in ms (default [`DEFAULT_ALTERNATE_MS`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        period_ms: Option<u32>,
    },
    /// Park the VM's L2 (it acknowledges, then leaves KVM_RUN through a port
    /// I/O exit) and stop its vCPU thread. Interrupts raised while it is
    /// stopped stay pending in its local APIC and are taken at the next start.
    StopVm { vm: String },
    /// Make the VM's running L2 send itself `count` IPIs on `vector` by
    /// writing its x2APIC ICR (MSR 0x830: fixed delivery, physical
    /// destination = its own x2APIC ID), each time waiting (bounded) for the
    /// interrupt to arrive before the next. KVM emulates every ICR write (no
    /// device, no irqfd, nothing the IOMMU posts): this is KVM's own IPI
    /// delivery, through the AVIC backing page where AVIC is on. The vector
    /// is in [`IPI_VECTORS`], apart from route vectors and the L2's own timer
    /// and kick vectors. Reports `raised` = ICR writes the L2 made and
    /// `delivered` = interrupts it took on the vector.
    Ipi {
        vm: String,
        vector: u8,
        #[serde(default = "one")]
        count: u32,
    },
    /// Turn the in-kernel PIT's reinjection on or off for `vm`: the first
    /// one gives the VM a PIT (KVM_CREATE_PIT2; its timer is never
    /// programmed), then KVM_REINJECT_CONTROL. Reinjection on sets the
    /// APICv/AVIC inhibit APICV_INHIBIT_REASON_PIT_REINJ (AVIC does not trap
    /// the EOIs the PIT's reinjection counts), off clears it: on kvm_amd
    /// KVM then moves the VM's device-posted IRTEs to remapped mode (KVM
    /// injects) and back to guest mode (the IOMMU posts). The VM's L2 must
    /// be running, not halted: the step returns once its vCPU has entered
    /// the guest again, i.e. has taken the APICv update.
    PitReinject { vm: String, reinject: bool },
    /// Unload the KVM vendor module (kvm_amd, or kvm_intel: whichever is
    /// loaded) with delete_module and load it again from the initramfs
    /// with the parameters it got at boot (the kernel command line's, e.g.
    /// `kvm_amd.avic=1`). No VM may be open. Fails when a parameter in
    /// /sys/module/<module>/parameters reads differently after the reload.
    ReloadKvm,
    /// Rewrite the GSI route of `vm`'s irqfd on `vector` while the irqfd
    /// stays assigned (KVM_SET_GSI_ROUTING with the VM's whole table, the
    /// GSI unchanged): KVM re-evaluates the irqfd's routing
    /// (`kvm_irq_routing_update`), and where the irqfd is connected to a
    /// producer it must move the IRTE between posted and remapped mode
    /// (`kvm_arch_update_irqfd_routing`). `to` says where the route goes
    /// ([`RouteTo`]); `l2_vector` is the vector the new route delivers on
    /// in the VM (default: a new one, as `irqfd` hands out). Later `fire`
    /// steps of the vector report the route and the L2 vectors that took
    /// its interrupts ([`VectorCount::route`]).
    Route {
        vm: String,
        vector: String,
        to: RouteTo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        l2_vector: Option<u8>,
    },
    /// Panic the L1 kernel (sysrq-c). A self-test of the harness: the run
    /// must end with the guest's panic reported, never hang.
    PanicL1,
    /// Start a real L2 Linux: the agent binds `devices` to vfio-pci in L1
    /// and runs the VMM the boot carries (the QEMU binary L1 itself runs
    /// on, with its library closure) with `-accel kvm -cpu host`, the same
    /// kernel and a small L2 initramfs (busybox, the NIC drivers, the agent
    /// in its L2 role), each device as `-device vfio-pci`. In L2 the
    /// devices' own drivers (igb, e1000e) bind, each NIC gets `queues`
    /// combined queues (ETHTOOL_SCHANNELS) and its link brought up. Returns
    /// once the L2 reported ready; its boot time is in the step report.
    /// QEMU's VFIO code registers the irqbypass producers (when L2's driver
    /// enables MSI-X), KVM the consumers.
    StartL2 {
        l2: String,
        devices: Vec<String>,
        #[serde(default = "default_queues")]
        queues: u32,
        /// Extra words for the L2 kernel's command line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        append: Option<String>,
        /// Boot the L2 with ACPI, which its VMM's PCI hotplug needs
        /// (`l2-unplug`, `l2-replug`); without it the L2 boots faster.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hotplug: bool,
    },
    /// In the running L2, send `frames` Ethernet frames (IPv4/UDP, one
    /// source address each, so the receiver's RSS spreads them over its
    /// queues) from device `from` to device `to` (joined by a QEMU hub in
    /// L0) through a packet socket, and wait for all of them to arrive at
    /// `to`, then for the interrupts to settle. Reports, per MSI-X vector
    /// of the L2's devices, the L1 host IRQ line's count and what L2's
    /// /proc/interrupts counted. A device that loops its transmitted
    /// frames back (vdpa-sim-net, a virtio-net in L2 through vhost-vdpa)
    /// sends to itself: `to` omitted or equal to `from`; the frames are
    /// then broadcast, which the simulator's receive filter takes.
    L2Traffic {
        l2: String,
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(default = "one")]
        frames: u32,
    },
    /// Take `device`'s link down and up again `flaps` times through L0's
    /// QMP (`set_link`) while the L2 runs: each change makes the NIC model
    /// raise its link-status-change interrupt (igb, e1000e: ICR.LSC on the
    /// "other" MSI-X vector), which no DMA is needed for. After each change
    /// the L2 agent waits until L2's driver has taken a new interrupt on the
    /// NIC's link vector and the interface's carrier shows the change, so
    /// every change is its own interrupt. Reports, per MSI-X vector of the
    /// L2's devices, the L1 host IRQ line's count and what L2's
    /// /proc/interrupts counted, as `l2-traffic` does.
    L2Link {
        l2: String,
        device: String,
        #[serde(default = "one")]
        flaps: u32,
    },
    /// Stop the L2 (it resets; its QEMU, run with -no-reboot, exits: QEMU's own teardown:
    /// VFIO releases the devices, producers and consumers unregister); the
    /// devices stay bound to vfio-pci in L1.
    StopL2 { l2: String },
    /// Hot-unplug `device` from the running L2 through its VMM's own QMP
    /// (`device_del`; done at QEMU's DEVICE_DELETED, after L2's ACPI
    /// hotplug ejected it): L2's driver lets go, QEMU's VFIO code tears
    /// the device's interrupts down in its own order and releases it. The
    /// device stays bound to vfio-pci in L1. Needs `hotplug` at start-l2.
    L2Unplug { l2: String, device: String },
    /// `device_add` the device back into the L2 at its old address; L2's
    /// driver binds again and its link comes up (queues as at start-l2).
    L2Replug { l2: String, device: String },
    /// Pause the L2 through its VMM's QMP (`stop`): its vCPU leaves KVM_RUN.
    L2Pause { l2: String },
    /// Resume a paused L2 (`cont`).
    L2Resume { l2: String },
    /// Kill the L2's VMM with SIGKILL, as a crash would, and wait until it
    /// is gone: the kernel closes its VFIO and KVM file descriptors, and
    /// none of QEMU's own teardown runs. The L2 keeps its name, so a later
    /// step that needs it finds its VMM dead and fails saying so.
    KillL2 { l2: String },
}

fn default_queues() -> u32 {
    L2_DEFAULT_QUEUES
}

/// Which vectors an `enable-msix` wires.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum VectorSet {
    /// Vectors 0..n.
    Count(u32),
    /// Exactly these vectors.
    List(Vec<u32>),
}

impl VectorSet {
    /// The vector numbers, ascending, without duplicates.
    pub fn numbers(&self) -> Vec<u32> {
        let mut v = match self {
            VectorSet::Count(n) => (0..*n).collect(),
            VectorSet::List(l) => l.clone(),
        };
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// How the L2 program's main loop waits for interrupts (interrupts are
/// always enabled and the x2APIC TPR is 0).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "kebab-case")]
pub enum L2Mode {
    /// Spin with `pause`: interrupts find the vCPU runnable.
    #[default]
    Running,
    /// `sti; hlt` loop: every interrupt has to wake a blocked vCPU.
    Halted,
    /// Spin for `period_ms`, then halt for `period_ms` (woken by the L2's
    /// own one-shot x2APIC timer), and so on.
    Alternate,
}

impl L2Mode {
    /// The name as written in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            L2Mode::Running => "running",
            L2Mode::Halted => "halted",
            L2Mode::Alternate => "alternate",
        }
    }
}

/// The local APIC mode of the tiny L2 (see [`Step::CreateVm`]).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "kebab-case")]
pub enum L2Apic {
    /// x2APIC: every APIC register through its MSR.
    #[default]
    X2apic,
    /// xAPIC: every APIC register through the MMIO page at 0xFEE00000.
    Xapic,
}

impl L2Apic {
    pub fn is_x2apic(&self) -> bool {
        *self == L2Apic::X2apic
    }
}

/// Vectors an `ipi` step may use: below the MSI route vectors (0x40 up),
/// above the L2's own timer (0x20) and kick (0x21) vectors.
pub const IPI_VECTORS: std::ops::RangeInclusive<u8> = 0x30..=0x3f;

/// Phase length of [`L2Mode::Alternate`] when a `start-vm` gives none.
pub const DEFAULT_ALTERNATE_MS: u32 = 5;
/// Longest `period_ms` a `start-vm` may ask for.
pub const MAX_ALTERNATE_MS: u32 = 1000;

fn one() -> u32 {
    1
}

impl Step {
    /// The action name as written in scenario files.
    pub fn action(&self) -> &'static str {
        match self {
            Step::Bind { .. } => "bind",
            Step::EnableVqs { .. } => "enable-vqs",
            Step::EnableMsi { .. } => "enable-msi",
            Step::DisableMsi { .. } => "disable-msi",
            Step::EnableMsix { .. } => "enable-msix",
            Step::DisableMsix { .. } => "disable-msix",
            Step::Mask { .. } => "mask",
            Step::Unmask { .. } => "unmask",
            Step::Unbind { .. } => "unbind",
            Step::Unplug { .. } => "unplug",
            Step::Replug { .. } => "replug",
            Step::EnableIntx { .. } => "enable-intx",
            Step::IntxUnmask { .. } => "intx-unmask",
            Step::CreateVm { .. } => "create-vm",
            Step::Irqfd { .. } => "irqfd",
            Step::IrqfdDeassign { .. } => "irqfd-deassign",
            Step::Fire { .. } => "fire",
            Step::Signal { .. } => "signal",
            Step::CloseDevice { .. } => "close-device",
            Step::DestroyVm { .. } => "destroy-vm",
            Step::PitReinject { .. } => "pit-reinject",
            Step::ReloadKvm => "reload-kvm",
            Step::PanicL1 => "panic-l1",
            Step::StartVm { .. } => "start-vm",
            Step::StopVm { .. } => "stop-vm",
            Step::Ipi { .. } => "ipi",
            Step::Route { .. } => "route",
            Step::StartL2 { .. } => "start-l2",
            Step::L2Traffic { .. } => "l2-traffic",
            Step::L2Link { .. } => "l2-link",
            Step::StopL2 { .. } => "stop-l2",
            Step::L2Unplug { .. } => "l2-unplug",
            Step::L2Replug { .. } => "l2-replug",
            Step::L2Pause { .. } => "l2-pause",
            Step::KillL2 { .. } => "kill-l2",
            Step::L2Resume { .. } => "l2-resume",
        }
    }

    /// An `l2-traffic` step's receiving device: `to`, else `from` (a
    /// device that loops its frames back). None for other steps.
    pub fn l2_traffic_to(&self) -> Option<&str> {
        match self {
            Step::L2Traffic { from, to, .. } => Some(to.as_deref().unwrap_or(from)),
            _ => None,
        }
    }

    /// The real L2 a step acts on.
    pub fn l2(&self) -> Option<&str> {
        match self {
            Step::StartL2 { l2, .. }
            | Step::L2Traffic { l2, .. }
            | Step::L2Link { l2, .. }
            | Step::StopL2 { l2 }
            | Step::L2Unplug { l2, .. }
            | Step::L2Replug { l2, .. }
            | Step::L2Pause { l2 }
            | Step::L2Resume { l2 }
            | Step::KillL2 { l2 } => Some(l2),
            _ => None,
        }
    }
}

/// What happened during one step.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepReport {
    /// Index into `Job::steps`.
    pub index: usize,
    /// `None` on success; otherwise what failed, e.g. `KVM_IRQFD: EINVAL`.
    /// Later steps are then skipped.
    pub error: Option<String>,
    /// irqbypass activity observed while the step ran, in kernel order.
    pub bypass: Vec<BypassEvent>,
    /// Interrupt accounting for `fire`, `signal` and `ipi` steps (one entry
    /// per vector; an `ipi` step's is named by its vector, e.g. `0x31`);
    /// empty otherwise.
    pub interrupts: Vec<VectorCount>,
    /// The headline of every kernel warning (WARNING, BUG, Oops, ...) the
    /// kernel log gained while the step ran, in log order. A kernel that
    /// warns has gone wrong even when every interrupt arrived, so the host
    /// fails the scenario on any of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_warnings: Vec<String>,
    /// What a real L2 did during `start-l2`, `l2-traffic`, `l2-link` and `stop-l2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<Box<L2StepReport>>,
}

/// Whether a kernel log message is the headline of a kernel warning, and
/// so a sign that the kernel went wrong: `WARN()` (`WARNING: CPU: 0 PID: 1
/// at file:line function`), `BUG()`/`BUG_ON()` (`kernel BUG at file:line!`),
/// an oops, a detected lockup or stall, or one of the debug checks that
/// print before they warn or BUG (list and refcount corruption, UBSAN,
/// KASAN). Continuation lines (registers, call traces) are not headlines.
pub fn kernel_warning(message: &str) -> bool {
    const HEADLINES: [&str; 9] = [
        "WARNING: ",
        "kernel BUG at ",
        "BUG: ",
        "Oops: ",
        "general protection fault",
        "UBSAN: ",
        "refcount_t: ",
        "list_add corruption",
        "list_del corruption",
    ];
    let m = message.trim_start();
    HEADLINES.iter().any(|h| m.starts_with(h))
        || m.contains("rcu_sched detected stalls")
        || m.contains("rcu_preempt detected stalls")
        || m.contains("soft lockup - CPU#")
        || (m.starts_with("INFO: task ") && m.contains(" blocked for more than "))
}

/// irqbypass activity, attributed to scenario names.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BypassEvent {
    /// `irq_bypass_register_producer` returned `ret`.
    ProducerRegistered { producer: String, ret: i64 },
    /// `irq_bypass_unregister_producer` was called.
    ProducerUnregistered { producer: String },
    /// `irq_bypass_register_consumer` returned `ret`.
    ConsumerRegistered { consumer: String, ret: i64 },
    /// KVM_IRQFD succeeded but KVM did not call `irq_bypass_register_consumer`.
    ConsumerNotRegistered { consumer: String },
    /// An `enable-vqs` gave the virtqueue its call eventfd and reached
    /// DRIVER_OK, but vhost-vdpa did not call `irq_bypass_register_producer`
    /// for it (a parent without per-queue IRQs).
    ProducerNotRegistered { producer: String },
    /// `irq_bypass_unregister_consumer` was called.
    ConsumerUnregistered { consumer: String },
    /// `kvm_arch_irq_bypass_add_producer` (the connect callback) returned `ret`.
    Connected {
        producer: String,
        consumer: String,
        ret: i64,
    },
    /// `kvm_arch_irq_bypass_del_producer` (the disconnect callback) ran.
    Disconnected { producer: String, consumer: String },
}

/// Where the interrupts of one vector went during a `fire` step.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VectorCount {
    /// e.g. `dev0/msi0`.
    pub vector: String,
    /// How many times the agent made the device raise it (`fire`), or wrote
    /// the eventfd itself (`signal`).
    pub raised: u64,
    /// The eventfd counter read by the agent after firing, when no irqfd holds
    /// the eventfd; `None` while KVM consumes it (then see `injected`).
    pub signalled: Option<u64>,
    /// Delta of the vector's line in L1 `/proc/interrupts`, summed over CPUs.
    pub host_irq: u64,
    /// The line's irq chip, with any device address stripped, e.g. `IR-PCI-MSI`.
    pub host_chip: Option<String>,
    /// KVM MSI injections for this vector's route (`kvm_msi_set_irq` trace
    /// events with the route's address and data).
    pub injected: u64,
    /// Interrupts the L2 program counted on the route's vector, summed over
    /// the VMs holding the vector whose L2 ran during the step; `None` when
    /// no such L2 ran (then nothing can be delivered). Absent on the wire
    /// when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    /// INTx vectors only: EOIs of the vector's IOAPIC pin that reached
    /// KVM's ack notifiers (`kvm_ack_irq`), each of which de-asserts the
    /// GSI and signals the resample eventfds of the pin's irqfds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resampled: Option<u64>,
    /// INTx vectors only: VFIO unmask handler runs (every device's INTx
    /// unmask-by-eventfd, `vfio_pci_intx_unmask_handler`) during the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmasked: Option<u64>,
    /// INTx vectors only: EOIs of the vector's VM-side vector that AVIC
    /// trapped to KVM (`kvm_avic_unaccelerated_access`: a write of the
    /// vAPIC page's EOI register while a level-triggered vector was in
    /// service). Only an xAPIC L2 under AVIC makes them; KVM emulates an
    /// x2APIC L2's EOIs from its MSR intercepts instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eoi_trapped: Option<u64>,
    /// Only for a vector whose route a `route` step changed: the route it
    /// fired through and which L2 vectors took its interrupts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSeen>,
}

/// IOAPIC pins an INTx irqfd may use (the VM's IOAPIC has 24; 0-15 are
/// ISA interrupts by convention).
pub const INTX_PINS: std::ops::RangeInclusive<u32> = 16..=23;

/// The vector name of a device's INTx pin.
pub fn intx_vector(device: &str) -> String {
    format!("{device}/intx0")
}

/// Whether a vector name is an INTx pin (`<device>/intx0`).
pub fn is_intx(vector: &str) -> bool {
    vector.ends_with("/intx0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_is_optional_and_absent_when_none() {
        let old = r#"{"vector":"dev0/msi0","raised":5,"signalled":null,"host_irq":5,"host_chip":"IR-PCI-MSI","injected":5}"#;
        let c: VectorCount = serde_json::from_str(old).unwrap();
        assert_eq!(c.delivered, None);
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            old,
            "None is not sent: old hosts still parse it"
        );
        let with = VectorCount {
            delivered: Some(5),
            ..c
        };
        assert!(serde_json::to_string(&with)
            .unwrap()
            .ends_with(r#""injected":5,"delivered":5}"#));
    }

    #[test]
    fn signal_step() {
        let s: Step = serde_json::from_str(r#"{"action":"signal","vector":"dev0/msi0"}"#).unwrap();
        assert_eq!(
            s,
            Step::Signal {
                vector: "dev0/msi0".into(),
                count: 1
            }
        );
        assert_eq!(s.action(), "signal");
        assert!(serde_json::from_str::<Step>(
            r#"{"action":"signal","vector":"dev0/msi0","vm":"vm0"}"#
        )
        .is_err());
    }

    #[test]
    fn ipi_step() {
        let s: Step = serde_json::from_str(r#"{"action":"ipi","vm":"vm0","vector":49}"#).unwrap();
        assert_eq!(
            s,
            Step::Ipi {
                vm: "vm0".into(),
                vector: 0x31,
                count: 1
            }
        );
        assert_eq!(s.action(), "ipi");
        assert!(
            serde_json::from_str::<Step>(r#"{"action":"ipi","vm":"vm0","vector":256}"#).is_err()
        );
        assert!(serde_json::from_str::<Step>(r#"{"action":"ipi","vm":"vm0"}"#).is_err());
        assert!(IPI_VECTORS.contains(&0x30) && IPI_VECTORS.contains(&0x3f));
        assert!(!IPI_VECTORS.contains(&0x21) && !IPI_VECTORS.contains(&0x40));
    }

    #[test]
    fn l2_link_step_and_its_messages() {
        let s: Step =
            serde_json::from_str(r#"{"action":"l2-link","l2":"l2","device":"nic0"}"#).unwrap();
        assert_eq!(
            s,
            Step::L2Link {
                l2: "l2".into(),
                device: "nic0".into(),
                flaps: 1
            }
        );
        assert_eq!((s.action(), s.l2()), ("l2-link", Some("l2")));
        let a = HostAction::SetLink {
            device: "nic0".into(),
            up: false,
        };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"action":"set-link","device":"nic0","up":false}"#);
        let c = L2Command::Link {
            bdf: "0000:00:10.0".into(),
            up: true,
            link_irqs: 3,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<L2Command>(&json).unwrap(), c);
    }

    #[test]
    fn enable_msix_takes_a_count_or_a_list() {
        let s: Step =
            serde_json::from_str(r#"{"action":"enable-msix","device":"nic0","vectors":3}"#)
                .unwrap();
        assert_eq!(
            s,
            Step::EnableMsix {
                device: "nic0".into(),
                vectors: VectorSet::Count(3)
            }
        );
        let Step::EnableMsix { vectors, .. } =
            serde_json::from_str(r#"{"action":"enable-msix","device":"nic0","vectors":[5,1,5]}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(vectors.numbers(), [1, 5]);
        assert_eq!(VectorSet::Count(3).numbers(), [0, 1, 2]);
        assert!(
            serde_json::from_str::<Step>(r#"{"action":"enable-msix","device":"nic0"}"#).is_err()
        );
        assert!(serde_json::from_str::<Step>(
            r#"{"action":"enable-msix","device":"nic0","vectors":"all"}"#
        )
        .is_err());
    }

    #[test]
    fn resume_noise_is_warnings_and_the_clocksource_watchdog() {
        assert!(resume_noise(
            "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"
        ));
        assert!(resume_noise(
            "clocksource: Marking clocksource 'tsc' as unstable because the skew is too large:"
        ));
        assert!(resume_noise(
            "clocksource: timekeeping watchdog on CPU0: Marking clocksource 'tsc' as unstable"
        ));
        assert!(!resume_noise("clocksource: Switched to clocksource tsc"));
        assert!(!resume_noise(
            "testbed-agent: resumed: wall clock stepped 2456 ms"
        ));
    }

    #[test]
    fn resumed_and_its_ready_round_trip() {
        let m = HostMessage::Resumed {
            unix_time_ns: 1_700_000_000_000_000_000,
        };
        let line = serde_json::to_string(&m).unwrap();
        assert_eq!(
            line,
            r#"{"type":"resumed","unix_time_ns":1700000000000000000}"#
        );
        assert_eq!(serde_json::from_str::<HostMessage>(&line).unwrap(), m);
        // a boot's Ready carries no resume field at all
        let ready = Ready {
            protocol: PROTOCOL_VERSION,
            platform: Platform::default(),
            resume: None,
        };
        assert!(!serde_json::to_string(&ready).unwrap().contains("resume"));
        let resumed = Ready {
            resume: Some(Box::new(Resume {
                clock_step_ms: 5,
                ..Resume::default()
            })),
            ..ready
        };
        let back: Ready = serde_json::from_str(&serde_json::to_string(&resumed).unwrap()).unwrap();
        assert_eq!(back, resumed);
    }

    #[test]
    fn kernel_warning_headlines() {
        for warn in [
            "WARNING: CPU: 0 PID: 138 at arch/x86/kvm/svm/svm.c:1316 svm_vcpu_free+0x99/0xb0 [kvm_amd]",
            "kernel BUG at lib/list_debug.c:29!",
            "Oops: invalid opcode: 0000 [#1] SMP NOPTI",
            "BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "list_add corruption. prev->next should be next (ffff888006eab890), but was ffff888006ea9cb0.",
            "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [testbed-agent:138]",
            "rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
            "refcount_t: underflow; use-after-free.",
        ] {
            assert!(kernel_warning(warn), "{warn}");
        }
        for quiet in [
            "------------[ cut here ]------------",
            "RIP: 0010:svm_vcpu_free+0x99/0xb0 [kvm_amd]",
            " kvm_arch_vcpu_destroy+0x95/0x170 [kvm]",
            "testbed-agent: step 8 destroy-vm: ok",
            "AMD-Vi: Virtual APIC enabled",
            "vfio-pci 0000:00:02.0: WARNING is not at the start",
        ] {
            assert!(!kernel_warning(quiet), "{quiet}");
        }
    }

    #[test]
    fn enable_vqs_step() {
        let s: Step =
            serde_json::from_str(r#"{"action":"enable-vqs","device":"vdpa0","vectors":[1]}"#)
                .unwrap();
        assert_eq!(
            s,
            Step::EnableVqs {
                device: "vdpa0".into(),
                vectors: VectorSet::List(vec![1])
            }
        );
        assert_eq!(s.action(), "enable-vqs");
        assert!(
            serde_json::from_str::<Step>(r#"{"action":"enable-vqs","device":"vdpa0"}"#).is_err()
        );
    }

    #[test]
    fn create_vm_defaults_to_an_x2apic_l2() {
        let s: Step = serde_json::from_str(r#"{"action":"create-vm","vm":"vm0"}"#).unwrap();
        assert_eq!(
            s,
            Step::CreateVm {
                vm: "vm0".into(),
                apic: L2Apic::X2apic
            }
        );
        // the default is not written, so an x2APIC create-vm reads as before
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"action":"create-vm","vm":"vm0"}"#
        );
        let s: Step =
            serde_json::from_str(r#"{"action":"create-vm","vm":"vm0","apic":"xapic"}"#).unwrap();
        assert_eq!(
            s,
            Step::CreateVm {
                vm: "vm0".into(),
                apic: L2Apic::Xapic
            }
        );
        assert!(serde_json::from_str::<Step>(
            r#"{"action":"create-vm","vm":"vm0","apic":"x3apic"}"#
        )
        .is_err());
    }

    #[test]
    fn start_vm_defaults_to_running() {
        let s: Step = serde_json::from_str(r#"{"action":"start-vm","vm":"vm0"}"#).unwrap();
        assert_eq!(
            s,
            Step::StartVm {
                vm: "vm0".into(),
                mode: L2Mode::Running,
                period_ms: None
            }
        );
        assert_eq!(s.action(), "start-vm");
        let s: Step = serde_json::from_str(
            r#"{"action":"start-vm","vm":"vm0","mode":"alternate","period_ms":3}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            Step::StartVm {
                vm: "vm0".into(),
                mode: L2Mode::Alternate,
                period_ms: Some(3)
            }
        );
        let s: Step = serde_json::from_str(r#"{"action":"stop-vm","vm":"vm0"}"#).unwrap();
        assert_eq!(s.action(), "stop-vm");
    }
}
