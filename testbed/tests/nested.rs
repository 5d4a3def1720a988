//! A real L2 Linux under L1's KVM (nested QEMU), booted for real: gated by
//! TESTBED_VM_TESTS=1 and run in nextest's `guests` group.

mod common;

use common::{assert_no_qemu_left, fixture, repo, testbed, text, vm_tests_enabled};

/// `nested/` on intel-ir: the L2 boots, its igb driver binds both NICs
/// and takes every interrupt the checks ask for; the report matches its
/// snapshot and the L2's boot time is printed in the L1 console log.
#[test]
fn nested_scenarios_pass_on_intel_ir() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args(["run", "--variant", "intel-ir", "--results"])
        .arg(tmp.path())
        .arg(repo().join("nested"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("igb-l2-msix") && out.contains("1 passed, 0 failed"), "{out}");
    let console = std::fs::read_to_string(tmp.path().join("intel-ir/boot-0/console.log")).unwrap();
    assert!(console.contains("L2 ready "), "no L2 boot time in the console log");
    assert!(console.contains("L2 powered off, its QEMU gone"), "the L2 did not stop through QEMU's own teardown");
    assert_no_qemu_left(tmp.path());
}

/// An L2 that never comes up (no init: its kernel panics and its QEMU,
/// run with -no-reboot, exits): the start-l2 step fails, naming the exit
/// and the end of the L2's console; the run says so and nothing is left
/// running.
#[test]
fn an_l2_that_never_comes_up_fails_clearly() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args(["run", "--variant", "intel-ir", "--results"])
        .arg(tmp.path().join("results"))
        .arg("--snapshots")
        .arg(tmp.path().join("snapshots"))
        .arg(fixture("nested/l2-never-up.toml"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let report = std::fs::read_dir(tmp.path().join("snapshots/intel-ir"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .next()
        .unwrap_or_else(|| panic!("no report written: {out}"));
    assert!(report.contains("1 start-l2 l2 with nic0 (1 queues)"), "{report}");
    assert!(report.contains("failed: l2: the L2's QEMU exited"), "{report}");
    assert!(report.contains("without an answer"), "{report}");
    assert!(report.contains("(skipped: step 1 failed)"), "{report}");
    let console = std::fs::read_to_string(tmp.path().join("results/intel-ir/boot-0/console.log")).unwrap();
    assert!(console.contains("cleanup") || console.contains("job l2-never-up done"), "{console}");
    assert_no_qemu_left(tmp.path());
}
