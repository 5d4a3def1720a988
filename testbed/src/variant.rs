//! Variants: which IOMMU (and later which posted-interrupt emulation) the L1
//! guest gets. A variant is data: the QEMU arguments that emulate it and the
//! kernel command line that turns it on in the guest, and which QEMU runs it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Iommu {
    /// No IOMMU: VFIO runs in no-IOMMU mode, MSIs are not remapped.
    None,
    /// intel-iommu with interrupt remapping; `eim` selects x2APIC mode.
    IntelIr { eim: bool },
    /// intel-iommu for DMA only, interrupt remapping off.
    IntelDma,
    /// amd-iommu with interrupt remapping and x2APIC (xtsup).
    AmdIr,
    /// AmdIr plus posted interrupts: the IOMMU's guest virtual APIC mode
    /// (GA, GAMSup, GA log) and AVIC in the CPU. Needs the patched QEMU.
    AmdAvic,
    /// virtio-iommu: DMA translation, no interrupt remapping.
    Virtio,
}

/// Which QEMU a variant boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QemuKind {
    /// `qemu-system-x86_64` from PATH (or `--qemu`).
    Stock,
    /// Built by `images::build_qemu` from the pinned source (or
    /// `--qemu-tree`) plus `qemu-patches/`; built once per run, on demand.
    Patched,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    pub summary: &'static str,
    pub iommu: Iommu,
    pub qemu: QemuKind,
    /// Run by `testbed run` when no `--variant` is given.
    pub default: bool,
    /// L1 CPUs (`-smp`).
    pub smp: u32,
}

pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "intel-ir",
        summary: "intel-iommu, interrupt remapping, EIM, guest in x2APIC mode",
        iommu: Iommu::IntelIr { eim: true },
        qemu: QemuKind::Stock,
        default: true,
        smp: 1,
    },
    Variant {
        name: "intel-ir-xapic",
        summary: "intel-iommu, interrupt remapping without EIM, guest in xAPIC mode",
        iommu: Iommu::IntelIr { eim: false },
        qemu: QemuKind::Stock,
        default: true,
        smp: 1,
    },
    Variant {
        name: "intel-dma",
        summary: "intel-iommu for DMA only, interrupt remapping off",
        iommu: Iommu::IntelDma,
        qemu: QemuKind::Stock,
        default: false,
        smp: 1,
    },
    Variant {
        name: "amd-ir",
        summary: "amd-iommu, interrupt remapping, xtsup (x2APIC)",
        iommu: Iommu::AmdIr,
        qemu: QemuKind::Stock,
        default: true,
        smp: 1,
    },
    Variant {
        name: "virtio-iommu",
        summary: "virtio-iommu, no interrupt remapping",
        iommu: Iommu::Virtio,
        qemu: QemuKind::Stock,
        default: false,
        smp: 1,
    },
    Variant {
        name: "none",
        // Not a default: Debian's kernels are built without
        // CONFIG_VFIO_NOIOMMU, so vfio-pci cannot take a device there.
        summary: "no IOMMU, VFIO in no-IOMMU mode (needs CONFIG_VFIO_NOIOMMU)",
        iommu: Iommu::None,
        qemu: QemuKind::Stock,
        default: false,
        smp: 1,
    },
    Variant {
        name: "amd-ir-patched",
        // amd-ir on the patched QEMU: proves the build pipeline end to end.
        // The patches are opt-in (`avic=on`, `guest-vapic=on`), so without
        // them this behaves as the pinned upstream QEMU and its snapshot
        // bodies equal amd-ir's (checked with patches 0001-0008 + 0020-0025).
        // One difference: an SMBus function at 00:14.0, the IO-APIC's
        // requester ID ([`SB_IOAPIC_FUNCTION`]), without which Linux 7.3
        // turns interrupt remapping off.
        summary:
            "amd-ir on the patched QEMU built from qemu-patches/, with the FCH SMBus at 00:14.0",
        iommu: Iommu::AmdIr,
        qemu: QemuKind::Patched,
        default: false,
        smp: 1,
    },
    // The posted-interrupt variant: amd-ir + `-cpu max,avic=on` + the
    // amd-iommu's guest virtual APIC mode (`guest-vapic=on`: GA, GAMSup, GA
    // log) + `kvm_amd.avic=1` in L1. Needs qemu-patches/ (0001-0019 TCG
    // AVIC, 0020-0039 amd-iommu); stock 10.0.13 refuses `guest-vapic`.
    // Not a default yet. Measured with patches 0001-0008 + 0020-0025: it
    // boots, KVM reports apicv and device-posted IRQs, and the consumer
    // registers and connects; but the report counts interrupts by L1's
    // host IRQ line and KVM's injections, which a posted interrupt
    // bypasses: the runner reads the amd-iommu's counters (`qom-get`) before
    // and after each scenario, and `lossless` accounts for what it posted.
    Variant {
        name: "amd-avic",
        summary: "amd-ir + AVIC + amd-iommu guest vAPIC: device-posted interrupts",
        iommu: Iommu::AmdAvic,
        qemu: QemuKind::Patched,
        default: false,
        // Two L1 CPUs: with one, the vCPU thread is never in guest mode when
        // an MSI arrives (the agent's thread runs then), so the IOMMU's
        // doorbell to a running vCPU would never be exercised
        // (docs/avic-emulation.md).
        smp: 2,
    },
];

/// QEMU `id=` of the amd-iommu device.
pub const AMD_IOMMU_ID: &str = "iommu0";
/// The PCI function at the amd-iommu's IO-APIC requester ID. QEMU's IVRS
/// names the IO-APIC 00:14.0 (where AMD's FCH has its SMBus controller)
/// and its interrupt messages carry that ID, but q35 has nothing there.
/// Linux 7.3 (16f52863b2ec) accepts the southbridge IO-APIC only if that
/// function is an SMBus controller or an ISA bridge, and disables
/// interrupt remapping otherwise; older kernels want exactly 00:14.0. An
/// SMBus controller there is what AMD platforms have. Stock QEMU (before
/// qemu-patches/0027) refuses `-device ICH9-SMB`
/// (docs/amd-iommu-ga-emulation.md, "The southbridge IO-APIC").
pub const SB_IOAPIC_FUNCTION: &str = "ICH9-SMB,addr=14.0";
/// Where QEMU puts a `-device` with `id=` [`AMD_IOMMU_ID`] in the QOM tree.
pub const AMD_IOMMU_QOM_PATH: &str = "/machine/peripheral/iommu0";

#[derive(Debug, thiserror::Error)]
#[error("unknown variant {name:?} (known: {known})")]
pub struct UnknownVariant {
    pub name: String,
    pub known: String,
}

pub fn lookup(name: &str) -> Result<&'static Variant, UnknownVariant> {
    VARIANTS
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| UnknownVariant {
            name: name.to_owned(),
            known: VARIANTS
                .iter()
                .map(|v| v.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

pub fn defaults() -> impl Iterator<Item = &'static Variant> {
    VARIANTS.iter().filter(|v| v.default)
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl Variant {
    /// QOM path of the IOMMU whose interrupt counters the runner reads
    /// (`qom-get`) around each scenario: only IOMMUs that post interrupts.
    pub fn iommu_counters(&self) -> Option<&'static str> {
        match self.iommu {
            Iommu::AmdAvic => Some(AMD_IOMMU_QOM_PATH),
            _ => None,
        }
    }

    /// Whether the variant puts [`SB_IOAPIC_FUNCTION`] at the IO-APIC's
    /// requester ID: amd-iommu on the patched QEMU, which allows it.
    pub fn sb_ioapic_function(&self) -> bool {
        matches!(self.iommu, Iommu::AmdIr | Iommu::AmdAvic) && self.qemu == QemuKind::Patched
    }

    /// `-device` arguments for the IOMMU (and the southbridge function its
    /// IO-APIC needs). They must come before any other PCI device so the
    /// IOMMU sees every device it translates, and 00:14.0 is taken before
    /// QEMU assigns addresses to the rest.
    pub fn iommu_args(&self) -> Vec<String> {
        let device = match self.iommu {
            Iommu::None => return Vec::new(),
            Iommu::IntelIr { eim } => {
                format!(
                    "intel-iommu,intremap=on,eim={}",
                    if eim { "on" } else { "off" }
                )
            }
            Iommu::IntelDma => "intel-iommu,intremap=off".to_owned(),
            Iommu::AmdIr => format!("amd-iommu,id={AMD_IOMMU_ID},intremap=on,xtsup=on"),
            Iommu::AmdAvic => {
                format!("amd-iommu,id={AMD_IOMMU_ID},intremap=on,xtsup=on,guest-vapic=on")
            }
            Iommu::Virtio => "virtio-iommu-pci".to_owned(),
        };
        let mut args = vec!["-device".to_owned(), device];
        if self.sb_ioapic_function() {
            args.extend(["-device".to_owned(), SB_IOAPIC_FUNCTION.to_owned()]);
        }
        args
    }

    /// CPU model. Without EIM, Linux cannot remap interrupts to x2APIC IDs,
    /// so the xAPIC variant hides x2APIC from the guest to keep it honest.
    pub fn cpu(&self) -> &'static str {
        match self.iommu {
            Iommu::IntelIr { eim: false } => "max,x2apic=off",
            Iommu::AmdAvic => "max,avic=on",
            _ => "max",
        }
    }

    /// The variant gives L1 a CPU with AVIC and asks its KVM to use it
    /// (`kvm_amd.avic=1`): KVM's AVIC events must show it in use.
    pub fn avic(&self) -> bool {
        self.cpu().contains("avic=on")
    }

    /// Guest kernel command-line words that enable the variant.
    pub fn cmdline(&self) -> Vec<&'static str> {
        match self.iommu {
            Iommu::None => vec!["vfio.enable_unsafe_noiommu_mode=1"],
            Iommu::IntelIr { eim: true } => vec!["intel_iommu=on"],
            Iommu::IntelIr { eim: false } => vec!["intel_iommu=on", "nox2apic"],
            Iommu::IntelDma => vec!["intel_iommu=on", "intremap=off"],
            // (every variant gets no_timer_check: qemu::cmdline; QEMU's
            // amd-iommu under TCG delivers no remapped IO-APIC interrupts,
            // so the check would fail there every time)
            Iommu::AmdIr => vec!["amd_iommu=on"],
            Iommu::AmdAvic => vec!["amd_iommu=on", "kvm_amd.avic=1"],
            Iommu::Virtio => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = VARIANTS.iter().map(|v| v.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), VARIANTS.len());
    }

    #[test]
    fn unknown_variant_lists_known_ones() {
        let err = lookup("intel").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown variant \"intel\" (known: intel-ir, "),
            "{err}"
        );
    }

    #[test]
    fn patched_variants_are_not_defaults() {
        let patched = lookup("amd-ir-patched").unwrap();
        let stock = lookup("amd-ir").unwrap();
        assert_eq!(patched.qemu, QemuKind::Patched);
        assert_eq!(stock.qemu, QemuKind::Stock);
        // the same IOMMU, plus the southbridge function only the patched
        // QEMU can create (Linux 7.3 wants it for interrupt remapping)
        assert_eq!(
            patched.iommu_args(),
            [
                stock.iommu_args(),
                vec!["-device".into(), SB_IOAPIC_FUNCTION.into()]
            ]
            .concat()
        );
        assert!(!stock.sb_ioapic_function());
        assert_eq!(patched.cmdline(), stock.cmdline());
        assert_eq!(patched.cpu(), stock.cpu());
        assert!(defaults().all(|v| v.qemu == QemuKind::Stock));
    }

    #[test]
    fn avic_variant_arguments() {
        let v = lookup("amd-avic").unwrap();
        assert_eq!(v.qemu, QemuKind::Patched);
        assert!(!v.default);
        assert_eq!(
            v.iommu_args(),
            [
                "-device",
                "amd-iommu,id=iommu0,intremap=on,xtsup=on,guest-vapic=on",
                "-device",
                "ICH9-SMB,addr=14.0"
            ]
        );
        assert_eq!(v.cpu(), "max,avic=on");
        assert_eq!(v.smp, 2);
        assert_eq!(v.iommu_counters(), Some("/machine/peripheral/iommu0"));
        // only the posting IOMMU is read; everything else keeps one CPU
        for other in VARIANTS.iter().filter(|o| o.name != "amd-avic") {
            assert_eq!(other.smp, 1, "{}", other.name);
            assert_eq!(other.iommu_counters(), None, "{}", other.name);
        }
        assert_eq!(v.cmdline(), ["amd_iommu=on", "kvm_amd.avic=1"]);
        assert!(
            v.avic()
                && !lookup("amd-ir").unwrap().avic()
                && !lookup("amd-ir-patched").unwrap().avic()
        );
    }

    #[test]
    fn iommu_arguments() {
        assert_eq!(
            lookup("amd-ir").unwrap().iommu_args(),
            ["-device", "amd-iommu,id=iommu0,intremap=on,xtsup=on"]
        );
        assert_eq!(
            lookup("intel-ir-xapic").unwrap().iommu_args(),
            ["-device", "intel-iommu,intremap=on,eim=off"]
        );
        assert!(lookup("none").unwrap().iommu_args().is_empty());
        // only amd-iommu on the patched QEMU gets the southbridge function
        for v in VARIANTS {
            let smbus = v.iommu_args().iter().any(|a| a.starts_with("ICH9-SMB"));
            assert_eq!(
                smbus,
                matches!(v.name, "amd-ir-patched" | "amd-avic"),
                "{}",
                v.name
            );
        }
        assert!(lookup("none")
            .unwrap()
            .cmdline()
            .contains(&"vfio.enable_unsafe_noiommu_mode=1"));
    }
}
