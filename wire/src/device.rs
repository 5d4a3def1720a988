//! Device models as data: what QEMU device each is, which interrupt
//! capability it has, and the BAR0 register writes that set it up, raise
//! vector n, acknowledge it, and mask or unmask it at the device.
//!
//! The agent executes these writes and knows nothing else about a model, so
//! a new device is a new table entry, not new code. Register offsets and
//! bits are from QEMU's device models (hw/misc/edu.c, hw/net/igb_core.c,
//! hw/net/e1000e_core.c) and the Intel 82576 / 82574 datasheets.
//!
//! vDPA models ([`Attach::Vdpa`]) are driven through vhost-vdpa instead of
//! VFIO: their vectors are virtqueues (`vdpa0/vq1`), and [`VdpaSpec`] says
//! which management device creates them and how each virtqueue is made to
//! signal (a buffer the device completes).

use serde::{Deserialize, Serialize};

/// Device models the agent knows how to drive.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceModel {
    /// QEMU's `edu`: one MSI vector, raised by a write to BAR0+0x60, acked at BAR0+0x64.
    Edu,
    /// QEMU's `igb` (82576 PF): MSI-X, 10 vectors, raised through EICS.
    Igb,
    /// Virtual function 0 of a QEMU `igb` (82576 VF): MSI-X, 3 vectors,
    /// raised through the VF's own VTEICS. The agent makes the VF: it opens
    /// the PF through vfio-pci, sets it up and enables one VF with a VF
    /// token, then opens the VF on its own.
    IgbVf,
    /// QEMU's `e1000e` (82574): MSI-X, 4 of its 5 vectors (one per queue
    /// interrupt cause that IVAR maps to a vector), raised through ICS.
    E1000e,
    /// The kernel's vDPA network simulator (`vdpa_sim_net`) through
    /// vhost-vdpa: no PCI device, no per-queue IRQ (it calls the
    /// virtqueue's callback from a work item), so vhost-vdpa registers no
    /// irqbypass producer. Loops TX frames back into RX.
    VdpaSimNet,
    /// QEMU's `virtio-net-pci` (modern only, behind the IOMMU) driven by
    /// the kernel's `vp_vdpa` through vhost-vdpa: one MSI-X vector per
    /// virtqueue, so one irqbypass producer per virtqueue.
    VpVdpaNet,
}

/// Which interrupt capability a model's vectors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// Vectors `msi0..`: VFIO_PCI_MSI_IRQ_INDEX.
    Msi,
    /// Vectors `msix0..`: VFIO_PCI_MSIX_IRQ_INDEX.
    Msix,
    /// Vectors `vq0..`: a vDPA device's virtqueues, each signalling its
    /// vhost-vdpa call eventfd.
    Vq,
}

impl IrqKind {
    /// The vector-name prefix in scenarios: `dev0/msi0`, `nic0/msix3`.
    pub fn prefix(self) -> &'static str {
        match self {
            IrqKind::Msi => "msi",
            IrqKind::Msix => "msix",
            IrqKind::Vq => "vq",
        }
    }
}

/// The value of a register write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegValue {
    /// Always this value.
    Const(u32),
    /// `1 << (shift + n)` for vector n.
    VectorBit { shift: u32 },
}

impl RegValue {
    pub fn for_vector(self, n: u32) -> u32 {
        match self {
            RegValue::Const(v) => v,
            RegValue::VectorBit { shift } => 1u32 << (shift + n),
        }
    }
}

/// A 32-bit write at an offset into BAR0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegWrite {
    pub offset: u64,
    pub value: RegValue,
}

const fn w(offset: u64, value: u32) -> RegWrite {
    RegWrite {
        offset,
        value: RegValue::Const(value),
    }
}

const fn bit(offset: u64, shift: u32) -> RegWrite {
    RegWrite {
        offset,
        value: RegValue::VectorBit { shift },
    }
}

/// Which userspace driver the agent opens a device through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// vfio-pci: the register writes of [`ModelSpec`] raise its vectors.
    Vfio,
    /// A vDPA device created over the `vdpa` generic netlink family and
    /// opened through vhost-vdpa.
    Vdpa(&'static VdpaSpec),
}

/// Where a vDPA device comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mgmtdev {
    /// A management device with a fixed name and no bus (`vdpasim_net`).
    Named(&'static str),
    /// The PCI function itself (`pci/<bdf>`), once bound to this PCI driver
    /// (its name in /sys/bus/pci/drivers, which may differ from the module's).
    Pci { driver: &'static str },
}

/// How the agent makes one virtqueue signal once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VqFire {
    /// A transmit queue: post one frame and kick; the device completes it
    /// and signals this queue.
    Tx,
    /// A receive queue of a device that loops transmitted frames back:
    /// post one receive buffer here, then one frame on transmit queue `tx`
    /// with that queue's interrupts suppressed (VRING_AVAIL_F_NO_INTERRUPT),
    /// so only this queue signals.
    RxLoopback { tx: u32 },
    /// Nothing can make this queue signal; the reason is the error a
    /// scenario firing it gets.
    Cannot(&'static str),
}

/// How to drive a vDPA model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VdpaSpec {
    pub mgmtdev: Mgmtdev,
    /// Kernel modules the model needs in L1 (checked before use, so a
    /// kernel without them fails with their names).
    pub modules: &'static [&'static str],
    /// One entry per virtqueue the agent sets up, in queue order.
    pub vqs: &'static [VqFire],
    /// The parent gives each virtqueue an IRQ of its own (`get_vq_irq`):
    /// its interrupts pass through an L1 host IRQ line, and vhost-vdpa
    /// registers an irqbypass producer. Without, the parent signals the
    /// call eventfd from kernel code, as software would.
    pub queue_irqs: bool,
}

/// How to drive one device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// The QEMU `-device` driver name; `None` for a device that is not on
    /// L1's PCI bus (the vDPA simulator lives in the L1 kernel).
    pub qemu_driver: Option<&'static str>,
    /// What the device is called in messages and reports: the QEMU driver,
    /// else the kernel driver that provides it.
    pub label: &'static str,
    pub attach: Attach,
    /// Extra `-device` properties (the NICs boot no option ROM: nothing
    /// here uses their network side, and SeaBIOS would run it).
    pub qemu_props: &'static str,
    pub irq: IrqKind,
    /// Vectors the device offers (MSI: the capability's count; MSI-X: the table size).
    pub vectors: u32,
    /// Writes after the device is opened (VFIO resets it on open).
    pub setup: &'static [RegWrite],
    /// The scenario's device is virtual function 0 of the `qemu_driver`
    /// PF, which the agent enables through SR-IOV.
    pub sriov_vf: bool,
    /// Writes into the PF's BAR0 before its VF is enabled (SR-IOV only).
    pub pf_setup: &'static [RegWrite],
    /// Writes that make the device raise vector n once.
    pub fire: &'static [RegWrite],
    /// Writes that acknowledge vector n after it was raised.
    pub ack: &'static [RegWrite],
    /// Writes that mask vector n at the device: a raise is held pending.
    /// Empty when the model cannot mask.
    pub mask: &'static [RegWrite],
    /// Writes that unmask vector n: a pending raise is sent, once.
    pub unmask: &'static [RegWrite],
    /// With MSI off, `fire` asserts the device's INTx pin (level) and
    /// `ack` de-asserts it: the device can be driven through
    /// `enable-intx`.
    pub intx: bool,
}

// edu (hw/misc/edu.c): irq_status |= value at 0x60 raises MSI; 0x64 clears.
// With MSI off, edu_raise_irq/edu_lower_irq drive pin A instead:
// pci_set_irq(1) while irq_status is non-zero, pci_set_irq(0) once 0x64
// cleared it, so the line is level-triggered and stays asserted until acked.
const EDU: ModelSpec = ModelSpec {
    qemu_driver: Some("edu"),
    label: "edu",
    attach: Attach::Vfio,
    qemu_props: "",
    irq: IrqKind::Msi,
    vectors: 1,
    setup: &[],
    sriov_vf: false,
    pf_setup: &[],
    fire: &[w(0x60, 1)],
    ack: &[w(0x64, 1)],
    mask: &[],
    unmask: &[],
    intx: true,
};

// igb (82576 datasheet 7.3, hw/net/igb_core.c). GPIE.Multiple_MSIX (bit 4)
// maps EICR bit n to MSI-X vector n; EIAC auto-clears EICR bit n once the
// vector is sent, so every EICS write raises again; EIMS enables, EIMC
// masks (a cause set while masked stays in EICR and is sent on EIMS).
const IGB_GPIE: u64 = 0x1514;
const IGB_EICS: u64 = 0x1520;
const IGB_EIMS: u64 = 0x1524;
const IGB_EIMC: u64 = 0x1528;
const IGB_EIAC: u64 = 0x152c;
const IGB_VECTORS: u32 = 10;
const IGB_GPIE_MULTIPLE_MSIX: u32 = 1 << 4;
const IGB_ALL: u32 = (1 << IGB_VECTORS) - 1;
const IGB: ModelSpec = ModelSpec {
    qemu_driver: Some("igb"),
    label: "igb",
    attach: Attach::Vfio,
    qemu_props: "romfile=",
    irq: IrqKind::Msix,
    vectors: IGB_VECTORS,
    setup: &[
        w(IGB_GPIE, IGB_GPIE_MULTIPLE_MSIX),
        w(IGB_EIAC, IGB_ALL),
        w(IGB_EIMS, IGB_ALL),
    ],
    sriov_vf: false,
    pf_setup: &[],
    fire: &[bit(IGB_EICS, 0)],
    ack: &[],
    mask: &[bit(IGB_EIMC, 0)],
    unmask: &[bit(IGB_EIMS, 0)],
    intx: false,
};

// e1000e (82574 datasheet 10.2.4, hw/net/e1000e_core.c). IVAR gives each
// of the five MSI-X causes (RxQ0, RxQ1, TxQ0, TxQ1, Other: ICR bits 20-24)
// a 4-bit entry, vector in bits 0-2 and valid in bit 3; queue cause n maps
// to vector n here. Other is left unmapped and disabled, because the
// device raises it on its own (a link-status change after reset sets
// ICR.LSC, which MSI-X mode folds into Other): a scenario's counts would
// not be the scenario's. EIAC auto-clears the cause after the vector is sent;
// CTRL_EXT.IAME keeps IMS set across that auto-clear, so every ICS write
// raises again. IMS enables a cause, IMC masks it (it stays in ICR and is
// sent when IMS sets it again).
//
// QEMU 10.0's model sends MSI-X vectors more often than they are raised:
// EITR cannot go below E1000E_MIN_XITR, so each sent vector arms the
// vector's throttling timer, and the timer's expiry sends the vector again
// whether or not it held anything back (e1000e_intrmgr_on_msix_throttling_timer
// does not check IMS & ICR the way the MSI/INTx timer does). The testbed's
// lossless check catches it: see bugs/e1000e-msix-resend.toml.
const E1000E_CTRL_EXT: u64 = 0x18;
const E1000E_ICS: u64 = 0xc8;
const E1000E_IMS: u64 = 0xd0;
const E1000E_IMC: u64 = 0xd8;
const E1000E_EIAC: u64 = 0xdc;
const E1000E_IVAR: u64 = 0xe4;
const E1000E_CAUSE_SHIFT: u32 = 20;
const E1000E_VECTORS: u32 = 4;
const E1000E_CAUSES: u32 = ((1 << E1000E_VECTORS) - 1) << E1000E_CAUSE_SHIFT;
const E1000E_IVAR_IDENTITY: u32 = 0x8 | (0x9 << 4) | (0xa << 8) | (0xb << 12);
const E1000E_CTRL_EXT_IAME: u32 = 1 << 27;
const E1000E: ModelSpec = ModelSpec {
    qemu_driver: Some("e1000e"),
    label: "e1000e",
    attach: Attach::Vfio,
    qemu_props: "romfile=",
    irq: IrqKind::Msix,
    vectors: E1000E_VECTORS,
    setup: &[
        w(E1000E_CTRL_EXT, E1000E_CTRL_EXT_IAME),
        w(E1000E_IVAR, E1000E_IVAR_IDENTITY),
        w(E1000E_EIAC, E1000E_CAUSES),
        w(E1000E_IMS, E1000E_CAUSES),
    ],
    sriov_vf: false,
    pf_setup: &[],
    fire: &[bit(E1000E_ICS, E1000E_CAUSE_SHIFT)],
    ack: &[],
    mask: &[bit(E1000E_IMC, E1000E_CAUSE_SHIFT)],
    unmask: &[bit(E1000E_IMS, E1000E_CAUSE_SHIFT)],
    intx: false,
};

// igb VF (82576 datasheet 7.9, hw/net/igbvf.c, igb_core.c). The VF's
// VTEICS/VTEIMS/VTEIMC/VTEIAC sit at the PF's EICS/EIMS/EIMC/EIAC offsets
// in the VF's BAR0; QEMU maps VF n's three vectors onto PF EICR bits
// 22 - 3n.. and sends them as the VF's MSI-X vectors, but only with the
// PF's GPIE.Multiple_MSIX set, so the PF is set up first.
const IGB_VF_ALL: u32 = 0x7;
const IGB_VF: ModelSpec = ModelSpec {
    qemu_driver: Some("igb"),
    label: "igb-vf",
    attach: Attach::Vfio,
    qemu_props: "romfile=",
    irq: IrqKind::Msix,
    vectors: 3,
    setup: &[w(IGB_EIAC, IGB_VF_ALL), w(IGB_EIMS, IGB_VF_ALL)],
    sriov_vf: true,
    pf_setup: &[w(IGB_GPIE, IGB_GPIE_MULTIPLE_MSIX)],
    fire: &[bit(IGB_EICS, 0)],
    ack: &[],
    mask: &[bit(IGB_EIMC, 0)],
    unmask: &[bit(IGB_EIMS, 0)],
    intx: false,
};

// virtio-net (virtio spec 5.1.2): queue 0 receives, queue 1 transmits;
// no control queue is negotiated. vdpa_sim_net (drivers/vdpa/vdpa_sim/
// vdpa_sim_net.c) copies each transmitted frame into the next receive
// buffer and completes both, so its receive queue can be made to signal.
const VDPA_SIM_NET: VdpaSpec = VdpaSpec {
    mgmtdev: Mgmtdev::Named("vdpasim_net"),
    modules: &["vhost_vdpa", "vdpa_sim_net"],
    vqs: &[VqFire::RxLoopback { tx: 1 }, VqFire::Tx],
    queue_irqs: false,
};
const VDPA_SIM: ModelSpec = ModelSpec {
    qemu_driver: None,
    label: "vdpa_sim_net",
    attach: Attach::Vdpa(&VDPA_SIM_NET),
    qemu_props: "",
    irq: IrqKind::Vq,
    vectors: 2,
    setup: &[],
    fire: &[],
    ack: &[],
    mask: &[],
    unmask: &[],
    sriov_vf: false,
    pf_setup: &[],
    intx: false,
};

// QEMU's virtio-net-pci without a netdev: a transmitted frame has no peer
// and is dropped (qemu_sendv_packet_async), but the buffer is completed and
// the queue's MSI-X vector raised; nothing ever arrives on the receive
// queue. Modern only (vp_vdpa drives the modern interface), and with
// iommu_platform so that its DMA goes through the IOMMU domain vhost-vdpa
// maps (without it QEMU's virtio device would bypass the IOMMU).
const VP_VDPA_NET: VdpaSpec = VdpaSpec {
    mgmtdev: Mgmtdev::Pci { driver: "vp-vdpa" },
    modules: &["vhost_vdpa", "vp_vdpa"],
    vqs: &[
        VqFire::Cannot(
            "virtio-net-pci has no network backend: nothing arrives on its receive queue",
        ),
        VqFire::Tx,
    ],
    queue_irqs: true,
};
const VP_VDPA: ModelSpec = ModelSpec {
    qemu_driver: Some("virtio-net-pci"),
    label: "virtio-net-pci",
    attach: Attach::Vdpa(&VP_VDPA_NET),
    qemu_props: "disable-legacy=on,iommu_platform=on,romfile=",
    irq: IrqKind::Vq,
    vectors: 2,
    setup: &[],
    fire: &[],
    ack: &[],
    mask: &[],
    unmask: &[],
    sriov_vf: false,
    pf_setup: &[],
    intx: false,
};

impl DeviceModel {
    pub const ALL: [DeviceModel; 6] = [
        DeviceModel::Edu,
        DeviceModel::Igb,
        DeviceModel::IgbVf,
        DeviceModel::E1000e,
        DeviceModel::VdpaSimNet,
        DeviceModel::VpVdpaNet,
    ];

    pub fn spec(self) -> &'static ModelSpec {
        match self {
            DeviceModel::Edu => &EDU,
            DeviceModel::Igb => &IGB,
            DeviceModel::IgbVf => &IGB_VF,
            DeviceModel::E1000e => &E1000E,
            DeviceModel::VdpaSimNet => &VDPA_SIM,
            DeviceModel::VpVdpaNet => &VP_VDPA,
        }
    }

    /// The QEMU `-device` driver name; `None` when the device is not on
    /// L1's PCI bus.
    pub fn qemu_driver(self) -> Option<&'static str> {
        self.spec().qemu_driver
    }

    /// What the device is called in messages and reports.
    pub fn label(self) -> &'static str {
        self.spec().label
    }

    /// The vDPA side of the model, if it is one.
    pub fn vdpa(self) -> Option<&'static VdpaSpec> {
        match self.spec().attach {
            Attach::Vfio => None,
            Attach::Vdpa(v) => Some(v),
        }
    }

    /// How many vectors the model offers.
    pub fn vectors(self) -> u32 {
        self.spec().vectors
    }

    pub fn irq(self) -> IrqKind {
        self.spec().irq
    }

    /// The scenario name of vector n, e.g. `dev0/msi0` or `nic0/msix3`.
    pub fn vector_name(self, device: &str, n: u32) -> String {
        format!("{device}/{}{n}", self.irq().prefix())
    }

    /// Whether the device's vectors pass through an L1 host IRQ line (every
    /// VFIO model; a vDPA model whose parent has per-queue IRQs).
    pub fn host_irq(self) -> bool {
        self.vdpa().is_none_or(|v| v.queue_irqs)
    }

    /// Whether the device can hold a vector pending (mask/unmask steps).
    pub fn can_mask(self) -> bool {
        !self.spec().mask.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_can_fire_each_of_its_vectors_distinctly() {
        for m in DeviceModel::ALL {
            let s = m.spec();
            if let Some(v) = m.vdpa() {
                assert_eq!(s.irq, IrqKind::Vq, "{m:?}");
                assert_eq!(
                    v.vqs.len() as u32,
                    s.vectors,
                    "{m:?}: one fire rule per virtqueue"
                );
                assert!(v.vqs.contains(&VqFire::Tx), "{m:?}: no queue can fire");
                for q in v.vqs {
                    if let VqFire::RxLoopback { tx } = q {
                        assert_eq!(
                            v.vqs.get(*tx as usize),
                            Some(&VqFire::Tx),
                            "{m:?}: loopback needs a TX queue"
                        );
                    }
                }
                assert!(
                    s.fire.is_empty() && s.setup.is_empty() && !m.can_mask(),
                    "{m:?}: no BAR0 writes"
                );
                continue;
            }
            assert!(s.qemu_driver.is_some(), "{m:?}: VFIO needs a PCI device");
            assert!(!s.fire.is_empty(), "{m:?}");
            assert_eq!(
                s.mask.is_empty(),
                s.unmask.is_empty(),
                "{m:?}: mask without unmask"
            );
            for op in s.fire.iter().chain(s.mask).chain(s.unmask) {
                if let RegValue::VectorBit { shift } = op.value {
                    assert!(
                        shift + s.vectors <= 32,
                        "{m:?}: vector bits overflow a register"
                    );
                }
            }
            if s.vectors > 1 {
                let a: Vec<u32> = s.fire.iter().map(|o| o.value.for_vector(0)).collect();
                let b: Vec<u32> = s
                    .fire
                    .iter()
                    .map(|o| o.value.for_vector(s.vectors - 1))
                    .collect();
                assert_ne!(a, b, "{m:?}: firing vector 0 and the last write the same");
            }
        }
    }

    #[test]
    fn register_values() {
        assert_eq!(DeviceModel::Igb.spec().fire[0].value.for_vector(3), 1 << 3);
        assert_eq!(
            DeviceModel::E1000e.spec().fire[0].value.for_vector(3),
            0x0080_0000,
            "TxQ1 cause"
        );
        assert_eq!(
            DeviceModel::E1000e.spec().fire[0].value.for_vector(0),
            0x0010_0000,
            "RxQ0 cause"
        );
        assert_eq!(DeviceModel::Igb.vector_name("nic0", 9), "nic0/msix9");
        assert_eq!(DeviceModel::Edu.vector_name("dev0", 0), "dev0/msi0");
        assert!(!DeviceModel::Edu.can_mask() && DeviceModel::Igb.can_mask());
        let ser: Vec<String> = DeviceModel::ALL
            .iter()
            .map(|m| serde_json::to_string(m).unwrap())
            .collect();
        assert_eq!(
            ser,
            [
                r#""edu""#,
                r#""igb""#,
                r#""igb-vf""#,
                r#""e1000e""#,
                r#""vdpa-sim-net""#,
                r#""vp-vdpa-net""#
            ]
        );
        for m in DeviceModel::ALL {
            assert_eq!(m.spec().sriov_vf, !m.spec().pf_setup.is_empty(), "{m:?}");
        }
        assert_eq!(DeviceModel::VpVdpaNet.vector_name("vdpa0", 1), "vdpa0/vq1");
        assert_eq!(DeviceModel::VdpaSimNet.qemu_driver(), None);
        assert!(
            !DeviceModel::VdpaSimNet.host_irq()
                && DeviceModel::VpVdpaNet.host_irq()
                && DeviceModel::Edu.host_irq()
        );
    }
}
