//! Device models as data: what QEMU device each is, which interrupt
//! capability it has, and the BAR0 register writes that set it up, raise
//! vector n, acknowledge it, and mask or unmask it at the device.
//!
//! The agent executes these writes and knows nothing else about a model, so
//! a new device is a new table entry, not new code. Register offsets and
//! bits are from QEMU's device models (hw/misc/edu.c, hw/net/igb_core.c,
//! hw/net/e1000e_core.c) and the Intel 82576 / 82574 datasheets.

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
}

/// Which interrupt capability a model's vectors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// Vectors `msi0..`: VFIO_PCI_MSI_IRQ_INDEX.
    Msi,
    /// Vectors `msix0..`: VFIO_PCI_MSIX_IRQ_INDEX.
    Msix,
}

impl IrqKind {
    /// The vector-name prefix in scenarios: `dev0/msi0`, `nic0/msix3`.
    pub fn prefix(self) -> &'static str {
        match self {
            IrqKind::Msi => "msi",
            IrqKind::Msix => "msix",
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

/// How to drive one device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// The QEMU `-device` driver name.
    pub qemu_driver: &'static str,
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
}

// edu (hw/misc/edu.c): irq_status |= value at 0x60 raises MSI; 0x64 clears.
const EDU: ModelSpec = ModelSpec {
    qemu_driver: "edu",
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
    qemu_driver: "igb",
    qemu_props: "romfile=",
    irq: IrqKind::Msix,
    vectors: IGB_VECTORS,
    setup: &[w(IGB_GPIE, IGB_GPIE_MULTIPLE_MSIX), w(IGB_EIAC, IGB_ALL), w(IGB_EIMS, IGB_ALL)],
    sriov_vf: false,
    pf_setup: &[],
    fire: &[bit(IGB_EICS, 0)],
    ack: &[],
    mask: &[bit(IGB_EIMC, 0)],
    unmask: &[bit(IGB_EIMS, 0)],
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
    qemu_driver: "e1000e",
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
};

// igb VF (82576 datasheet 7.9, hw/net/igbvf.c, igb_core.c). The VF's
// VTEICS/VTEIMS/VTEIMC/VTEIAC sit at the PF's EICS/EIMS/EIMC/EIAC offsets
// in the VF's BAR0; QEMU maps VF n's three vectors onto PF EICR bits
// 22 - 3n.. and sends them as the VF's MSI-X vectors, but only with the
// PF's GPIE.Multiple_MSIX set, so the PF is set up first.
const IGB_VF_ALL: u32 = 0x7;
const IGB_VF: ModelSpec = ModelSpec {
    qemu_driver: "igb",
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
};

impl DeviceModel {
    pub const ALL: [DeviceModel; 4] = [DeviceModel::Edu, DeviceModel::Igb, DeviceModel::IgbVf, DeviceModel::E1000e];

    /// The model's name in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            DeviceModel::Edu => "edu",
            DeviceModel::Igb => "igb",
            DeviceModel::IgbVf => "igb-vf",
            DeviceModel::E1000e => "e1000e",
        }
    }

    pub fn spec(self) -> &'static ModelSpec {
        match self {
            DeviceModel::Edu => &EDU,
            DeviceModel::Igb => &IGB,
            DeviceModel::IgbVf => &IGB_VF,
            DeviceModel::E1000e => &E1000E,
        }
    }

    /// The QEMU `-device` driver name.
    pub fn qemu_driver(self) -> &'static str {
        self.spec().qemu_driver
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
            assert!(!s.fire.is_empty(), "{m:?}");
            assert_eq!(s.mask.is_empty(), s.unmask.is_empty(), "{m:?}: mask without unmask");
            for op in s.fire.iter().chain(s.mask).chain(s.unmask) {
                if let RegValue::VectorBit { shift } = op.value {
                    assert!(shift + s.vectors <= 32, "{m:?}: vector bits overflow a register");
                }
            }
            if s.vectors > 1 {
                let a: Vec<u32> = s.fire.iter().map(|o| o.value.for_vector(0)).collect();
                let b: Vec<u32> = s.fire.iter().map(|o| o.value.for_vector(s.vectors - 1)).collect();
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
        assert_eq!(ser, [r#""edu""#, r#""igb""#, r#""igb-vf""#, r#""e1000e""#]);
        for m in DeviceModel::ALL {
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.name()));
            assert_eq!(m.spec().sriov_vf, !m.spec().pf_setup.is_empty(), "{m:?}");
        }
    }
}
