//! The `testbed` command end to end. Input errors need no guest; the rest
//! boot real QEMU guests with the Debian kernel and run only with
//! TESTBED_VM_TESTS=1.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Runs `testbed run ARGS... SCENARIO` with its results (and, with
/// `own_snapshots`, its snapshots) under `tmp`; the exit code and all it printed.
fn run_in(
    tmp: &Path,
    args: &[&str],
    own_snapshots: bool,
    scenario: &Path,
) -> (Option<i32>, String) {
    let mut cmd = testbed();
    cmd.arg("run").args(args).arg("--results").arg(tmp);
    if own_snapshots {
        cmd.arg("--snapshots").arg(tmp.join("snapshots"));
    }
    let output = cmd.arg(scenario).output().unwrap();
    (output.status.code(), text(&output))
}

#[test]
fn bad_scenario_file_is_exit_2_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "description = \"x\"\n\n[[device]]\nname = \"dev0\"\nmodel = \"edu\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let output = testbed().arg("run").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let out = text(&output);
    assert!(out.contains("typo.toml:6:"), "no file:line in: {out}");
    assert!(
        out.contains("colour"),
        "does not name the unknown key: {out}"
    );
}

#[test]
fn unknown_variant_is_exit_2() {
    let output = testbed()
        .args(["run", "--variant", "intel-posted"])
        .arg(repo().join("scenarios"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("unknown variant \"intel-posted\""),
        "{}",
        text(&output)
    );
}

#[test]
fn bench_boots_bad_input_is_exit_2() {
    for (args, says) in [
        (
            &["--variant", "amd-avicc"][..],
            "unknown variant \"amd-avicc\"",
        ),
        (
            &["--variant", "amd-avic", "--kernel", "debian:x"][..],
            "debian:x",
        ),
        (&["--variant", "amd-avic", "--count", "0"][..], "--count"),
    ] {
        let output = testbed().arg("bench-boots").args(args).output().unwrap();
        let out = text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
    }
}

#[test]
fn bad_kernel_spec_is_exit_2() {
    let output = testbed()
        .args(["run", "--kernel", "debian:seven"])
        .arg(repo().join("scenarios"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("debian:seven"), "{}", text(&output));
}

#[test]
fn unknown_kernel_version_is_exit_2() {
    if !vm_tests_enabled() {
        return;
    }
    let output = testbed()
        .args(["run", "--kernel", "debian:6.99"])
        .arg(repo().join("scenarios"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("6.99"), "{}", text(&output));
}

/// The product's main job on one variant: every scenario in scenarios/
/// matches its snapshot and passes its checks.
#[test]
fn scenarios_match_snapshots_on_amd_ir() {
    if !vm_tests_enabled() {
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let json = results.path().join("report.json");
    let json_arg = json.to_str().unwrap();
    let (code, out) = run_in(
        results.path(),
        &["--variant", "amd-ir", "--json", json_arg],
        false,
        &repo().join("scenarios"),
    );
    assert_eq!(code, Some(0), "{out}");
    assert_no_qemu_left(results.path());

    // The machine-readable report has one passing result per scenario that
    // runs on amd-ir.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let scenarios = testbed::scenario::load_paths(&[repo().join("scenarios")])
        .unwrap()
        .iter()
        .filter(|s| s.runs_on("amd-ir"))
        .count();
    let cells = report["results"].as_array().unwrap();
    assert_eq!(cells.len(), scenarios);
    for cell in cells {
        assert_eq!(cell["variant"], "amd-ir");
        assert_eq!(cell["verdict"], "pass", "{cell}");
        assert!(cell["report"]["checks"].is_array(), "{cell}");
    }
    assert!(
        report["boots"][0]["seconds"]["boot_to_ready"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

/// The posted-interrupt variant on the patched QEMU (built by the
/// pipeline, cached): every scenario matches its reviewed snapshot, so the
/// connection forms and breaks where each scenario says and every posted
/// interrupt is accounted for and delivered in L2.
#[test]
fn scenarios_match_snapshots_on_amd_avic() {
    if !vm_tests_enabled() {
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let (code, out) = run_in(
        results.path(),
        &["--variant", "amd-avic"],
        false,
        &repo().join("scenarios"),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("edu-posted-stress                amd-avic       pass"),
        "{out}"
    );
    assert_no_qemu_left(results.path());
}

/// A scenario whose expectation cannot hold with stock QEMU (nothing posts,
/// so nothing connects) must fail the run with a readable message.
#[test]
fn failing_expectation_is_exit_1() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = run_in(
        tmp.path(),
        &["--variant", "intel-ir"],
        true,
        &fixture("expect-connected.toml"),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("CHECK FAILED"), "{out}");
    assert!(
        out.contains("check connected vm0 dev0/msi0 failed"),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

/// A level interrupt whose resample eventfd is not wired to VFIO's unmask
/// is taken once, then the line stays masked in L1: `lossless` fails and
/// says why.
#[test]
fn intx_without_unmask_fails_lossless() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = run_in(
        tmp.path(),
        &["--variant", "intel-ir"],
        true,
        &fixture("intx-unmask-not-wired.toml"),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("raised 20 but L1's INTx handler ran 1: 19 lost, the line was not re-armed"),
        "{out}"
    );
    assert!(
        out.contains("is the resample eventfd wired to VFIO's unmask?"),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

/// A kernel that panics before the agent runs is a kernel that "could not be
/// booted": exit 125 so `git bisect run` skips it, with the panic quoted.
#[test]
fn kernel_panic_at_boot_is_exit_125() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = run_in(
        tmp.path(),
        &["--variant", "intel-ir", "--append", "rdinit=/no-such-init"],
        false,
        &repo().join("scenarios/edu-no-consumer.toml"),
    );
    assert_eq!(code, Some(125), "{out}");
    assert!(out.contains("Kernel panic"), "{out}");
    assert_no_qemu_left(tmp.path());
}

/// A kernel panic after the agent is ready comes through pvpanic as
/// GUEST_PANICKED: the scenario is broken (exit 1), the panic line quoted.
#[test]
fn guest_panic_mid_scenario_is_exit_1() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = run_in(
        tmp.path(),
        &["--variant", "intel-ir"],
        true,
        &fixture("panic-l1.toml"),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("BROKEN"), "{out}");
    assert!(
        out.contains("guest kernel panicked during step 3 (panic-l1)"),
        "{out}"
    );
    assert!(
        out.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

/// Starts a run in the background and returns it with the pid of its QEMU
/// once the agent has its job (its console line is in the log): the host
/// then has the agent's Ready, so what a test does to the guest next
/// happens in the middle of the scenario, not before the host saw the
/// guest come up (under load the console can run ahead of the host).
fn start_and_wait_for_agent(tmp: &Path, extra: &[&str]) -> (std::process::Child, u32) {
    // a booting L1's console, not a restored one's
    let child = testbed()
        .args(["run", "--variant", "intel-ir", "--share-boots", "--results"])
        .arg(tmp)
        .args(extra)
        .arg(fixture("long-fire.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console = tmp.join("intel-ir/boot-0/console.log");
    let mut child = child;
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "testbed ended before the agent was ready: {}",
                text(&output)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "agent never became ready"
        );
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("testbed-agent: job ") {
            if let Some(&pid) = qemu_processes_with(tmp).first() {
                return (child, pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn qemu_dying_mid_run_is_exit_1() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (child, qemu) = start_and_wait_for_agent(tmp.path(), &[]);
    unsafe { libc::kill(qemu as i32, libc::SIGKILL) };
    let output = child.wait_with_output().unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("qemu exited unexpectedly (killed by signal 9)"),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

#[test]
fn hung_guest_is_exit_1() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (child, qemu) = start_and_wait_for_agent(tmp.path(), &["--timeout", "5"]);
    // A stopped QEMU is a guest that never answers again.
    unsafe { libc::kill(qemu as i32, libc::SIGSTOP) };
    let output = child.wait_with_output().unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("guest hung: no word from the agent for 5s"),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

/// A real broken invariant, found by the lossless check: QEMU's e1000e
/// re-sends MSI-X vectors (bugs/e1000e-msix-resend.toml). Run beside
/// passing scenarios, that one cell fails with a message naming the step,
/// the vector and both counts, the others pass, and the exit code is 1.
#[test]
fn broken_invariant_is_reported_in_a_full_run() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args(["run", "--variant", "intel-ir", "--results"])
        .arg(tmp.path())
        .arg(repo().join("scenarios/edu-producer-first.toml"))
        .arg(repo().join("scenarios/igb-msix-subset.toml"))
        .arg(repo().join("bugs/e1000e-msix-resend.toml"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    // the table's row, then its detail line
    let mut table = out.lines().skip_while(|l| !l.starts_with("SCENARIO "));
    let row = table
        .find(|l| l.starts_with("e1000e-msix-resend "))
        .unwrap_or_else(|| panic!("no row: {out}"));
    assert!(row.ends_with("CHECK FAILED"), "{row}");
    let message = table.next().unwrap_or_default();
    assert!(
        message.contains("check lossless failed: step 6 nic0/msix1: raised 5 but L1 saw "),
        "{out}"
    );
    // "... L1 saw 10": more than raised
    let saw: u64 = message
        .split("raised 5 but L1 saw ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable lossless failure: {message}"));
    assert!(saw > 5, "{message}");
    assert!(out.contains("2 passed, 1 failed"), "{out}");
    assert_no_qemu_left(tmp.path());
}

/// A kernel warning fails the scenario during which the kernel printed it,
/// even where every check of its own passes. Debian's 6.17 kernels have a
/// real one: on AVIC, deassigning an irqfd while its producer stays
/// leaves the vCPU's IRTE list non-empty, and destroying the VM then warns
/// in `svm_vcpu_free` (6.16 and 7.2 are quiet). The scenario after it in
/// the same boot is not blamed.
#[test]
fn kernel_warning_fails_the_scenario_that_caused_it() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // a copy of the snapshots, so that the mismatch's .snap.new lands there
    let snapshots = tmp.path().join("snapshots");
    std::fs::create_dir_all(snapshots.join("amd-avic")).unwrap();
    for scenario in ["edu-consumer-first", "edu-producer-first"] {
        let snap = format!("amd-avic/{scenario}.snap");
        std::fs::copy(repo().join("snapshots").join(&snap), snapshots.join(&snap)).unwrap();
    }
    let output = testbed()
        .args([
            "run",
            "--variant",
            "amd-avic",
            "--kernel",
            "debian:6.17",
            "--snapshots",
        ])
        .arg(&snapshots)
        .arg("--results")
        .arg(tmp.path().join("results"))
        .arg(repo().join("scenarios/edu-consumer-first.toml"))
        .arg(repo().join("scenarios/edu-producer-first.toml"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let mut table = out.lines().skip_while(|l| !l.starts_with("SCENARIO "));
    let row = table
        .find(|l| l.starts_with("edu-consumer-first "))
        .unwrap_or_else(|| panic!("no row: {out}"));
    assert!(row.ends_with("CHECK FAILED"), "{row}");
    let message = table.next().unwrap_or_default();
    assert!(
        message.contains(
            "check kernel-quiet failed: the kernel warned 1 time: step 8 destroy-vm: \
             WARNING: at arch/x86/kvm/svm/svm.c:"
        ) && message.contains(" svm_vcpu_free [kvm_amd]"),
        "{out}"
    );
    let next = table
        .find(|l| l.starts_with("edu-producer-first "))
        .unwrap_or_else(|| panic!("no row: {out}"));
    assert!(next.ends_with("pass"), "{out}");
    assert_no_qemu_left(&tmp.path().join("results"));
}

/// QEMU 10.0.2's igbvf maps 64-bit VF BARs at the low 32 bits of their
/// address (bugs/igb-vf-bar-above-4g.toml). With the 64-bit PCI window
/// given back, L1 puts the VF BARs above 4 GiB and the VF raises nothing;
/// without that, the testbed's own placement below 4 GiB delivers all.
/// When the stock QEMU has the fix, the first half fails: drop the
/// pci-hole64-size workaround then.
#[test]
fn igb_vf_bar_above_4g_is_reported() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        testbed()
            .args(["run", "--variant", "intel-ir", "--results"])
            .arg(tmp.path())
            .arg(repo().join("bugs/igb-vf-bar-above-4g.toml"))
            .args(extra)
            .output()
            .unwrap()
    };
    let output = run(&[
        "--qemu-arg=-global",
        "--qemu-arg=q35-pcihost.pci-hole64-size=32G",
    ]);
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let mut table = out.lines().skip_while(|l| !l.starts_with("SCENARIO "));
    let row = table
        .find(|l| l.starts_with("igb-vf-bar-above-4g "))
        .unwrap_or_else(|| panic!("no row: {out}"));
    assert!(row.ends_with("CHECK FAILED"), "{row}");
    let message = table.next().unwrap_or_default();
    assert!(
        message.contains("check lossless failed: step 3 vf0/msix0: raised 3 but L1 saw 0"),
        "{out}"
    );

    // as the testbed boots it: nothing lost, only the snapshot a bug
    // reproducer has none of is missing
    let output = run(&[]);
    let out = text(&output);
    let mut table = out.lines().skip_while(|l| !l.starts_with("SCENARIO "));
    let row = table
        .find(|l| l.starts_with("igb-vf-bar-above-4g "))
        .unwrap_or_else(|| panic!("no row: {out}"));
    assert!(row.ends_with("NEW SNAPSHOT"), "{out}");
    assert!(!out.contains("check lossless failed"), "{out}");
    assert_no_qemu_left(tmp.path());
}

/// Scenarios leave nothing behind: every scenario's report is the same
/// whether it shares an L1 boot with the others, has its own boot, or
/// starts from a restored L1. A set that touches what a scenario could
/// leave in L1 (INTx and its resampler, an L2 halted or alternating, two
/// VMs, the KVM module reloaded, an igb unplugged and replugged): all of
/// scenarios/ took 278 s of a fresh CI run, most of it one boot per
/// scenario. Every scenario that runs on amd-ir also runs on shared boots
/// against its snapshot in `scenarios_match_snapshots_on_amd_ir` (stock
/// amd-ir cannot restore), and from restored L1s in
/// `scenarios_match_snapshots_on_amd_avic`.
#[test]
fn shared_and_fresh_boots_give_the_same_reports() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scenarios = [
        "edu-producer-first",
        "edu-intx-resample",
        "edu-l2-alternate",
        "edu-l2-halted",
        "edu-two-vms",
        "edu-reload-kvm",
        "igb-hot-unplug",
    ];
    let output = testbed()
        .args([
            "bench",
            "--boot-sharing",
            "--iterations",
            "1",
            "--variant",
            "intel-ir",
            "--results",
        ])
        .arg(tmp.path())
        .args(
            scenarios
                .iter()
                .map(|s| repo().join("scenarios").join(format!("{s}.toml"))),
        )
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("reports, three ways") && out.contains("identical"),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

/// The stock QEMU's lost wakeup (docs/tcg-lost-wakeup.md), for real: the
/// same stress with the variant's one L1 CPU stalls that CPU on stock amd-ir
/// (every run on these machines so far: 6 tries of 6, halted in L1 or
/// spinning in L2, its timer vector pending). The runner must say so
/// within seconds, not after the 60 s hang timeout, from a look the guest
/// cannot see, try the scenario once more on a new L1, and fail it for
/// the emulator's reason with both tries' evidence kept.
#[test]
fn a_lost_wakeup_on_the_stock_qemu_is_named_and_tried_once_more() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("report.json");
    let (code, out) = run_in(
        tmp.path(),
        &["--variant", "amd-ir", "--json", json.to_str().unwrap()],
        true,
        &fixture("stress-any-variant.toml"),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("BROKEN (a second try: the first stalled on QEMU's lost wakeup)"),
        "{out}"
    );
    assert!(
        out.contains("on the stock QEMU: once more on a new L1"),
        "{out}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let cell = &report["results"][0]["report"];
    for field in ["retried_after", "failure"] {
        let why = cell[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {cell}"));
        assert!(
            why.starts_with("L1 stalled: CPU 0 did not take pending interrupt 236 in 2 s (IF set,"),
            "{field}: {why}"
        );
        // named at the first look after 10 s of silence, well before 60 s
        let silent: u64 = why
            .split("no word from the agent for ")
            .nth(1)
            .and_then(|rest| rest.split('s').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{field}: {why}"));
        assert!((10..30).contains(&silent), "{field}: {why}");
        let state = why
            .split("CPU state: ")
            .nth(1)
            .unwrap_or_else(|| panic!("{field}: {why}"));
        let state = std::fs::read_to_string(state.trim()).unwrap();
        assert!(state.contains("== info lapic (cpu 0, look 2)"), "{state}");
    }
    assert_ne!(cell["retried_after"], cell["failure"], "two tries, two L1s");
    assert_no_qemu_left(tmp.path());
}

/// The stress of edu-posted-stress on the stock remapped path: with two L1
/// CPUs every one of the 100 000 interrupts passes through L1 and KVM into
/// the L2, exactly once (with one L1 CPU the guest freezes; see the
/// scenario file).
#[test]
fn stress_on_amd_ir_with_two_cpus_loses_nothing() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("report.json");
    let (code, out) = run_in(
        tmp.path(),
        &[
            "--variant",
            "amd-ir",
            "--smp",
            "2",
            "--json",
            json.to_str().unwrap(),
        ],
        true,
        &fixture("stress-any-variant.toml"),
    );
    // no snapshot of its own (exit 1 for that alone): the checks decide
    assert!(
        !out.contains("CHECK FAILED") && !out.contains("BROKEN"),
        "{out}"
    );
    assert!(code == Some(1) && out.contains("NEW SNAPSHOT"), "{out}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let cell = &report["results"][0]["report"];
    let lossless = cell["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["expectation"] == "lossless")
        .unwrap();
    assert_eq!(lossless["passed"], true, "{lossless}");
    let fire = cell["interrupts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["raised"] == 100_000)
        .expect("the fire step");
    for field in ["host_irq", "injected", "delivered"] {
        assert_eq!(fire[field], 100_000, "{field}: {fire}");
    }
    assert_no_qemu_left(tmp.path());
}
