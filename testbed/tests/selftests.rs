//! `testbed selftests` end to end: the kernel's own KVM and VFIO selftests,
//! built from Debian's linux-source-7.2 and run in L1 (VM tests, with
//! TESTBED_VM_TESTS=1), and how the runner treats a test that overruns,
//! one whose L1 dies and one whose L1 hangs. The input checks need no guest.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn selftests(results: &Path) -> std::process::Command {
    let mut cmd = testbed();
    cmd.args(["selftests", "--kernel", "debian:7.2", "--results"])
        .arg(results);
    cmd
}

/// A small set end to end on intel-ir: KVM's irqfd and APIC state tests;
/// the table, JUnit (one case per test), KTAP and JSON agree.
#[test]
fn a_small_set_passes_end_to_end() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (junit, ktap, json) = (
        tmp.path().join("j.xml"),
        tmp.path().join("k.ktap"),
        tmp.path().join("r.json"),
    );
    let output = selftests(tmp.path())
        .args(["--variant", "intel-ir", "--junit"])
        .arg(&junit)
        .arg("--ktap")
        .arg(&ktap)
        .arg("--json")
        .arg(&json)
        .args(["irqfd_test", "x86/xapic_state_test"])
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("selftests from linux-source-7.2"), "{out}");
    assert!(out.contains("2 passed, 0 failed, 0 skipped"), "{out}");
    let junit = std::fs::read_to_string(junit).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 2, "{junit}");
    assert!(
        junit.contains("classname=\"selftests.kvm.intel-ir\" name=\"irqfd_test\""),
        "{junit}"
    );
    let ktap = std::fs::read_to_string(ktap).unwrap();
    assert!(ktap.starts_with("KTAP version 1\n1..2\n"), "{ktap}");
    assert_eq!(
        ktap.lines().filter(|l| l.starts_with("ok ")).count(),
        2,
        "{ktap}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(json["results"].as_array().unwrap().len(), 2);
    // each test's own output is kept
    let log = std::fs::read_to_string(tmp.path().join("intel-ir/kvm/irqfd_test.log")).unwrap();
    assert!(log.starts_with("# kvm:irqfd_test: pass\n"), "{log}");
    assert_no_qemu_left(tmp.path());
}

/// On amd-avic a short APIC test runs with AVIC really in use: KVM's AVIC
/// events counted in L1 over the test (the SVR write through the vAPIC
/// page traps: a NOACCEL exit; its interrupts go through the backing page)
/// are in the table, the JSON, JUnit and KTAP. (That the same pass with
/// `kvm_amd.avic=0` is a FAIL is selftests::avic's unit tests.)
#[test]
fn avic_events_are_counted_on_amd_avic() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (junit, ktap, json) = (
        tmp.path().join("j.xml"),
        tmp.path().join("k.ktap"),
        tmp.path().join("r.json"),
    );
    let output = selftests(tmp.path())
        .args(["--variant", "amd-avic", "--boot-timeout", "300", "--junit"])
        .arg(&junit)
        .arg("--ktap")
        .arg(&ktap)
        .arg("--json")
        .arg(&json)
        .arg("xapic_tpr_test")
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("AVIC events: unaccelerated_access "), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let counts = &json["results"][0]["events"]["counts"];
    for ev in [
        "kvm:kvm_avic_unaccelerated_access",
        "kvm:kvm_apicv_accept_irq",
    ] {
        assert!(counts[ev].as_u64().is_some_and(|n| n > 0), "{ev}: {counts}");
    }
    let junit = std::fs::read_to_string(junit).unwrap();
    assert!(
        junit.contains("<property name=\"kvm:kvm_avic_unaccelerated_access\" value=\""),
        "{junit}"
    );
    let ktap = std::fs::read_to_string(ktap).unwrap();
    assert!(
        ktap.contains("# AVIC events: unaccelerated_access "),
        "{ktap}"
    );
    assert_no_qemu_left(tmp.path());
}

/// VFIO's DMA mapping test on an igb bound to vfio-pci in L1, on Debian
/// 7.3 (7.2's VFIO selftests do not compile): every type1 fixture maps and
/// unmaps through the emulated VT-d, the iommufd ones fail because
/// Debian's kernel has no iommufd, which the known-failure entry says
/// (xfail, exit 0).
#[test]
fn vfio_selftests_run_on_a_device_bound_in_l1() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args([
            "selftests",
            "--kernel",
            "debian:7.3",
            "--variant",
            "intel-ir",
            "--results",
        ])
        .arg(tmp.path())
        .arg("vfio_dma_mapping_test")
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("vfio:vfio_dma_mapping_test  intel-ir"),
        "{out}"
    );
    assert!(out.contains("xfail"), "{out}");
    assert!(out.contains("this kernel has no /dev/iommu"), "{out}");
    let log = std::fs::read_to_string(tmp.path().join("intel-ir/vfio/vfio_dma_mapping_test.log"))
        .unwrap();
    assert!(
        log.contains("\nok 1 vfio_dma_mapping_test.vfio_type1_iommu_anonymous.dma_map_unmap\n"),
        "{log}"
    );
    assert!(
        log.contains("\nok 2 vfio_dma_mapping_test.vfio_type1v2_iommu_anonymous.dma_map_unmap\n"),
        "{log}"
    );
    assert_no_qemu_left(tmp.path());
}

/// The kernel with iommufd the next test needs: `$TESTBED_IOMMUFD_KERNEL`,
/// any kernel spec, e.g. `git:DIR` of a tree from `testbed kernel-tree 7.3
/// DIR`. Unset, the test only says so: a kernel build (10 to 30 minutes
/// on two busy cores) is no part of `cargo xtask test`.
fn iommufd_kernel() -> Option<String> {
    let spec = std::env::var("TESTBED_IOMMUFD_KERNEL")
        .ok()
        .filter(|s| !s.is_empty());
    if spec.is_none() {
        eprintln!("skipped: set TESTBED_IOMMUFD_KERNEL to a kernel spec with iommufd (git:DIR of testbed kernel-tree 7.3 DIR)");
    }
    spec
}

/// The default VFIO selftests on a kernel with iommufd (a built one: the
/// kernel-config fragments have CONFIG_IOMMUFD and the VFIO cdev), on an
/// igb behind the emulated VT-d: every IOMMU mode, iommufd included, and
/// vfio_pci_driver_test's memcpy and MSI through libvfio's igb driver.
#[test]
fn vfio_selftests_pass_on_a_kernel_with_iommufd() {
    if !vm_tests_enabled() {
        return;
    }
    let Some(kernel) = iommufd_kernel() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args([
            "selftests",
            "--suite",
            "vfio",
            "--kernel",
            &kernel,
            "--variant",
            "intel-ir",
            "--results",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("4 passed, 0 failed, 0 skipped"), "{out}");
    let log = std::fs::read_to_string(tmp.path().join("intel-ir/vfio/vfio_dma_mapping_test.log"))
        .unwrap();
    assert!(
        log.contains(" vfio_dma_mapping_test.iommufd_anonymous.dma_map_unmap\n"),
        "{log}"
    );
    assert!(!log.contains("not ok "), "{log}");
    let log =
        std::fs::read_to_string(tmp.path().join("intel-ir/vfio/vfio_pci_driver_test.log")).unwrap();
    assert!(
        log.contains(" vfio_pci_driver_test.iommufd.memcpy_success\n"),
        "{log}"
    );
    assert!(
        log.contains(" vfio_pci_driver_test.iommufd.send_msi\n"),
        "{log}"
    );
    assert_no_qemu_left(tmp.path());
}

/// A test that overruns --test-timeout is killed by the agent (TIMEOUT,
/// exit 1) and, in shared boots, the next test runs in the same boot.
/// set_memory_region_test takes 30 s and more under TCG, svm_vmcall_test
/// well under a second.
#[test]
fn an_overrunning_test_times_out_and_the_boot_goes_on() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let output = selftests(tmp.path())
        .args([
            "--share-boots",
            "--variant",
            "intel-ir",
            "--test-timeout",
            "5",
            "set_memory_region_test",
            "svm_vmcall_test",
        ])
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("kvm:set_memory_region_test  intel-ir"),
        "{out}"
    );
    assert!(out.contains("TIMEOUT"), "{out}");
    assert!(out.contains("killed after 5 s"), "{out}");
    assert!(
        out.contains("1 passed, 1 failed, 0 skipped (1 timed out)"),
        "{out}"
    );
    assert!(
        !tmp.path().join("intel-ir/boot-1").exists(),
        "a timeout needs no new boot: {out}"
    );
    assert_no_qemu_left(tmp.path());
}

/// Starts a selftests run whose first test runs long, and returns it with
/// its QEMU's pid once the agent has started that test.
fn start_and_wait_for_test(tmp: &Path, extra: &[&str]) -> (std::process::Child, u32) {
    let mut child = selftests(tmp)
        .args(["--variant", "intel-ir"])
        .args(extra)
        .args(["set_memory_region_test", "irqfd_test"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console = tmp.join("intel-ir/boot-0/console.log");
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let output = child.wait_with_output().unwrap();
            panic!("testbed ended before the test started: {}", text(&output));
        }
        // the selftests build may take minutes on a fresh cache
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the test never started"
        );
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("exec kvm:set_memory_region_test") {
            if let Some(&pid) = qemu_processes_with(tmp).first() {
                return (child, pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// QEMU dying in the middle of a test makes that test BROKEN with QEMU's
/// exit quoted; a fresh L1 runs the next test, which passes.
#[test]
fn qemu_dying_during_a_test_is_broken_and_a_fresh_boot_goes_on() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (child, qemu) = start_and_wait_for_test(tmp.path(), &[]);
    unsafe { libc::kill(qemu as i32, libc::SIGKILL) };
    let output = child.wait_with_output().unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("BROKEN"), "{out}");
    assert!(out.contains("qemu exited unexpectedly (killed by signal 9) during selftest kvm:set_memory_region_test"), "{out}");
    assert!(
        out.contains("1 passed, 1 failed, 0 skipped (1 broken)"),
        "{out}"
    );
    assert!(
        tmp.path().join("intel-ir/boot-1/console.log").exists(),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

/// An L1 that stops answering during a test: BROKEN as a hung guest after
/// --timeout seconds of silence, its QEMU killed, the next test in a fresh L1.
#[test]
fn a_hung_l1_during_a_test_is_broken_and_leaves_nothing_behind() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (child, qemu) = start_and_wait_for_test(tmp.path(), &["--timeout", "5"]);
    // A stopped QEMU is a guest that never answers again.
    unsafe { libc::kill(qemu as i32, libc::SIGSTOP) };
    let output = child.wait_with_output().unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "guest hung: no word from the agent for 5s during selftest kvm:set_memory_region_test"
        ),
        "{out}"
    );
    assert!(
        out.contains("1 passed, 1 failed, 0 skipped (1 broken)"),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

#[test]
fn bad_input_is_exit_2_before_anything_runs() {
    for (args, wanted) in [
        (
            &["--suite", "net"][..],
            "--suite net: unknown selftest suite \"net\"",
        ),
        (&["--variant", "nope"][..], "unknown variant"),
        (
            &["--vfio-device", "vdpa-sim-net"][..],
            "--vfio-device vdpa-sim-net: not a PCI device model VFIO can take",
        ),
        (&["--baseline", "nope"][..], "--baseline"),
        (
            &["--test-timeout", "0"][..],
            "--test-timeout must be at least 1 second",
        ),
        (&["--kernel", "debian:x"][..], "debian:x"),
    ] {
        // `selftests()` names the default kernel; a test of --kernel replaces it
        let mut cmd = if args[0] == "--kernel" {
            testbed()
        } else {
            selftests(Path::new("/nonexistent"))
        };
        if args[0] == "--kernel" {
            cmd.arg("selftests");
        }
        let output = cmd.args(args).output().unwrap();
        let out = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains(wanted), "{args:?}: {out}");
    }
}
