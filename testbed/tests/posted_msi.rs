//! The `intel-posted-msi` variant end to end: L1's device MSIs posted by
//! the patched intel-iommu on a kernel built with CONFIG_X86_POSTED_MSI
//! (the built kernel the vDPA tests use, [`common::built_kernel`]), and
//! the `posted-msi` check failing for real on a kernel without it. They
//! boot guests: `TESTBED_VM_TESTS=1`.

mod common;

use common::{assert_no_qemu_left, repo, testbed, text, vm_tests_enabled};

/// An MSI and an MSI-X scenario match their snapshots: every device MSI L1
/// took was posted, every notification taken, nothing lost.
#[test]
fn msi_and_msix_scenarios_are_posted_on_a_built_kernel() {
    if !vm_tests_enabled() {
        return;
    }
    let kernel = common::built_kernel("TESTBED_POSTED_MSI_KERNEL");
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args(["run", "--variant", "intel-posted-msi", "--kernel", &kernel])
        .arg("--results")
        .arg(tmp.path())
        .arg(repo().join("scenarios/edu-producer-first.toml"))
        .arg(repo().join("scenarios/igb-msix-grow-shrink.toml"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    assert_no_qemu_left(tmp.path());
}

/// Debian's kernels have no CONFIG_X86_POSTED_MSI: on one, every report of
/// the variant fails `posted-msi` and says so.
#[test]
fn a_kernel_without_posted_msis_fails_the_check() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args([
            "run",
            "--variant",
            "intel-posted-msi",
            "--kernel",
            "debian:7.2",
        ])
        .arg("--results")
        .arg(tmp.path())
        .arg(repo().join("scenarios/edu-producer-first.toml"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("posted-msi"), "{out}");
    assert!(out.contains("CONFIG_X86_POSTED_MSI"), "{out}");
    assert_no_qemu_left(tmp.path());
}
