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
//! it, the first changed one matches it.

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
    let verdict = out
        .lines()
        .find(|l| l.starts_with("first kernel whose report differs: "))
        .expect("a verdict");
    assert!(
        verdict.contains("debian:6.12.43 (the one before it, debian:6.1.176,"),
        "{verdict}"
    );
    // the two reports side by side: the consumer and connection on the left only
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("debian:6.1.176 "))
        .collect();
    assert!(table[0].trim_end().ends_with("debian:6.12.43"), "{out}");
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
    let verdict = out
        .lines()
        .find(|l| l.starts_with("first kernel whose report differs: "))
        .expect("a verdict");
    assert!(
        verdict.contains("differs: debian:6.17.")
            && verdict.contains("the one before it, debian:6.16."),
        "{verdict}"
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
