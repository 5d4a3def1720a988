//! `compare_snapshot` drives insta's runtime: new, matched, mismatched, and
//! the files insta leaves for `cargo insta review|accept`.
//!
//! One test function: insta reads `INSTA_UPDATE` once per workspace, and the
//! environment is process-wide, so the cases run in sequence, each phase in
//! its own temporary workspace.

use std::fs;
use std::path::{Path, PathBuf};

use testbed::report::{compare_snapshot, snapshot_file, Header, Report, SnapshotOutcome};
use testbed::scenario;
use wire::{BypassEvent, Done, Platform, StepReport, VectorCount};

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
    dir
}

fn report(l1_seen: u64) -> Report {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scenarios/edu-producer-first.toml");
    let s = scenario::load(&path).unwrap();
    let step = |index: usize, bypass: Vec<BypassEvent>| StepReport {
        index,
        error: None,
        bypass,
        interrupts: vec![],
        kernel_warnings: vec![],
        l2: None,
    };
    let mut steps: Vec<StepReport> = (0..7).map(|i| step(i, vec![])).collect();
    steps[1].bypass = vec![BypassEvent::ProducerRegistered {
        producer: "dev0/msi0".into(),
        ret: 0,
    }];
    steps[3].bypass = vec![BypassEvent::ConsumerNotRegistered {
        consumer: "vm0:dev0/msi0".into(),
    }];
    steps[4].interrupts = vec![VectorCount {
        vector: "dev0/msi0".into(),
        raised: 5,
        signalled: None,
        host_irq: l1_seen,
        host_chip: Some("IR-PCI-MSI".into()),
        injected: l1_seen,
        delivered: None,
        resampled: None,
        eoi_trapped: None,
        route: None,
        unmasked: None,
    }];
    steps[5].bypass = vec![BypassEvent::ProducerUnregistered {
        producer: "dev0/msi0".into(),
    }];
    let platform = Platform {
        kernel_release: "6.12.48+deb13-amd64".into(),
        kvm_vendor: Some("kvm_amd".into()),
        apicv: Some(false),
        irq_remapping: Some("intel x2apic".into()),
        ..Platform::default()
    };
    let header = Header {
        variant: "intel-ir".into(),
        kernel_release: platform.kernel_release.clone(),
        qemu_version: "10.0.2".into(),
    };
    Report::from_parts(
        &s,
        header,
        platform,
        steps,
        Some(Done {
            cleanup: vec![],
            cleanup_error: None,
            kernel_warnings: vec![],
            l1_msi: None,
        }),
        None,
    )
}

fn new_file(snap: &Path) -> PathBuf {
    snap.with_extension("snap.new")
}

/// The body stored in a `.snap`/`.snap.new` (after the `---` metadata).
fn stored_body(p: &Path) -> String {
    let text = fs::read_to_string(p).unwrap();
    let (_, body) = text.split_once("\n---\n").expect("insta snapshot format");
    body.to_string()
}

fn set_update(mode: &str) {
    // Safe in edition 2021; this binary runs one test, so no thread reads
    // the environment concurrently.
    std::env::set_var("INSTA_UPDATE", mode);
    std::env::remove_var("INSTA_FORCE_PASS");
    std::env::remove_var("INSTA_WORKSPACE_ROOT");
    std::env::remove_var("INSTA_PENDING_DIR");
}

#[test]
fn compare_snapshot_through_insta() {
    let good = report(5);
    let bad = report(4);
    assert_ne!(good.body(), bad.body());

    // ---- review workflow: new, accepted, matched, mismatched
    set_update("new");
    let ws = workspace();
    let root = ws.path().join("snapshots");
    let snap = snapshot_file(&root, "intel-ir", "edu-producer-first");
    assert_eq!(snap, root.join("intel-ir/edu-producer-first.snap"));

    let out = compare_snapshot(&root, "intel-ir", "edu-producer-first", &good);
    assert_eq!(out, SnapshotOutcome::New);
    assert!(!snap.exists());
    let pending = fs::read_to_string(new_file(&snap)).unwrap();
    assert_eq!(
        stored_body(&new_file(&snap)).trim_end(),
        good.body().trim_end()
    );
    // header facts in metadata, not in the body
    assert!(pending.contains("info:"), "{pending}");
    assert!(pending.contains("variant: intel-ir"), "{pending}");
    assert!(pending.contains("qemu_version: 10.0.2"), "{pending}");
    assert!(
        pending.contains("description: MSI producer registered"),
        "{pending}"
    );
    assert!(!pending.contains("expression:"), "{pending}");
    assert!(!good.body().contains("10.0.2"));
    assert!(!good.body().contains("6.12.48"));

    // what `cargo insta accept` does, in effect
    fs::rename(new_file(&snap), &snap).unwrap();
    assert_eq!(
        compare_snapshot(&root, "intel-ir", "edu-producer-first", &good),
        SnapshotOutcome::Matched
    );
    assert!(!new_file(&snap).exists());

    let accepted = fs::read(&snap).unwrap();
    match compare_snapshot(&root, "intel-ir", "edu-producer-first", &bad) {
        SnapshotOutcome::Mismatched {
            diff,
            accepted: false,
            error: None,
        } => {
            assert!(
                diff.contains(
                    "-   step 5  dev0/msi0  raised 5  L1 5 (IR-PCI-MSI)  injected by KVM 5\n"
                ),
                "{diff}"
            );
            assert!(
                diff.contains(
                    "+   step 5  dev0/msi0  raised 5  L1 4 (IR-PCI-MSI)  injected by KVM 4\n"
                ),
                "{diff}"
            );
        }
        other => panic!("{other:?}"),
    }
    // the stored snapshot is untouched; the new body waits for review
    assert_eq!(fs::read(&snap).unwrap(), accepted);
    assert_eq!(
        stored_body(&new_file(&snap)).trim_end(),
        bad.body().trim_end()
    );

    // matching again clears the stale .snap.new
    assert_eq!(
        compare_snapshot(&root, "intel-ir", "edu-producer-first", &good),
        SnapshotOutcome::Matched
    );
    assert!(!new_file(&snap).exists());

    // a damaged (e.g. half-written) snapshot is a mismatch that says so,
    // and gets a .snap.new
    fs::write(&snap, "---\nsource: \"testbed/src/rep").unwrap();
    match compare_snapshot(&root, "intel-ir", "edu-producer-first", &good) {
        SnapshotOutcome::Mismatched { error: Some(e), .. } => {
            assert!(e.starts_with("cannot read "), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(new_file(&snap).exists());

    // ---- INSTA_UPDATE=always: written in place
    set_update("always");
    let ws = workspace();
    let root = ws.path().join("snapshots");
    let snap = snapshot_file(&root, "intel-ir", "edu-producer-first");
    assert_eq!(
        compare_snapshot(&root, "intel-ir", "edu-producer-first", &good),
        SnapshotOutcome::Accepted
    );
    assert_eq!(stored_body(&snap).trim_end(), good.body().trim_end());
    assert!(!new_file(&snap).exists());
    match compare_snapshot(&root, "intel-ir", "edu-producer-first", &bad) {
        SnapshotOutcome::Mismatched {
            accepted: true,
            error: None,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(stored_body(&snap).trim_end(), bad.body().trim_end());
    assert!(!new_file(&snap).exists());
    assert_eq!(
        compare_snapshot(&root, "intel-ir", "edu-producer-first", &bad),
        SnapshotOutcome::Matched
    );

    // ---- INSTA_UPDATE=no (what CI gets): nothing written
    set_update("no");
    let ws = workspace();
    let root = ws.path().join("snapshots");
    let snap = snapshot_file(&root, "intel-ir", "edu-producer-first");
    assert_eq!(
        compare_snapshot(&root, "intel-ir", "edu-producer-first", &good),
        SnapshotOutcome::New
    );
    assert!(!snap.exists());
    assert!(!new_file(&snap).exists());

    // the panic hook is back: a panic elsewhere is still reported normally
    let hook_ok = std::panic::catch_unwind(|| panic!("expected")).is_err();
    assert!(hook_ok);
}
