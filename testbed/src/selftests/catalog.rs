//! Which selftests run by default and why, which failures are known and
//! traced, how a test is named on the command line, and what a finished
//! test's exit status and output mean (kselftest's exit codes).

use std::fmt;

use images::SelftestSuite;
use wire::{ExecResult, ExecStatus};

/// A test: its suite and its name in the suite's `kselftest-list.txt`
/// (`xapic_ipi_test`, `irqfd_test`: the install flattens `x86/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct TestId {
    pub suite: SelftestSuite,
    pub name: String,
}

impl fmt::Display for TestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.suite, self.name)
    }
}

/// The KVM tests run when none are named. Each earns its place:
pub const DEFAULT_KVM: &[&str] = &[
    // APIC and IPI emulation, the tests the AVIC emulation must pass
    // exactly as with avic=0: IPIs between vCPUs through the xAPIC page,
    // APIC register state save/restore, TPR/PPR and CR8, the APIC timer's
    // bus clock, Hyper-V's IPI hypercalls (another way into the same ICR
    // path), and the APIC map KVM recomputes when IDs change.
    "xapic_ipi_test",
    "xapic_state_test",
    "xapic_tpr_test",
    "apic_bus_clock_test",
    "hyperv_ipi",
    "recalc_apic_map_test",
    // KVM's own irqfd test (6.17+): the irqfd side of irqbypass, with
    // eventfds shared between VMs, exactly what scenarios poke at
    "irqfd_test",
    // Smoke: a VM that runs at all (register state in and out, sync_regs,
    // special registers, the stats interface, memory slots, the nested
    // SVM entry our emulated SVM gives L1's KVM), so that an APIC result
    // is not read on a platform that cannot run a guest.
    "sync_regs_test",
    "set_sregs_test",
    "kvm_binary_stats_test",
    "set_memory_region_test",
    "svm_vmcall_test",
    "debug_regs",
];

/// The VFIO tests run when none are named: a device opened through each
/// of VFIO's container modes (type1 and iommufd), its config space, BARs
/// and interrupts; DMA mappings through the emulated IOMMU; the iommufd
/// set-up path. `vfio_pci_driver_test` needs a device with a driver in the
/// selftests library (Intel DSA or CBDMA): none is emulated, so it only
/// says so (skip).
pub const DEFAULT_VFIO: &[&str] = &[
    "vfio_pci_device_test",
    "vfio_dma_mapping_test",
    "vfio_iommufd_setup_test",
    "vfio_pci_driver_test",
];

pub fn defaults(suite: SelftestSuite) -> &'static [&'static str] {
    match suite {
        SelftestSuite::Kvm => DEFAULT_KVM,
        SelftestSuite::Vfio => DEFAULT_VFIO,
    }
}

/// A failure that was traced to its cause and written down: the test
/// still runs and still fails, reported as `xfail` with the reason; if it
/// ever passes it is `XPASS`, a failure of the list, which must then
/// lose the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub test: &'static str,
    /// Variants it applies to; empty for all.
    pub variants: &'static [&'static str],
    /// On which L1 kernels.
    pub when: When,
    pub reason: &'static str,
}

/// Which L1 kernels a [`Known`] failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// Kernels without iommufd (no /dev/iommu), such as Debian's.
    NoIommufd,
    /// Boots where L1 has no interrupt remapping.
    NoIrqRemapping,
}

/// What the boot that ran a test said about L1 (its agent's Ready).
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts {
    pub iommufd: bool,
    /// L1 remaps interrupts (the agent saw an IR-capable IOMMU in use).
    pub irq_remapping: bool,
}

impl When {
    fn holds(self, facts: &Facts) -> bool {
        match self {
            When::Always => true,
            When::NoIommufd => !facts.iommufd,
            When::NoIrqRemapping => !facts.irq_remapping,
        }
    }
}

/// libvfio opens /dev/iommu in its default mode: the same cause for each.
const NO_IOMMUFD: &str = "this kernel has no /dev/iommu (CONFIG_IOMMUFD unset, as in Debian's kernels), and libvfio's \
     default IOMMU mode is iommufd, compiled in (lib/iommu.c), with a failed open an assertion (lib/iommu.c: \
     iommu->iommufd > 0): every fixture in an iommufd mode fails; the type1 ones are in the test's log";

/// VFIO refuses a device whose MSIs the platform cannot isolate, in every
/// mode: type1 ("No interrupt remapping support", module parameter
/// allow_unsafe_interrupts) and iommufd (EPERM from
/// VFIO_DEVICE_BIND_IOMMUFD). On stock amd-ir with 7.3 kernels L1 turns
/// interrupt remapping off at boot (the patched variants put the SMBus
/// function 7.3 wants at 00:14.0: variant::SB_IOAPIC_FUNCTION).
const NO_IRQ_REMAPPING: &str = "L1 has no interrupt remapping, so VFIO refuses the device (type1: \"No interrupt remapping \
     support\"; iommufd: EPERM from VFIO_DEVICE_BIND_IOMMUFD). On stock amd-iommu with 7.3 kernels: check_sb_ioapic() \
     (drivers/iommu/amd/init.c, 16f52863b2ec) wants the IVRS IOAPIC's device to be an SMBus or ISA bridge, and QEMU's \
     IVRS names 00:14.0 (AMD's FCH address), which is empty on q35, so \"No southbridge IOAPIC found\" and IR is \
     disabled (the patched variants add an SMBus function there)";

/// The variants that run the stock QEMU (Debian's), without the patch
/// series; the unit test `stock_qemu_lists_the_stock_variants` keeps it
/// in step with `variant::VARIANTS`.
const STOCK_QEMU: &[&str] = &[
    "intel-ir",
    "intel-ir-xapic",
    "intel-dma",
    "amd-ir",
    "virtio-iommu",
    "none",
];

pub const KNOWN: &[Known] = &[
    // The guest's INT3 must exit to L1's KVM as a #BP exception intercept
    // (KVM_GUESTDBG_USE_SW_BP sets only that intercept, and the test passes
    // on AMD hardware). Stock QEMU's TCG SVM checks INT3 against the INTn
    // intercept instead (target/i386/tcg/excp_helper.c, raise_interrupt2:
    // `is_int` takes SVM_EXIT_SWINT, never SVM_EXIT_EXCP_BASE + 3; so in
    // 10.0.2 and 10.0.13), so the guest takes its own #BP: "Unhandled
    // exception '0x3' at guest RIP". The same with avic=0. The patched
    // QEMU fixes it (qemu-patches/0017), so only stock-QEMU variants fail.
    Known {
        test: "kvm:debug_regs",
        variants: STOCK_QEMU,
        when: When::Always,
        reason: "stock QEMU's TCG SVM intercepts INT3 as INTn, not as the #BP exception, so L1's KVM never sees the software breakpoint (fixed by qemu-patches/0017)",
    },
    Known { test: "vfio:vfio_pci_device_test", variants: &[], when: When::NoIommufd, reason: NO_IOMMUFD },
    Known { test: "vfio:vfio_dma_mapping_test", variants: &[], when: When::NoIommufd, reason: NO_IOMMUFD },
    Known { test: "vfio:vfio_iommufd_setup_test", variants: &[], when: When::NoIommufd, reason: NO_IOMMUFD },
    Known { test: "vfio:vfio_pci_driver_test", variants: &[], when: When::NoIommufd, reason: NO_IOMMUFD },
    Known { test: "vfio:vfio_pci_device_test", variants: &[], when: When::NoIrqRemapping, reason: NO_IRQ_REMAPPING },
    Known { test: "vfio:vfio_dma_mapping_test", variants: &[], when: When::NoIrqRemapping, reason: NO_IRQ_REMAPPING },
    Known { test: "vfio:vfio_iommufd_setup_test", variants: &[], when: When::NoIrqRemapping, reason: NO_IRQ_REMAPPING },
    Known { test: "vfio:vfio_pci_driver_test", variants: &[], when: When::NoIrqRemapping, reason: NO_IRQ_REMAPPING },
];

/// Tests that need longer than the usual timeout under TCG, with their
/// minimum: vfio_pci_driver_test's memcpy_storm runs 4095 igb loopback
/// memcpys in each of the five IOMMU modes (about 70 s each on a busy
/// 2-core host; the whole test overran 300 s).
const SLOW: &[(&str, u64)] = &[("vfio:vfio_pci_driver_test", 1200)];

/// The timeout of `test`: `default` (--test-timeout), raised for [`SLOW`] tests.
pub fn timeout_secs(test: &TestId, default: u64) -> u64 {
    let full = test.to_string();
    SLOW.iter()
        .find(|(t, _)| *t == full)
        .map_or(default, |&(_, min)| default.max(min))
}

/// The known failure of `test` on `variant` in `table`, if any.
fn known_in<'a>(
    table: &'a [Known],
    test: &TestId,
    variant: &str,
    facts: &Facts,
) -> Option<&'a Known> {
    let full = test.to_string();
    table.iter().find(|k| {
        (k.test == full || k.test == test.name)
            && (k.variants.is_empty() || k.variants.contains(&variant))
            && k.when.holds(facts)
    })
}

/// Resolves a command-line test name against the tests a build has:
/// `kvm:xapic_ipi_test`, `xapic_ipi_test`, or with its source directory
/// (`x86/xapic_ipi_test`), which the installed tree no longer has.
pub fn resolve<'a>(arg: &str, available: &'a [TestId]) -> Result<&'a TestId, String> {
    let (suite, name) = match arg.split_once(':') {
        Some((s, n)) => (
            Some(
                s.parse::<SelftestSuite>()
                    .map_err(|e| format!("test {arg}: {e}"))?,
            ),
            n,
        ),
        None => (None, arg),
    };
    let matches: Vec<&TestId> = available
        .iter()
        .filter(|t| suite.is_none_or(|s| t.suite == s))
        .filter(|t| t.name == name || base(&t.name) == base(name))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => {
            let near: Vec<String> = available
                .iter()
                .filter(|t| {
                    base(&t.name).contains(base(name)) || base(name).contains(base(&t.name))
                })
                .take(5)
                .map(ToString::to_string)
                .collect();
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!(" (similar: {})", near.join(", "))
            };
            Err(format!(
                "no selftest named {arg} in the selected suites{hint}"
            ))
        }
        many => Err(format!(
            "test {arg} is ambiguous: {}",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `x86/xapic_ipi_test` -> `xapic_ipi_test`.
fn base(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// What became of one test on one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Exit 0.
    Pass,
    /// Exit 4 (KSFT_SKIP), or not runnable here for a stated reason.
    Skip,
    /// Any other exit, a signal, a spawn failure, or kernel warnings.
    Fail,
    /// Killed by the agent after its timeout.
    Timeout,
    /// It took L1 down with it (QEMU died, the guest panicked or hung).
    Broken,
    /// Failed (or timed out, or broke) as a [`Known`] entry says it does.
    Xfail,
    /// Passed although a [`Known`] entry says it fails: the entry is stale.
    Xpass,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Skip => "skip",
            Outcome::Fail => "FAIL",
            Outcome::Timeout => "TIMEOUT",
            Outcome::Broken => "BROKEN",
            Outcome::Xfail => "xfail",
            Outcome::Xpass => "XPASS",
        }
    }

    /// Whether it counts against the run (exit 1).
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Pass | Outcome::Skip | Outcome::Xfail)
    }
}

/// An outcome and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// For anything but a plain pass: the skip reason, the assertion, the
    /// signal, QEMU's last words, the known failure's reason.
    pub reason: Option<String>,
}

/// kselftest's exit code for a skipped test.
pub const KSFT_SKIP: i32 = 4;

/// The verdict on a test that ran to its end in L1 (`result`), or that
/// broke the boot (`broken`: what the runner saw), given its output.
pub fn classify(
    test: &TestId,
    variant: &str,
    facts: &Facts,
    result: Option<&ExecResult>,
    broken: Option<&str>,
    output: &[String],
) -> Verdict {
    classify_in(KNOWN, test, variant, facts, result, broken, output)
}

fn classify_in(
    table: &[Known],
    test: &TestId,
    variant: &str,
    facts: &Facts,
    result: Option<&ExecResult>,
    broken: Option<&str>,
    output: &[String],
) -> Verdict {
    let raw = match (result, broken) {
        (_, Some(why)) => Verdict {
            outcome: Outcome::Broken,
            reason: Some(why.to_owned()),
        },
        (Some(r), None) => own_verdict(r, output),
        (None, None) => Verdict {
            outcome: Outcome::Broken,
            reason: Some("no result from the agent".into()),
        },
    };
    match (known_in(table, test, variant, facts), raw.outcome) {
        (Some(k), Outcome::Fail | Outcome::Timeout | Outcome::Broken) => Verdict {
            outcome: Outcome::Xfail,
            reason: Some(format!(
                "{} (known: {})",
                raw.reason.unwrap_or_default(),
                k.reason
            )),
        },
        (Some(k), Outcome::Pass) => Verdict {
            outcome: Outcome::Xpass,
            reason: Some(format!(
                "passed, but listed as a known failure: {}",
                k.reason
            )),
        },
        _ => raw,
    }
}

fn own_verdict(r: &ExecResult, output: &[String]) -> Verdict {
    let verdict = |outcome, reason: String| Verdict {
        outcome,
        reason: Some(reason),
    };
    let v = match &r.status {
        ExecStatus::Exited { code: 0 } => Verdict {
            outcome: Outcome::Pass,
            reason: None,
        },
        ExecStatus::Exited { code: KSFT_SKIP } => verdict(
            Outcome::Skip,
            skip_reason(output).unwrap_or_else(|| "exit 4 (skip), no reason printed".into()),
        ),
        ExecStatus::Exited { code } => verdict(
            Outcome::Fail,
            match failure_line(output) {
                Some(line) => format!("exit {code}: {line}"),
                None => format!("exit {code}"),
            },
        ),
        ExecStatus::Signaled { signal } => verdict(
            Outcome::Fail,
            match failure_line(output) {
                Some(line) => format!("killed by signal {signal}: {line}"),
                None => format!("killed by signal {signal}"),
            },
        ),
        ExecStatus::TimedOut => verdict(
            Outcome::Timeout,
            format!(
                "killed after {} s{}",
                r.millis / 1000,
                last_line(output)
                    .map(|l| format!(", last output: {l}"))
                    .unwrap_or_default()
            ),
        ),
        ExecStatus::SpawnFailed { error } => {
            verdict(Outcome::Fail, format!("could not start: {error}"))
        }
        ExecStatus::SetupFailed { error } => {
            verdict(Outcome::Fail, format!("set-up failed: {error}"))
        }
    };
    // a kernel that warned has gone wrong, whatever the test concluded
    match r.kernel_warnings.as_slice() {
        [] => v,
        [first, ..] => Verdict {
            outcome: Outcome::Fail,
            reason: Some(format!(
                "the kernel warned {} time{}: {first}{}",
                r.kernel_warnings.len(),
                if r.kernel_warnings.len() == 1 {
                    ""
                } else {
                    "s"
                },
                v.reason
                    .map(|why| format!(" (the test itself: {} {why})", v.outcome.label()))
                    .unwrap_or_else(|| format!(" (the test itself: {})", v.outcome.label()))
            )),
        },
    }
}

/// The reason a skipped test gave: kselftest prints `# SKIP reason` (or
/// `SKIP: reason`), KVM's `__TEST_REQUIRE` `Requirement not met: ...`.
pub fn skip_reason(output: &[String]) -> Option<String> {
    output.iter().rev().find_map(|l| {
        let at = l.find("SKIP")?;
        let rest = l[at + 4..].trim_start_matches([':', ' ', '-', ']']).trim();
        Some(if rest.is_empty() {
            l.trim().to_owned()
        } else {
            rest.to_owned()
        })
    })
}

/// The line that says what failed: KVM's assertion (the line after
/// `==== Test Assertion Failure ====`), the first `not ok` of a TAP
/// test, a `FAIL` line, else the last line.
pub fn failure_line(output: &[String]) -> Option<String> {
    if let Some(i) = output
        .iter()
        .position(|l| l.contains("Test Assertion Failure"))
    {
        let mut parts: Vec<&str> = output[i + 1..]
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .take(2)
            .collect();
        // the second line is pid/tid/errno; keep it only if it names an errno
        if parts.len() == 2 && !parts[1].contains("errno=") {
            parts.truncate(1);
        }
        if !parts.is_empty() {
            return Some(parts.join(" "));
        }
    }
    if let Some(l) = output
        .iter()
        .find(|l| l.trim_start().starts_with("not ok "))
    {
        return Some(l.trim().to_owned());
    }
    if let Some(l) = output.iter().find(|l| l.contains("FAIL")) {
        return Some(l.trim().to_owned());
    }
    last_line(output)
}

fn last_line(output: &[String]) -> Option<String> {
    output
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(suite: SelftestSuite, name: &str) -> TestId {
        TestId {
            suite,
            name: name.into(),
        }
    }

    fn exited(code: i32) -> ExecResult {
        ExecResult {
            status: ExecStatus::Exited { code },
            millis: 1500,
            dropped_bytes: 0,
            kernel_warnings: vec![],
            event_counts: None,
        }
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn names_resolve_by_suite_path_or_base_name() {
        let all = [
            id(SelftestSuite::Kvm, "xapic_ipi_test"),
            id(SelftestSuite::Kvm, "irqfd_test"),
            id(SelftestSuite::Vfio, "vfio_pci_device_test"),
        ];
        assert_eq!(resolve("xapic_ipi_test", &all).unwrap(), &all[0]);
        assert_eq!(resolve("x86/xapic_ipi_test", &all).unwrap(), &all[0]);
        assert_eq!(resolve("kvm:irqfd_test", &all).unwrap(), &all[1]);
        let e = resolve("vfio:irqfd_test", &all).unwrap_err();
        assert!(e.contains("no selftest named vfio:irqfd_test"), "{e}");
        let e = resolve("xapic_ipi", &all).unwrap_err();
        assert!(e.contains("similar: kvm:xapic_ipi_test"), "{e}");
        let e = resolve("net:foo", &all).unwrap_err();
        assert!(e.contains("test net:foo"), "{e}");
        assert_eq!(resolve("kvm:x86/xapic_ipi_test", &all).unwrap(), &all[0]);
        let dup = [
            id(SelftestSuite::Kvm, "x86/a"),
            id(SelftestSuite::Kvm, "arm64/a"),
        ];
        assert!(resolve("a", &dup).unwrap_err().contains("ambiguous"));
    }

    #[test]
    fn exit_codes_map_to_kselftest_outcomes() {
        let t = id(SelftestSuite::Kvm, "x86/xapic_ipi_test");
        let v = classify(&t, "amd-ir", &Facts::default(), Some(&exited(0)), None, &[]);
        assert_eq!(
            v,
            Verdict {
                outcome: Outcome::Pass,
                reason: None
            }
        );
        let out = lines("1..0 # SKIP - Requirement not met: kvm_has_cap(KVM_CAP_X2APIC_API)");
        let v = classify(
            &t,
            "amd-ir",
            &Facts::default(),
            Some(&exited(4)),
            None,
            &out,
        );
        assert_eq!(v.outcome, Outcome::Skip);
        assert_eq!(
            v.reason.as_deref(),
            Some("Requirement not met: kvm_has_cap(KVM_CAP_X2APIC_API)")
        );
        let out = lines(
            "Random seed: 0x6b8b4567\n==== Test Assertion Failure ====\n  x86/xapic_ipi_test.c:312: ipis_rcvd == ipis_sent\n  pid=140 tid=140 errno=4 - Interrupted system call\n     1\t0x0000000000402a3b: main at xapic_ipi_test.c:312",
        );
        let v = classify(
            &t,
            "amd-ir",
            &Facts::default(),
            Some(&exited(254)),
            None,
            &out,
        );
        assert_eq!(v.outcome, Outcome::Fail);
        assert_eq!(
            v.reason.as_deref(),
            Some("exit 254: x86/xapic_ipi_test.c:312: ipis_rcvd == ipis_sent pid=140 tid=140 errno=4 - Interrupted system call")
        );
        let v = classify(
            &t,
            "amd-ir",
            &Facts::default(),
            Some(&exited(1)),
            None,
            &lines("ok 1 a\nnot ok 2 b # bad\nok 3 c"),
        );
        assert_eq!(v.reason.as_deref(), Some("exit 1: not ok 2 b # bad"));
        let killed = ExecResult {
            status: ExecStatus::Signaled { signal: 6 },
            ..exited(0)
        };
        assert_eq!(
            classify(&t, "amd-ir", &Facts::default(), Some(&killed), None, &[])
                .reason
                .as_deref(),
            Some("killed by signal 6")
        );
        let slow = ExecResult {
            status: ExecStatus::TimedOut,
            millis: 300_400,
            ..exited(0)
        };
        let v = classify(
            &t,
            "amd-ir",
            &Facts::default(),
            Some(&slow),
            None,
            &lines("Delay: 1\n"),
        );
        assert_eq!(
            (v.outcome, v.reason.as_deref()),
            (
                Outcome::Timeout,
                Some("killed after 300 s, last output: Delay: 1")
            )
        );
        let v = classify(
            &t,
            "amd-avic",
            &Facts::default(),
            None,
            Some("qemu exited unexpectedly: qemu: fatal: AVIC"),
            &[],
        );
        assert_eq!(v.outcome, Outcome::Broken);
        assert!(
            v.outcome.is_failure() && !Outcome::Skip.is_failure() && !Outcome::Xfail.is_failure()
        );
    }

    #[test]
    fn kernel_warnings_fail_a_passing_test() {
        let t = id(SelftestSuite::Kvm, "irqfd_test");
        let warned = ExecResult {
            kernel_warnings: vec!["WARNING: at arch/x86/kvm/svm/svm.c:1316 svm_vcpu_free".into()],
            ..exited(0)
        };
        let v = classify(&t, "amd-avic", &Facts::default(), Some(&warned), None, &[]);
        assert_eq!(v.outcome, Outcome::Fail);
        assert_eq!(
            v.reason.as_deref(),
            Some("the kernel warned 1 time: WARNING: at arch/x86/kvm/svm/svm.c:1316 svm_vcpu_free (the test itself: pass)")
        );
    }

    #[test]
    fn stock_qemu_lists_the_stock_variants() {
        let stock: Vec<&str> = crate::variant::VARIANTS
            .iter()
            .filter(|v| v.qemu == crate::variant::QemuKind::Stock)
            .map(|v| v.name)
            .collect();
        assert_eq!(stock, STOCK_QEMU);
    }

    #[test]
    fn debug_regs_is_known_to_fail_on_stock_qemu_only() {
        let t = id(SelftestSuite::Kvm, "debug_regs");
        let facts = Facts::default();
        assert!(known_in(KNOWN, &t, "amd-ir", &facts).is_some());
        assert!(known_in(KNOWN, &t, "amd-ir-patched", &facts).is_none());
        assert!(known_in(KNOWN, &t, "amd-avic", &facts).is_none());
    }

    #[test]
    fn known_failures_are_xfail_and_a_pass_of_one_is_xpass() {
        let table = [Known {
            test: "x86/debug_regs",
            variants: &["amd-ir"],
            when: When::Always,
            reason: "TCG",
        }];
        let t = id(SelftestSuite::Kvm, "x86/debug_regs");
        let v = classify_in(
            &table,
            &t,
            "amd-ir",
            &Facts::default(),
            Some(&exited(254)),
            None,
            &lines("boom"),
        );
        assert_eq!(v.outcome, Outcome::Xfail);
        assert_eq!(v.reason.as_deref(), Some("exit 254: boom (known: TCG)"));
        let v = classify_in(
            &table,
            &t,
            "amd-ir",
            &Facts::default(),
            Some(&exited(0)),
            None,
            &[],
        );
        assert_eq!(v.outcome, Outcome::Xpass);
        assert!(v.outcome.is_failure());
        // other variants are not covered by the entry
        assert_eq!(
            classify_in(
                &table,
                &t,
                "intel-ir",
                &Facts::default(),
                Some(&exited(254)),
                None,
                &[]
            )
            .outcome,
            Outcome::Fail
        );
        // a skip stays a skip
        assert_eq!(
            classify_in(
                &table,
                &t,
                "amd-ir",
                &Facts::default(),
                Some(&exited(4)),
                None,
                &[]
            )
            .outcome,
            Outcome::Skip
        );
    }

    #[test]
    fn a_known_failure_can_depend_on_the_kernel() {
        let table = [Known {
            test: "vfio:vfio_pci_device_test",
            variants: &[],
            when: When::NoIommufd,
            reason: "no iommufd",
        }];
        let t = id(SelftestSuite::Vfio, "vfio_pci_device_test");
        let debian = Facts {
            iommufd: false,
            irq_remapping: true,
        };
        let built = Facts {
            iommufd: true,
            irq_remapping: true,
        };
        assert_eq!(
            classify_in(&table, &t, "intel-ir", &debian, Some(&exited(1)), None, &[]).outcome,
            Outcome::Xfail
        );
        // where the kernel has iommufd the same failure is a failure
        assert_eq!(
            classify_in(&table, &t, "intel-ir", &built, Some(&exited(1)), None, &[]).outcome,
            Outcome::Fail
        );
        assert_eq!(
            classify_in(&table, &t, "intel-ir", &built, Some(&exited(0)), None, &[]).outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn a_known_failure_can_depend_on_interrupt_remapping() {
        let t = id(SelftestSuite::Vfio, "vfio_pci_device_test");
        let no_ir = Facts {
            iommufd: true,
            irq_remapping: false,
        };
        let ir = Facts {
            iommufd: true,
            irq_remapping: true,
        };
        let v = classify(&t, "amd-ir-patched", &no_ir, Some(&exited(1)), None, &[]);
        assert_eq!(v.outcome, Outcome::Xfail);
        assert!(v.reason.unwrap().contains("No southbridge IOAPIC found"));
        assert_eq!(
            classify(&t, "intel-ir", &ir, Some(&exited(1)), None, &[]).outcome,
            Outcome::Fail
        );
    }

    #[test]
    fn slow_tests_get_a_longer_timeout() {
        let t = id(SelftestSuite::Vfio, "vfio_pci_driver_test");
        assert_eq!(timeout_secs(&t, 300), 1200);
        assert_eq!(timeout_secs(&t, 3000), 3000);
        assert_eq!(
            timeout_secs(&id(SelftestSuite::Kvm, "irqfd_test"), 300),
            300
        );
    }

    #[test]
    fn every_default_is_a_plain_relative_name() {
        for name in DEFAULT_KVM.iter().chain(DEFAULT_VFIO) {
            assert!(
                !name.starts_with('/') && !name.contains(':') && !name.contains(".."),
                "{name}"
            );
        }
        for k in KNOWN {
            assert!(!k.reason.is_empty(), "{}", k.test);
        }
    }
}
