//! Builds the patched QEMU for real and boots it; run with TESTBED_VM_TESTS=1.
//!
//! Uses `$TESTBED_TEST_CACHE`, else the default cache (the one `testbed run`
//! uses), so a warm CI machine does not rebuild QEMU for every test run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use images::{build_qemu, Cache, ImagesError, KernelSpec, Progress, QemuBuildSpec, QemuSource};

fn enabled() -> bool {
    if std::env::var("TESTBED_VM_TESTS").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: set TESTBED_VM_TESTS=1 to build QEMU");
        false
    }
}

fn cache() -> Cache {
    match std::env::var_os("TESTBED_TEST_CACHE") {
        Some(d) => Cache::new(PathBuf::from(d)),
        None => Cache::default_location(),
    }
}

fn project_patches() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("qemu-patches")
}

#[test]
fn patched_qemu_builds_caches_boots_and_names_bad_patches() {
    if !enabled() {
        return;
    }
    let cache = cache();
    // a snapshot of qemu-patches/: the series may change while this runs
    let patches_copy = tempfile::tempdir().unwrap();
    for p in images::list_patches(&project_patches()).unwrap() {
        std::fs::copy(&p, patches_copy.path().join(p.file_name().unwrap())).unwrap();
    }
    let spec = QemuBuildSpec::new(QemuSource::pinned(), patches_copy.path());
    let patches = images::list_patches(&spec.patches_dir).unwrap();
    eprintln!(
        "{} patches from {}",
        patches.len(),
        project_patches().display()
    );

    let t = Instant::now();
    let mut steps = 0;
    let build = build_qemu(&cache, &spec, &mut |e| {
        if matches!(e, Progress::BuildingQemu { .. }) {
            steps += 1;
        }
        eprintln!("{e}");
    })
    .unwrap();
    eprintln!(
        "first build: {:?} ({steps} build progress events) -> {build:?}",
        t.elapsed()
    );
    let out = Command::new(&build.binary)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        version.starts_with("QEMU emulator version 10.0.13"),
        "{version}"
    );
    assert!(
        build
            .description
            .starts_with(&format!("qemu 10.0.13 +{} patches (key ", patches.len())),
        "{}",
        build.description
    );
    assert!(!build.data_dirs.is_empty());

    // second build: a cache hit, nothing rebuilt
    let mut events = Vec::new();
    let t = Instant::now();
    let again = build_qemu(&cache, &spec, &mut |e| events.push(e)).unwrap();
    let warm = t.elapsed();
    eprintln!("second build: {warm:?} {events:?}");
    assert_eq!(again, build);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Progress::CacheHit { .. })),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(
        e,
        Progress::BuildingQemu { .. }
            | Progress::ConfiguringQemu
            | Progress::FetchingQemuSource { .. }
    )));
    assert!(warm < Duration::from_secs(2), "{warm:?}");

    boot(&build);

    // a patch that does not apply: the error names it and quotes git apply
    let bad_dir = tempfile::tempdir().unwrap();
    for p in &patches {
        std::fs::copy(p, bad_dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let bad = bad_dir.path().join("0999-does-not-apply.patch");
    std::fs::write(
        &bad,
        "From 1 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] bad\n\n---\n\
         diff --git a/hw/i386/amd_iommu.c b/hw/i386/amd_iommu.c\n--- a/hw/i386/amd_iommu.c\n+++ b/hw/i386/amd_iommu.c\n\
         @@ -1,3 +1,3 @@\n-this line is not in amd_iommu.c\n+nor is this one\n context that does not exist\n \n",
    )
    .unwrap();
    let bad_spec = QemuBuildSpec {
        patches_dir: bad_dir.path().to_path_buf(),
        ..spec.clone()
    };
    // other runs may add their own entries meanwhile: only the bad
    // spec's own entry must never appear
    let bad_entry = images::qemu_entry_dir(&cache, &bad_spec, &mut |_| {}).unwrap();
    assert!(!bad_entry.exists(), "{}", bad_entry.display());
    let t = Instant::now();
    let e = build_qemu(&cache, &bad_spec, &mut |_| {}).unwrap_err();
    eprintln!("bad patch after {:?}: {e}", t.elapsed());
    assert!(
        matches!(&e, ImagesError::PatchFailed { patch, .. } if *patch == bad),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("patch {} does not apply:", bad.display())),
        "{msg}"
    );
    assert!(msg.contains("hw/i386/amd_iommu.c"), "{msg}");
    assert!(
        !bad_entry.exists(),
        "no entry for a failed build: {}",
        bad_entry.display()
    );
}

/// Boot a Debian kernel (no initramfs: it panics at the root mount, and
/// -no-reboot turns that into an exit) on q35 with the amd-iommu, with the
/// firmware from the build's data directories only.
fn boot(build: &images::QemuBuild) {
    let cache = cache();
    let spec: KernelSpec = "debian:7.2".parse().unwrap();
    let kernel = images::resolve_kernel(&cache, &spec, &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let mut cmd = Command::new(&build.binary);
    for d in &build.data_dirs {
        cmd.arg("-L").arg(d);
    }
    cmd.args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "512M"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel.bzimage)
        .args([
            "-append",
            "console=ttyS0 panic=-1 amd_iommu=on no_timer_check",
        ])
        .args([
            "-device",
            "amd-iommu,intremap=on,xtsup=on",
            "-device",
            "edu",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the kernel did not panic and exit within 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    eprintln!("boot: {:?}, {status}, stderr: {stderr}", t.elapsed());
    assert!(
        log.contains(&format!("Linux version {}", kernel.release)),
        "no kernel banner:\n{log}"
    );
    assert!(
        log.contains("AMD-Vi"),
        "the amd-iommu was not found:\n{log}"
    );
    assert!(
        !stderr.contains("could not load") && !stderr.contains("Failed to open file"),
        "{stderr}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
