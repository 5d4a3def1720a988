//! `testbed bisect` over real Debian kernels (no build): boots guests, so
//! it runs only with TESTBED_VM_TESTS=1.
//!
//! The change it finds is real: Debian's 6.1 kernels register KVM's
//! irqbypass consumer (and connect it to VFIO's producer) even where the
//! platform cannot post interrupts; from 6.12 on KVM registers it only
//! where posting is possible, so on stock QEMU's amd-iommu the report
//! loses the consumer and the connection. The bisect's verdict is checked
//! against what separate `testbed run`s of the same kernels say about the
//! committed snapshot (taken on 7.2): the kernel before the change fails
//! it, the first changed one matches it. The bisect answers on the verdict
//! where the scenario's checks differ between the ends, else on the report,
//! and says which; Debian kernels of different lines are never adjacent,
//! so it names both ends of the boundary.

mod common;
use common::*;

#[test]
fn version_bisect_finds_the_kernel_where_kvm_stops_registering_a_useless_consumer() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scenario = repo().join("scenarios/edu-producer-first.toml");
    // four kernels: 6.1.170, 6.1.176, 6.12.43, 6.12.57; the search tests
    // both ends and then the middle
    let output = testbed()
        .args([
            "bisect",
            "--good",
            "debian:6.1.170",
            "--bad",
            "debian:6.12.57",
            "--variant",
            "amd-ir",
            "--results",
        ])
        .arg(tmp.path())
        .arg(&scenario)
        .output()
        .unwrap();
    let out = text(&output);
    println!("{out}");
    assert_eq!(output.status.code(), Some(0), "{out}");
    // the scenario has expectations and its checks fail on 6.1 (a consumer
    // connected where nothing can post): the bisect answers on the verdict
    assert!(
        out.lines()
            .any(|l| l == "question: first kernel on which the checks pass"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == "answer: the checks first pass on debian:6.12.43"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l
            == "the change lies between debian:6.1.176 (checks fail) and debian:6.12.43; \
                                  no Debian kernel lies between them"),
        "{out}"
    );
    // the two reports side by side: the consumer and connection on the left only
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("debian:6.1.176 (checks"))
        .collect();
    assert!(
        table[0].starts_with("debian:6.1.176 (checks fail)"),
        "{out}"
    );
    assert!(
        table[0]
            .trim_end()
            .ends_with("debian:6.12.43 (checks pass)"),
        "{out}"
    );
    let row = |left: &str| {
        table
            .iter()
            .find(|l| l.trim_start().starts_with(left))
            .copied()
            .unwrap_or("")
    };
    let consumer = row("consumer vm0:dev0/msi0 registered (ret 0)");
    assert!(
        consumer.contains(" | ") && consumer.contains("consumer vm0:dev0/msi0 not registered"),
        "{out}"
    );
    assert!(
        row("connected dev0/msi0 -> vm0:dev0/msi0 (ret 0)")
            .trim_end()
            .ends_with('<'),
        "{out}"
    );

    // what separate runs say about the same two kernels
    let run = |kernel: &str| {
        let output = testbed()
            .args([
                "run",
                "--variant",
                "amd-ir",
                "--kernel",
                kernel,
                "--results",
            ])
            .arg(tmp.path())
            .arg("--snapshots")
            .arg(repo().join("snapshots"))
            .arg(&scenario)
            .env("CI", "true")
            .output()
            .unwrap();
        (output.status.code(), text(&output))
    };
    let (code, out) = run("debian:6.12.43");
    assert_eq!(
        code,
        Some(0),
        "the first changed kernel matches the 7.2 snapshot:\n{out}"
    );
    let (code, out) = run("debian:6.1.176");
    assert_eq!(code, Some(1), "the last unchanged kernel does not:\n{out}");
    assert!(out.contains("connected-iff-posting"), "{out}");
}

/// The irqbypass rework's line: from 6.17 KVM refuses a second irqfd on an
/// eventfd that already has one (EBUSY); 6.16 accepts it. The bisect over
/// Debian's 6.16 and 6.17 kernels finds the first 6.17 kernel and shows the
/// refused irqfd beside the accepted one; each side matches the snapshot
/// kept for its kernel line (snapshots/intel-ir@6.16/ and intel-ir/).
#[test]
fn version_bisect_finds_the_kernel_that_refuses_a_second_irqfd_on_an_eventfd() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scenario = repo().join("scenarios/edu-shared-eventfd.toml");
    let output = testbed()
        .args([
            "bisect",
            "--good",
            "debian:6.16",
            "--bad",
            "debian:6.17",
            "--variant",
            "intel-ir",
            "--results",
        ])
        .arg(tmp.path())
        .arg(&scenario)
        .output()
        .unwrap();
    let out = text(&output);
    println!("{out}");
    assert_eq!(output.status.code(), Some(0), "{out}");
    // the checks pass on both lines: only the report tells them apart
    assert!(
        out.lines()
            .any(|l| l
                == "question: first kernel whose report differs (the checks pass at both ends)"),
        "{out}"
    );
    let answer = out
        .lines()
        .find(|l| l.starts_with("answer: "))
        .expect("an answer");
    assert!(
        answer.starts_with("answer: first kernel whose report differs: debian:6.17."),
        "{answer}"
    );
    let between = out
        .lines()
        .find(|l| l.starts_with("the change lies between "))
        .expect("where");
    assert!(
        between.starts_with("the change lies between debian:6.16."),
        "{between}"
    );
    assert!(
        between.ends_with("; no Debian kernel lies between them"),
        "{between}"
    );
    let refused = out
        .lines()
        .find(|l| l.contains("failed: KVM_IRQFD: Device or resource busy"))
        .unwrap_or_else(|| panic!("no refused irqfd on the right: {out}"));
    assert!(
        refused.contains(" | ") && refused.contains("consumer vm1:dev0/msi0 not registered"),
        "{refused}"
    );
    // each kernel line matches its own committed snapshot
    for kernel in ["debian:6.16", "debian:6.17"] {
        let output = testbed()
            .args([
                "run",
                "--variant",
                "intel-ir",
                "--kernel",
                kernel,
                "--results",
            ])
            .arg(tmp.path())
            .arg(&scenario)
            .env("CI", "true")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{kernel}:\n{}",
            text(&output)
        );
    }
}

/// CVE-2026-23198 on amd-avic: Debian 6.18.9 still has the bug (the
/// checks fail: lost interrupts, a list_add BUG or a WARN), 6.18.12 has
/// 6.18.10's fix. The verdict bisect names 6.18.12 and both ends of the
/// gap (6.18.10 and 6.18.11 were never packaged). Two kernels: the full
/// 6.18.5..6.18.15 run is in docs/kernel-bisect.md.
#[test]
fn verdict_bisect_finds_the_first_kernel_with_the_cve_2026_23198_fix() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scenario = repo().join("scenarios/edu-deassign-keeps-producer.toml");
    let output = testbed()
        .args([
            "bisect",
            "--good",
            "debian:6.18.9",
            "--bad",
            "debian:6.18.12",
            "--variant",
            "amd-avic",
            "--results",
        ])
        .arg(tmp.path())
        .arg(&scenario)
        .output()
        .unwrap();
    let out = text(&output);
    println!("{out}");
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.lines()
            .any(|l| l == "question: first kernel on which the checks pass"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == "answer: the checks first pass on debian:6.18.12"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l
            == "the change lies between debian:6.18.9 (checks fail) and debian:6.18.12; \
                                  no Debian kernel lies between them (upstream 6.18.10 to 6.18.11 not packaged)"),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

#[test]
fn bisect_input_errors_are_exit_2() {
    let scenario = repo().join("scenarios/edu-producer-first.toml");
    let run = |args: &[&str]| {
        let output = testbed().arg("bisect").args(args).output().unwrap();
        (output.status.code(), text(&output))
    };
    let (code, out) = run(&[
        "--good",
        "debian:6.1",
        "--bad",
        "debian:6.12",
        scenario.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("exactly one --variant"), "{out}");
    let (code, out) = run(&[
        "--good",
        "debian:6.1",
        "--bad",
        "debian:6.12",
        "--variant",
        "amd-ir",
        "scenarios",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("exactly one scenario file"), "{out}");
    let (code, out) = run(&[
        "--good",
        "path:/x",
        "--bad",
        "debian:6.12",
        "--variant",
        "amd-ir",
        scenario.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("a version bisect takes debian: kernels"),
        "{out}"
    );
    let t = tempfile::tempdir().unwrap();
    let (code, out) = run(&[
        "--tree",
        t.path().to_str().unwrap(),
        "--good",
        "v1",
        "--bad",
        "v2",
        "--variant",
        "amd-ir",
        scenario.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("is not a commit there"), "{out}");
}
