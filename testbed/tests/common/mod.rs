//! Helpers shared by the test binaries that run the `testbed` command.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The `testbed` binary, never writing or force-passing snapshots.
pub fn testbed() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testbed"));
    cmd.env("INSTA_UPDATE", "no").env_remove("INSTA_FORCE_PASS");
    cmd
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Whether guest-booting tests run here (TESTBED_VM_TESTS=1).
pub fn vm_tests_enabled() -> bool {
    if std::env::var_os("TESTBED_VM_TESTS").is_some_and(|v| v == "1") {
        return true;
    }
    eprintln!("skipped: set TESTBED_VM_TESTS=1 to boot guests");
    false
}

/// Everything a command printed, stdout then stderr.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// QEMU processes whose command line mentions `marker` (a test's own temp dir).
pub fn qemu_processes_with(marker: &Path) -> Vec<u32> {
    let marker = marker.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("qemu-system") && cmdline.contains(&marker) {
            found.push(pid);
        }
    }
    found
}

pub fn assert_no_qemu_left(marker: &Path) {
    // The testbed reaps before exiting; allow the kernel a moment to drop the entry.
    for _ in 0..50 {
        if qemu_processes_with(marker).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("QEMU left running: {:?}", qemu_processes_with(marker));
}

/// The Debian `linux` version of [`built_kernel`].
pub const BUILT_LINUX_VERSION: &str = "6.12.107";

/// A kernel the testbed builds, for the tests that need one (vDPA, posted
/// MSIs): `$<env>` if set (any kernel spec), else Debian's 6.12.107 source
/// made into a git tree once by `testbed kernel-tree` in the testbed's
/// cache and built with `git:` (a full build the first time, the cached
/// kernel after). Every test that calls it is in the `guests` group, which
/// runs one test at a time, so two never make the tree at once.
pub fn built_kernel(env: &str) -> String {
    if let Some(spec) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        return spec
            .into_string()
            .unwrap_or_else(|_| panic!("{env} is not UTF-8"));
    }
    let tree: PathBuf = images::Cache::default_location()
        .root()
        .join("test-linux-trees")
        .join(BUILT_LINUX_VERSION);
    if !tree.join(".git").exists() {
        // made under another name and renamed: an interrupted run leaves
        // no half-made tree that a later run would build
        let partial = tree.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(tree.parent().unwrap()).unwrap();
        let out = testbed()
            .args(["kernel-tree", BUILT_LINUX_VERSION])
            .arg(&partial)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "testbed kernel-tree: {}",
            text(&out)
        );
        std::fs::rename(&partial, &tree).unwrap();
    }
    format!("git:{}", tree.display())
}
