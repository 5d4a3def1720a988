//! Snapshot restore (`testbed run`'s default): scenarios start from one
//! saved L1 state; a damaged state is reported, discarded and saved afresh.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_no_qemu_left, repo, testbed, text, vm_tests_enabled};

fn run(results: &Path, scenarios: &[&str]) -> (Option<i32>, String) {
    run_on("intel-ir", results, scenarios)
}

fn run_on(variant: &str, results: &Path, scenarios: &[&str]) -> (Option<i32>, String) {
    let mut cmd = testbed();
    cmd.args(["run", "--variant", variant, "--results"])
        .arg(results);
    for s in scenarios {
        cmd.arg(repo().join("scenarios").join(s));
    }
    let output = cmd.output().unwrap();
    (output.status.code(), text(&output))
}

/// The state directory the run says it restored from.
fn state_dir(out: &str) -> PathBuf {
    let line = out
        .lines()
        .find(|l| l.contains("each scenario from L1 state "))
        .unwrap_or_else(|| panic!("{out}"));
    let rest = line.split("each scenario from L1 state ").nth(1).unwrap();
    PathBuf::from(rest.split(" (").next().unwrap().trim())
}

fn resumed_consoles(results: &Path) -> usize {
    resumed_consoles_of("intel-ir", results)
}

fn resumed_consoles_of(variant: &str, results: &Path) -> usize {
    let boot = results.join(variant).join("boot-0");
    std::fs::read_dir(&boot)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "save" && e.path().is_dir())
        .filter(|e| {
            let console = std::fs::read_to_string(e.path().join("console.log")).unwrap_or_default();
            console.contains("testbed-agent: resumed: wall clock stepped")
        })
        .count()
}

#[test]
fn scenarios_start_from_one_state_and_a_damaged_state_is_saved_afresh() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let (code, out) = run(
        &first,
        &["edu-producer-first.toml", "edu-consumer-first.toml"],
    );
    assert_eq!(code, Some(0), "{out}");
    let state = state_dir(&out);
    assert_eq!(
        resumed_consoles(&first),
        2,
        "both scenarios ran in a restored L1: {out}"
    );
    assert_no_qemu_left(tmp.path());
    let file = state.join("state.mig");
    let size = std::fs::metadata(&file).unwrap().len();

    // truncated: found before QEMU starts
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let second = tmp.path().join("second");
    let (code, out) = run(&second, &["edu-producer-first.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("could not be loaded") && out.contains("bytes, the save wrote"),
        "{out}"
    );
    assert!(
        out.contains("saving afresh") && out.contains("saved now"),
        "{out}"
    );
    assert_eq!(state_dir(&out), state);
    // the stream's length varies a little from save to save: the entry says its own
    let meta = std::fs::read_to_string(state.join("state.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    let saved = meta["size"].as_u64().unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        saved,
        "saved whole again"
    );
    assert!(saved > size / 2, "{saved} of {size}");
    assert_eq!(resumed_consoles(&second), 1, "{out}");
    assert_no_qemu_left(tmp.path());

    // corrupt: QEMU refuses the stream
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"not a migration stream", 0).unwrap();
    drop(f);
    let third = tmp.path().join("third");
    let (code, out) = run(&third, &["edu-producer-first.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("could not be loaded") && out.contains("saving afresh"),
        "{out}"
    );
    assert_eq!(resumed_consoles(&third), 1, "{out}");
    assert_no_qemu_left(tmp.path());
    let head = std::fs::read(&file).unwrap();
    assert_eq!(&head[..4], b"QEVM", "the fresh state is a migration stream");
    // nothing half-written beside the entry
    let siblings: Vec<_> = std::fs::read_dir(state.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(siblings.is_empty(), "{siblings:?}");
}

/// The patched QEMU migrates amd-iommu (qemu-patches/0029), guest-vapic
/// state included: `amd-avic` restores; `amd-ir` on the stock QEMU, whose
/// amd-iommu is unmigratable, runs its scenarios in one shared boot and
/// says why.
#[test]
fn amd_avic_restores_and_stock_amd_ir_falls_back_to_a_shared_boot() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let avic = tmp.path().join("avic");
    let (code, out) = run_on("amd-avic", &avic, &["edu-producer-first.toml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("each scenario from L1 state "), "{out}");
    assert!(!out.contains("scenarios share one boot"), "{out}");
    assert_eq!(resumed_consoles_of("amd-avic", &avic), 1, "{out}");
    assert_no_qemu_left(tmp.path());

    let stock = tmp.path().join("stock");
    let (code, out) = run_on("amd-ir", &stock, &["edu-producer-first.toml"]);
    assert_eq!(code, Some(0), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("scenarios share one boot: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("amd-iommu"),
        "QEMU's reason names the device: {line}"
    );
    assert_eq!(resumed_consoles_of("amd-ir", &stock), 0, "{out}");
    assert_no_qemu_left(tmp.path());
}

/// Where restore falls back to a shared boot (stock `amd-ir`), a scenario
/// that breaks the boot (L1 panics) costs the scenarios after it a new
/// boot, not their results: the next one runs on a boot of its own in
/// `rest-1-<scenario>/` and matches its snapshot.
#[test]
fn a_broken_shared_boot_gives_the_rest_a_new_boot() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("scenarios");
    std::fs::create_dir(&dir).unwrap();
    // a directory's files run in name order: the panic first
    std::fs::copy(common::fixture("panic-l1.toml"), dir.join("a-panic.toml")).unwrap();
    std::fs::copy(
        repo().join("scenarios/edu-no-consumer.toml"),
        dir.join("edu-no-consumer.toml"),
    )
    .unwrap();
    // the panic's new snapshot goes here, not into the repository
    let snapshots = tmp.path().join("snapshots");
    std::fs::create_dir_all(snapshots.join("amd-ir")).unwrap();
    std::fs::copy(
        repo().join("snapshots/amd-ir/edu-no-consumer.snap"),
        snapshots.join("amd-ir/edu-no-consumer.snap"),
    )
    .unwrap();
    let results = tmp.path().join("results");
    let output = testbed()
        .args(["run", "--variant", "amd-ir", "--results"])
        .arg(&results)
        .arg("--snapshots")
        .arg(&snapshots)
        .arg(&dir)
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("scenarios share one boot: "), "{out}");
    assert!(
        out.contains("a-panic broke the shared boot: a new boot for the 1 after it"),
        "{out}"
    );
    let verdict = |name: &str| {
        out.lines()
            .find(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some("amd-ir") && words.next() == Some(name)
            })
            .unwrap_or_else(|| panic!("no line for {name}: {out}"))
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_owned()
    };
    assert_eq!(verdict("a-panic"), "BROKEN", "{out}");
    assert_eq!(verdict("edu-no-consumer"), "pass", "{out}");
    let rest = results.join("amd-ir/boot-0/rest-1-edu-no-consumer/console.log");
    let console = std::fs::read_to_string(&rest).unwrap_or_else(|e| panic!("{rest:?}: {e}"));
    assert!(console.contains("job edu-no-consumer done"), "{console}");
    assert_no_qemu_left(tmp.path());
}
