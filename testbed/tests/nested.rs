//! A real L2 Linux under L1's KVM (nested QEMU), booted for real: gated by
//! TESTBED_VM_TESTS=1 and run in nextest's `guests` group.

mod common;

use common::{assert_no_qemu_left, fixture, repo, testbed, text, vm_tests_enabled};

/// `nested/` on intel-ir, the whole directory as issue #15 asks: the L2
/// boots, its igb and e1000e drivers bind the NICs and take every
/// interrupt the checks ask for; each report matches its snapshot and the
/// L2's boot time is printed in the L1 console log. igb-l2-unplug shares
/// the boot: nic1 leaves the L2 through L1 QEMU's device_del and comes
/// back through device_add. e1000e-l2 is stable since its counts are read
/// at a settled cut and the sender's receive vector, which e1000e's
/// watchdog kicks every 2 s, shows no timing (README, "Nested QEMU").
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
    assert!(
        ["e1000e-l2", "igb-l2-link", "igb-l2-msix", "igb-l2-unplug"]
            .iter()
            .all(|s| out.contains(s))
            && out.contains("4 passed, 0 failed"),
        "{out}"
    );
    // every boot's console (the scenarios' device sets differ)
    let console: String = std::fs::read_dir(tmp.path().join("intel-ir"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("console.log")).ok())
        .collect();
    assert!(
        console.contains("L2 ready "),
        "no L2 boot time in the console log"
    );
    assert!(
        console.contains("L2 powered off, its QEMU gone"),
        "the L2 did not stop through QEMU's own teardown"
    );
    assert!(
        console.contains("l2: nic1 unplugged after ")
            && console.contains("l2: nic1 replugged and up after "),
        "no unplug and replug through L1 QEMU's QMP in the console log"
    );
    assert_no_qemu_left(tmp.path());
}

/// `nested/` on amd-ir, issue #15: stock QEMU 10.0.2's amd-iommu does not
/// translate the NIC's DMA, so of `nested/` only igb-l2-link runs there
/// (one boot, one L2, ~60 s): its link goes down and up through L0's QMP
/// and L2's igb driver takes every link interrupt, each through L1's
/// VFIO line and KVM's injection (no posting on amd-ir).
#[test]
fn nested_scenarios_pass_on_amd_ir() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args(["run", "--variant", "amd-ir", "--results"])
        .arg(tmp.path())
        .arg(repo().join("nested"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("igb-l2-link") && out.contains("1 passed, 0 failed"),
        "{out}"
    );
    let console = std::fs::read_to_string(tmp.path().join("amd-ir/boot-0/console.log")).unwrap();
    assert!(
        console.contains("l2: nic0 link changed 4 times in "),
        "no link changes in the console log"
    );
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
    let (tmp, report) = run_failing_fixture("nested/l2-never-up.toml");
    let steps = &report["results"][0]["report"]["steps"];
    let error = steps[0]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("start-l2 did not fail: {report}"));
    assert!(
        error.starts_with("l2: the L2's QEMU exited (exit status: 0) after "),
        "{error}"
    );
    assert!(error.contains("without an answer"), "{error}");
    assert!(
        error.contains("Kernel panic - not syncing"),
        "the L2's panic is not named: {error}"
    );
    assert_eq!(steps[1]["ran"], false, "{report}");
    // the agent went on to its cleanup and the next message: L1 was fine
    let console =
        std::fs::read_to_string(tmp.path().join("results/intel-ir/boot-0/console.log")).unwrap();
    assert!(console.contains("job l2-never-up done"), "{console}");
    assert_no_qemu_left(tmp.path());
}

/// The L2's VMM in L1 dies (`kill-l2`: SIGKILL, as a crash would): the
/// kernel's teardown of its VFIO and KVM file descriptors unregisters
/// everything it registered, the next step that needs the L2 fails naming
/// how its QEMU ended, the agent goes on to its cleanup, and no process is
/// left, in L1 or on the host.
#[test]
fn an_l1_qemu_that_dies_fails_the_next_step_clearly() {
    if !vm_tests_enabled() {
        return;
    }
    let (tmp, report) = run_failing_fixture("nested/l1-qemu-dies.toml");
    let r = &report["results"][0]["report"];
    let steps = &r["steps"];
    assert!(
        steps[0]["error"].is_null() && steps[1]["error"].is_null(),
        "{report}"
    );
    let error = steps[2]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("l2-link did not fail: {report}"));
    assert!(
        error.contains("the L2's QEMU is gone (signal: 9 (SIGKILL))"),
        "{error}"
    );
    // what the VMM registered went with it
    let pairing = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["expectation"] == "pairing")
        .unwrap();
    assert_eq!(pairing["passed"], true, "{pairing}");
    let console =
        std::fs::read_to_string(tmp.path().join("results/intel-ir/boot-0/console.log")).unwrap();
    assert!(console.contains("l2: its QEMU killed"), "{console}");
    assert!(console.contains("job l1-qemu-dies done"), "{console}");
    assert_no_qemu_left(tmp.path());
}

/// Run a fixture on intel-ir (results and snapshots in a temporary
/// directory), expect exit 1, and return the directory and the JSON report.
fn run_failing_fixture(name: &str) -> (tempfile::TempDir, serde_json::Value) {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("report.json");
    let output = testbed()
        .args(["run", "--variant", "intel-ir", "--results"])
        .arg(tmp.path().join("results"))
        .arg("--snapshots")
        .arg(tmp.path().join("snapshots"))
        .arg("--json")
        .arg(&json)
        .arg(fixture(name))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (tmp, report)
}
