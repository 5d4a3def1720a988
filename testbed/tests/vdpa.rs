//! The vDPA scenarios of `built-kernel/` on a kernel the testbed builds
//! (Debian's lack vdpa_sim and vp_vdpa), a vDPA expectation that fails for
//! real, and what the scenarios say on a kernel without vDPA. They boot
//! guests: `TESTBED_VM_TESTS=1`.
//!
//! The kernel: `$TESTBED_VDPA_KERNEL` (any kernel spec, e.g.
//! `git:/path/to/linux` or the `path:` that `testbed kernel` prints), else
//! [`common::built_kernel`]: Debian's 6.12.107 source (what the snapshots
//! were taken on) built with `git:`.

mod common;

use common::{assert_no_qemu_left, fixture, repo, testbed, text, vm_tests_enabled};

fn vdpa_kernel() -> String {
    common::built_kernel("TESTBED_VDPA_KERNEL")
}

/// The scenarios match their snapshots on every variant they name: no
/// producer for vdpa_sim, one per queue for vp_vdpa, posted on amd-avic;
/// vdpa_sim through vhost-vdpa to a real L2 on intel-ir, amd-ir and
/// amd-avic (3 + 3 + 3).
#[test]
fn vdpa_scenarios_match_their_snapshots_on_a_built_kernel() {
    if !vm_tests_enabled() {
        return;
    }
    let kernel = vdpa_kernel();
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args(["run", "--kernel", &kernel, "--results"])
        .arg(tmp.path())
        .args([
            "--variant",
            "intel-ir",
            "--variant",
            "amd-ir",
            "--variant",
            "amd-ir-patched",
            "--variant",
            "amd-avic",
        ])
        .arg(repo().join("built-kernel"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("9 passed, 0 failed"), "{out}");
    assert_no_qemu_left(tmp.path());
}

/// vDPA scenarios leave L1 as they found it (the vDPA device deleted, the
/// PCI function back with virtio-pci): sharing a boot with a VFIO scenario
/// changes no report.
#[test]
fn vdpa_scenarios_share_a_boot_without_changing_reports() {
    if !vm_tests_enabled() {
        return;
    }
    let kernel = vdpa_kernel();
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args([
            "bench",
            "--boot-sharing",
            "--iterations",
            "1",
            "--variant",
            "amd-avic",
            "--kernel",
            &kernel,
        ])
        .arg("--results")
        .arg(tmp.path())
        // not vdpa-sim-l2: a real L2 keeps boot sharing (no restore)
        .arg(repo().join("built-kernel/vdpa-sim-no-producer.toml"))
        .arg(repo().join("built-kernel/vp-vdpa-per-queue.toml"))
        .arg(repo().join("scenarios/edu-producer-first.toml"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("  reports, three ways") && l.ends_with("all 3 identical")),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

/// vdpa_sim_net through vhost-vdpa to a real L2 (L1's QEMU opens the
/// node, the L2's virtio_net drives it): the frames loop back, every
/// interrupt the L2 handled KVM injected through the irqfd, no producer
/// registers, and the VMM and the vDPA device are gone afterwards.
#[test]
fn vdpa_sim_reaches_a_real_l2_through_vhost_vdpa() {
    if !vm_tests_enabled() {
        return;
    }
    let kernel = vdpa_kernel();
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args([
            "run",
            "--variant",
            "intel-ir",
            "--kernel",
            &kernel,
            "--results",
        ])
        .arg(tmp.path())
        .arg(repo().join("built-kernel/vdpa-sim-l2.toml"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("1 passed, 0 failed"), "{out}");
    let console = std::fs::read_to_string(
        walk(tmp.path())
            .into_iter()
            .find(|p| p.ends_with("console.log"))
            .expect("a console log"),
    )
    .unwrap();
    assert!(
        console.contains("vDPA device for the L2's VMM at /dev/vhost-vdpa-"),
        "{console}"
    );
    assert!(console.contains("virtio_net"), "{console}");
    assert_no_qemu_left(tmp.path());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A producer expected where vhost-vdpa registers none: the check fails,
/// naming who did not register it, and the run exits 1.
#[test]
fn a_vdpa_expectation_fails_for_real() {
    if !vm_tests_enabled() {
        return;
    }
    let kernel = vdpa_kernel();
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args([
            "run",
            "--variant",
            "intel-ir",
            "--kernel",
            &kernel,
            "--results",
        ])
        .arg(tmp.path())
        .arg(fixture("vdpa-sim-expects-a-producer.toml"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("CHECK FAILED"), "{out}");
    assert!(
        out.contains("producer vdpa0/vq1 never registered (vhost-vdpa did not call irq_bypass_register_producer)"),
        "{out}"
    );
    // the rest of the scenario ran: the interrupts were accounted
    assert!(!out.contains("check lossless failed"), "{out}");
    assert_no_qemu_left(tmp.path());
}

/// On Debian's kernel (the default) the vDPA modules are missing: the bind
/// fails and names them, and the run exits 1.
#[test]
fn vdpa_scenarios_name_the_missing_modules_on_debian() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let output = testbed()
        .args(["run", "--variant", "intel-ir", "--results"])
        .arg(tmp.path())
        .arg(repo().join("built-kernel/vdpa-sim-no-producer.toml"))
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "module vhost_vdpa, vdpa_sim_net not loaded: this kernel has no such vDPA support"
        ),
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}
