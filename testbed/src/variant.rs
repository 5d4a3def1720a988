//! Variants: which IOMMU (and later which posted-interrupt emulation) the L1
//! guest gets. A variant is data: the QEMU arguments that emulate it and the
//! kernel command line that turns it on in the guest, and which QEMU runs it.

use std::fmt;

use crate::qemu::Accel;

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
    /// AmdAvic with x2AVIC in the CPU as well, on a family 19h Zen 4
    /// model: KVM runs guests in x2APIC mode with x2AVIC, not hybrid AVIC.
    AmdX2avic,
    /// virtio-iommu: DMA translation, no interrupt remapping.
    Virtio,
    /// intel-iommu with interrupt remapping, EIM and VT-d interrupt posting
    /// (`posted-interrupts=on`, qemu-patches/0040-0043); L1 posts its own
    /// device MSIs (`intremap=posted_msi`). Needs the patched QEMU and a
    /// kernel with CONFIG_X86_POSTED_MSI.
    IntelPostedMsi,
    /// The same posting intel-iommu for an L1 under KVM with nested VMX,
    /// whose own KVM posts its L2's device interrupts (qemu-patches/0044).
    /// Only on hosts with KVM and nested VMX.
    IntelVmxPosted,
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
    // amd-avic on a CPU that also has x2AVIC (qemu-patches 0012-0016):
    // KVM in L1 logs "x2AVIC enabled" and lets guests whose APIC is in
    // x2APIC mode (the testbed's L2 and Linux L2s) reach their virtual APIC
    // through the x2APIC MSRs without exits, instead of intercepting them
    // all (hybrid AVIC). Family 19h model 11h is a Zen 4 (EPYC Genoa)
    // model number: KVM keeps IPI virtualization on (it turns it off on
    // family 17h/18h, erratum #1235) and its `avic=auto` would choose AVIC
    // there by itself; `kvm_amd.avic=1` still says so, for kernels whose
    // default is off (6.12).
    Variant {
        name: "amd-x2avic",
        summary: "amd-avic with x2AVIC on a family 19h (Zen 4) CPU: KVM runs x2AVIC",
        iommu: Iommu::AmdX2avic,
        qemu: QemuKind::Patched,
        default: false,
        smp: 2,
    },
    // VT-d interrupt posting for L1's own device MSIs (Linux's posted MSIs,
    // 6.10+): every MSI of a device in L1 is recorded in its CPU's posted
    // interrupt descriptor by the IOMMU, and L1 takes one notification
    // vector (`PMN`) for any number of them. The kernel must be built with
    // CONFIG_X86_POSTED_MSI (Debian's are not: a `git:` kernel, whose
    // kernel-config/posted-msi.config sets it); the `posted-msi` check of
    // every report says when it is not. L1's KVM is kvm_amd (TCG has no VMX)
    // without AVIC, so KVM posts nothing to its guests here: the CPU stays
    // plain `max`, never `avic=on`, because KVM would hand AVIC's posting
    // data to the Intel IOMMU driver (docs/vtd-posted-interrupts.md).
    Variant {
        name: "intel-posted-msi",
        summary:
            "intel-ir + VT-d posted interrupts: L1's device MSIs posted (CONFIG_X86_POSTED_MSI)",
        iommu: Iommu::IntelPostedMsi,
        qemu: QemuKind::Patched,
        default: false,
        smp: 1,
    },
    // KVM's own VT-d device posting, which needs VMX in L1, so a host with
    // KVM and nested VMX (not TCG: TCG has no VMX): L1 runs under KVM with
    // `-cpu host`, L1's kvm_intel uses APICv and posted interrupts for its
    // L2, and when irqbypass connects it points the IRTE at the L2 vCPU's
    // descriptor. The emulated IOMMU then writes PIR in L1's memory and
    // sends KVM's notification vector, which the host's nested VMX turns
    // into posted-interrupt processing in the running L2 (or L1's wake-up
    // vector when the vCPU blocks). Refused, with the reason, where the
    // host lacks KVM or nested VMX ([`Variant::host_problem`]). Two CPUs
    // as amd-avic: posting to a vCPU that runs needs one that runs.
    Variant {
        name: "intel-vmx-posted",
        summary: "KVM hosts with nested VMX: L1 under KVM, VT-d posting, L1's KVM posts to its L2",
        iommu: Iommu::IntelVmxPosted,
        qemu: QemuKind::Patched,
        default: false,
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
/// QEMU `id=` of the intel-iommu that posts, and its place in the QOM tree.
pub const VTD_ID: &str = "vtd0";
pub const VTD_QOM_PATH: &str = "/machine/peripheral/vtd0";

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
            Iommu::AmdAvic | Iommu::AmdX2avic => Some(AMD_IOMMU_QOM_PATH),
            Iommu::IntelVmxPosted => Some(VTD_QOM_PATH),
            _ => None,
        }
    }

    /// Whether [`Self::iommu_counters`] names an intel-iommu, whose posting
    /// counters have VT-d's names (`pi-posted`, ...), not amd-iommu's.
    pub fn iommu_counters_are_vtd(&self) -> bool {
        self.iommu == Iommu::IntelVmxPosted
    }

    /// Whether QEMU remaps interrupts in this variant: with KVM that needs
    /// `kernel-irqchip=split` (QEMU refuses interrupt remapping with the
    /// IO-APIC in the kernel).
    pub fn remaps_interrupts(&self) -> bool {
        !matches!(self.iommu, Iommu::None | Iommu::IntelDma | Iommu::Virtio)
    }

    /// Why this host cannot run the variant, if it cannot: `accel` is the
    /// accelerator the run uses, `nested_vmx` whether the host's kvm_intel
    /// has nested VMX (`None`: no kvm_intel).
    pub fn host_problem(&self, accel: Accel, nested_vmx: Option<bool>) -> Option<String> {
        if self.iommu != Iommu::IntelVmxPosted {
            return None;
        }
        let why = match (accel, nested_vmx) {
            (Accel::Tcg, _) => "it needs KVM (TCG has no VMX for L1's KVM): this run uses TCG (no usable /dev/kvm, or --accel tcg)",
            (Accel::Kvm, None) => "it needs KVM on an Intel host with nested VMX: kvm_intel is not loaded",
            (Accel::Kvm, Some(false)) => "it needs nested VMX: kvm_intel's nested parameter is off (load it with nested=1)",
            (Accel::Kvm, Some(true)) => return None,
        };
        Some(format!("variant {}: {why}", self.name))
    }

    /// QOM path of the intel-iommu whose posted-interrupt counters
    /// (`pi-posted`, ...) the runner reads around each scenario: the IOMMU
    /// posts L1's own MSIs, which L1 still handles, so these are not
    /// [`Self::iommu_counters`] (interrupts that bypass L1).
    pub fn vtd_counters(&self) -> Option<&'static str> {
        (self.iommu == Iommu::IntelPostedMsi).then_some(VTD_QOM_PATH)
    }

    /// Whether the variant puts [`SB_IOAPIC_FUNCTION`] at the IO-APIC's
    /// requester ID: amd-iommu on the patched QEMU, which allows it.
    pub fn sb_ioapic_function(&self) -> bool {
        matches!(self.iommu, Iommu::AmdIr | Iommu::AmdAvic | Iommu::AmdX2avic)
            && self.qemu == QemuKind::Patched
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
            Iommu::AmdAvic | Iommu::AmdX2avic => {
                format!("amd-iommu,id={AMD_IOMMU_ID},intremap=on,xtsup=on,guest-vapic=on")
            }
            Iommu::Virtio => "virtio-iommu-pci".to_owned(),
            Iommu::IntelPostedMsi | Iommu::IntelVmxPosted => {
                format!("intel-iommu,id={VTD_ID},intremap=on,eim=on,posted-interrupts=on")
            }
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
            // TCG's features under a family 19h model 11h (Zen 4) identity
            Iommu::AmdX2avic => "max,avic=on,x2avic=on,family=25,model=17,stepping=1",
            // the host's CPU, VMX included (KVM only)
            Iommu::IntelVmxPosted => "host",
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
            Iommu::AmdAvic | Iommu::AmdX2avic => vec!["amd_iommu=on", "kvm_amd.avic=1"],
            Iommu::Virtio => vec![],
            Iommu::IntelPostedMsi => vec!["intel_iommu=on", "intremap=posted_msi"],
            Iommu::IntelVmxPosted => vec!["intel_iommu=on"],
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
        // only the IOMMUs that post into guests are read; everything else
        // keeps one CPU
        for other in VARIANTS
            .iter()
            .filter(|o| !["amd-avic", "amd-x2avic", "intel-vmx-posted"].contains(&o.name))
        {
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
    fn x2avic_variant_arguments() {
        let v = lookup("amd-x2avic").unwrap();
        let avic = lookup("amd-avic").unwrap();
        assert_eq!(v.qemu, QemuKind::Patched);
        assert!(!v.default);
        // the same posting IOMMU, L1 CPUs and KVM parameters as amd-avic
        assert_eq!(v.iommu_args(), avic.iommu_args());
        assert_eq!(v.smp, avic.smp);
        assert_eq!(v.cmdline(), avic.cmdline());
        assert_eq!(v.iommu_counters(), avic.iommu_counters());
        // x2AVIC on top of AVIC, on a family 19h (not 17h/18h) model
        assert_eq!(
            v.cpu(),
            "max,avic=on,x2avic=on,family=25,model=17,stepping=1"
        );
        // amd-avic stays without x2AVIC: KVM runs hybrid AVIC there
        assert!(!avic.cpu().contains("x2avic"));
    }

    #[test]
    fn posted_msi_variant_arguments() {
        let v = lookup("intel-posted-msi").unwrap();
        let ir = lookup("intel-ir").unwrap();
        assert_eq!(v.qemu, QemuKind::Patched);
        assert!(!v.default);
        assert_eq!(
            v.iommu_args(),
            [
                "-device",
                "intel-iommu,id=vtd0,intremap=on,eim=on,posted-interrupts=on"
            ]
        );
        // intel-ir plus posting: the same CPU and L1 size
        assert_eq!(v.cpu(), ir.cpu());
        assert_eq!(v.smp, ir.smp);
        assert_eq!(v.cmdline(), ["intel_iommu=on", "intremap=posted_msi"]);
        assert_eq!(v.vtd_counters(), Some("/machine/peripheral/vtd0"));
        // L1 handles what is posted: not counted as bypassing L1
        assert_eq!(v.iommu_counters(), None);
        assert!(VARIANTS
            .iter()
            .all(|o| (o.vtd_counters().is_some()) == (o.name == "intel-posted-msi")));
    }

    #[test]
    fn vmx_posted_variant_arguments_and_host_check() {
        let v = lookup("intel-vmx-posted").unwrap();
        assert_eq!(v.qemu, QemuKind::Patched);
        assert!(!v.default);
        assert_eq!(
            v.iommu_args(),
            lookup("intel-posted-msi").unwrap().iommu_args()
        );
        assert_eq!(v.cpu(), "host");
        assert_eq!(v.smp, 2);
        // L1's MSIs stay remapped: what is posted is KVM's, into the L2
        assert_eq!(v.cmdline(), ["intel_iommu=on"]);
        assert_eq!(v.iommu_counters(), Some("/machine/peripheral/vtd0"));
        assert!(v.iommu_counters_are_vtd() && v.vtd_counters().is_none());
        assert!(v.remaps_interrupts());
        assert!(!v.avic());
        // refused with the reason wherever the host cannot run it
        let tcg = v.host_problem(Accel::Tcg, Some(true)).unwrap();
        assert!(
            tcg.starts_with("variant intel-vmx-posted: it needs KVM"),
            "{tcg}"
        );
        assert!(v
            .host_problem(Accel::Kvm, None)
            .unwrap()
            .contains("kvm_intel is not loaded"));
        assert!(v
            .host_problem(Accel::Kvm, Some(false))
            .unwrap()
            .contains("nested=1"));
        assert_eq!(v.host_problem(Accel::Kvm, Some(true)), None);
        // every other variant runs anywhere
        for o in VARIANTS.iter().filter(|o| o.name != v.name) {
            assert_eq!(o.host_problem(Accel::Tcg, None), None, "{}", o.name);
            assert!(!o.iommu_counters_are_vtd(), "{}", o.name);
        }
    }

    /// An AMD CPU whose KVM uses AVIC against an Intel IOMMU that posts: KVM
    /// (svm/avic.c) would hand AVIC's posting data to irq_set_vcpu_affinity()
    /// of the Intel IOMMU driver, which reads it as VT-d's. No real machine
    /// has that pair, so no variant may.
    #[test]
    fn no_variant_pairs_avic_with_vtd_posting() {
        for v in VARIANTS {
            let vtd_posts = v
                .iommu_args()
                .iter()
                .any(|a| a.contains("posted-interrupts=on"));
            assert!(!(vtd_posts && v.avic()), "{}", v.name);
            assert!(
                !(vtd_posts && v.cmdline().iter().any(|w| w.contains("avic"))),
                "{}",
                v.name
            );
        }
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
                matches!(v.name, "amd-ir-patched" | "amd-avic" | "amd-x2avic"),
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
