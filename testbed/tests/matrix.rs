//! `testbed matrix` end to end with real guests (TESTBED_VM_TESTS=1): a
//! small matrix with a kernel that does not exist and a snapshot that does
//! not hold, its table, JUnit XML, JSON and results directory, `--resume`,
//! and Ctrl-C in the middle of a boot. Usage errors need no guest.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Nothing half written: no boot or cell directory still under its temporary name.
fn assert_nothing_partial(results: &Path) {
    let partial: Vec<String> = tree(results)
        .into_iter()
        .filter(|p| p.contains(".running-") || p.contains(".writing-") || p.contains(".old-"))
        .collect();
    assert!(partial.is_empty(), "partial entries left: {partial:?}");
    let tmp: Vec<String> = tree(results)
        .into_iter()
        .filter(|p| p.contains(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
}

#[test]
fn bad_matrix_file_is_exit_2_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        "kernels = [\"debian:7\"]\nvariants = [\n  \"intel-ir\",\n  \"intel-posted\",\n]\n",
    )
    .unwrap();
    let output = testbed()
        .arg("matrix")
        .arg("--file")
        .arg(&path)
        .output()
        .unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(
        out.contains("m.toml:4:3: unknown variant \"intel-posted\""),
        "{out}"
    );
}

#[test]
fn bad_shard_is_exit_2() {
    let output = testbed()
        .args(["matrix", "--shard", "3/2"])
        .arg(repo().join("scenarios"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("bad shard \"3/2\""),
        "{}",
        text(&output)
    );
}

/// The checked-in matrix file parses, and `--emit github` spreads its
/// pairs over the shards asked for, without fetching anything.
#[test]
fn emit_github_for_the_checked_in_matrix() {
    let output = testbed()
        .current_dir(repo())
        .args([
            "matrix",
            "--file",
            "matrix.toml",
            "--emit",
            "github",
            "--shards",
            "4",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let json = out
        .trim()
        .strip_prefix("matrix=")
        .unwrap_or_else(|| panic!("no matrix= line: {out}"));
    let matrix: serde_json::Value = serde_json::from_str(json).unwrap();
    let shards: Vec<&str> = matrix["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["shard"].as_str().unwrap())
        .collect();
    assert_eq!(shards, ["1/4", "2/4", "3/4", "4/4"]);
}

fn copy_snapshots(to: &Path, variants: &[&str]) {
    for v in variants {
        std::fs::create_dir_all(to.join(v)).unwrap();
        for e in std::fs::read_dir(repo().join("snapshots").join(v))
            .unwrap()
            .flatten()
        {
            std::fs::copy(e.path(), to.join(v).join(e.file_name())).unwrap();
        }
    }
}

/// Whether the table has the row `kernel variant scenario result...`.
fn row(out: &str, kernel: &str, variant: &str, scenario: &str, result: &str) -> bool {
    out.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.len() >= 4 && w[..3] == [kernel, variant, scenario] && l.contains(result)
    })
}

/// 2 kernels (one that does not exist) x 2 variants x 2 scenarios, with
/// one snapshot changed so that its cell must fail.
#[test]
fn small_matrix_table_junit_json_and_resume() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let snapshots = tmp.path().join("snapshots");
    copy_snapshots(&snapshots, &["intel-ir", "amd-ir"]);
    let changed = snapshots.join("intel-ir/edu-no-consumer.snap");
    let snap = std::fs::read_to_string(&changed).unwrap();
    assert!(snap.contains("raised 4  L1 4 "), "{snap}");
    std::fs::write(&changed, snap.replace("raised 4  L1 4 ", "raised 4  L1 5 ")).unwrap();

    let matrix = |extra: &[&str]| {
        let output = testbed()
            .args([
                "matrix",
                "-k",
                "debian:7.2",
                "-k",
                "debian:6.99",
                "-V",
                "intel-ir",
                "-V",
                "amd-ir",
                "-j",
                "2",
            ])
            .arg("--results")
            .arg(&results)
            .arg("--snapshots")
            .arg(&snapshots)
            .args(extra)
            .arg(repo().join("scenarios/edu-producer-first.toml"))
            .arg(repo().join("scenarios/edu-no-consumer.toml"))
            .output()
            .unwrap();
        (output.status.code(), text(&output))
    };
    let (code, out) = matrix(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert_no_qemu_left(tmp.path());
    assert_nothing_partial(&results);
    for variant in ["intel-ir", "amd-ir"] {
        assert!(
            row(&out, "debian:7.2", variant, "edu-producer-first", "pass"),
            "{out}"
        );
        for scenario in ["edu-producer-first", "edu-no-consumer"] {
            assert!(
                row(&out, "debian:6.99", variant, scenario, "ERROR"),
                "{out}"
            );
        }
    }
    assert!(
        row(&out, "debian:7.2", "amd-ir", "edu-no-consumer", "pass"),
        "{out}"
    );
    assert!(
        row(
            &out,
            "debian:7.2",
            "intel-ir",
            "edu-no-consumer",
            "MISMATCH"
        ),
        "{out}"
    );
    assert!(
        out.contains("no debian kernel matches debian:6.99"),
        "{out}"
    );
    // intel-ir's scenarios each start from a restored L1 (a boot saves the
    // state unless an earlier run did); amd-iommu will not migrate, so
    // amd-ir's share one boot and say why
    assert!(
        out.contains("3 passed, 1 failed, 4 errors; 8 cells, "),
        "{out}"
    );
    assert!(out.contains(" boots, 2 restores in "), "{out}");

    // JUnit: one case per cell, the mismatch a failure with its diff and
    // console, the missing kernel's cells errors.
    let junit = std::fs::read_to_string(results.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 8, "{junit}");
    assert!(
        junit.contains(
            "<testsuites name=\"testbed matrix\" tests=\"8\" failures=\"1\" errors=\"4\""
        ),
        "{junit}"
    );
    let failure = junit
        .split("<failure")
        .nth(1)
        .unwrap()
        .split("</failure>")
        .next()
        .unwrap();
    assert!(
        failure.contains("-   step 3  dev0/msi0  raised 4  L1 5 "),
        "{failure}"
    );
    assert!(
        failure.contains("+   step 3  dev0/msi0  raised 4  L1 4 "),
        "{failure}"
    );
    // a restored L1's console holds what it printed after the restore
    assert!(failure.contains("console log (last "), "{failure}");
    assert!(failure.contains("edu-no-consumer/diff.txt)"), "{failure}");
    assert!(failure.contains("testbed-agent"), "{failure}");
    assert_eq!(junit.matches("<error type=\"ERROR\"").count(), 4, "{junit}");

    // JSON: every cell with its verdict and report.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("report.json")).unwrap()).unwrap();
    let cells = json["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 8);
    let verdict = |k: &str, v: &str, s: &str| {
        let c = cells
            .iter()
            .find(|c| c["kernel"] == k && c["variant"] == v && c["scenario"] == s)
            .unwrap();
        c["result"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        verdict("debian:7.2", "intel-ir", "edu-no-consumer"),
        "MISMATCH"
    );
    assert_eq!(
        verdict("debian:7.2", "amd-ir", "edu-producer-first"),
        "pass"
    );
    assert_eq!(
        verdict("debian:6.99", "amd-ir", "edu-producer-first"),
        "ERROR"
    );
    assert!(cells
        .iter()
        .filter(|c| c["kernel"] == "debian:7.2")
        .all(|c| c["report"]["checks"].is_array()));
    let boots = json["boots"].as_array().unwrap();
    let restored = |b: &&serde_json::Value| b["restored"] == true;
    assert_eq!(boots.iter().filter(restored).count(), 2, "{boots:?}");
    assert!(
        boots.iter().any(|b| b["variant"] == "amd-ir"
            && b["shared_because"]
                .as_str()
                .is_some_and(|r| r.contains("amd-iommu"))),
        "{boots:?}"
    );

    // The failing cell keeps everything; a passing one only its report.
    let failed = results.join("debian-7.2/intel-ir/edu-no-consumer");
    for f in [
        "result.json",
        "report.txt",
        "report.json",
        "diff.txt",
        "console.log",
        "qmp.log",
        "qemu-stderr.log",
    ] {
        assert!(
            failed.join(f).is_file(),
            "{f} missing: {:?}",
            tree(&results)
        );
    }
    assert!(std::fs::read_to_string(failed.join("qmp.log"))
        .unwrap()
        .contains("\"query-pci\""));
    let passed = results.join("debian-7.2/amd-ir/edu-no-consumer");
    assert!(
        passed.join("report.txt").is_file() && !passed.join("console.log").exists(),
        "{:?}",
        tree(&results)
    );
    assert!(std::fs::read_to_string(results.join("summary.md"))
        .unwrap()
        .contains("| `edu-no-consumer` | ❌ MISMATCH | ✅ "));

    // --resume: amd-ir passed everything, so only intel-ir boots again.
    let (code, out) = matrix(&["--resume"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        row(
            &out,
            "debian:7.2",
            "amd-ir",
            "edu-no-consumer",
            "pass (resumed)"
        ),
        "{out}"
    );
    assert!(
        row(
            &out,
            "debian:7.2",
            "intel-ir",
            "edu-producer-first",
            "pass (resumed)"
        ),
        "{out}"
    );
    assert!(
        row(
            &out,
            "debian:7.2",
            "intel-ir",
            "edu-no-consumer",
            "MISMATCH"
        ),
        "{out}"
    );
    // only intel-ir's failed scenario runs again, from the saved state
    assert!(out.contains("8 cells, 0 boots, 1 restores"), "{out}");
    assert_no_qemu_left(tmp.path());
    assert_nothing_partial(&results);
}

/// SIGINT while guests run: exit 130, no QEMU left, no boot directory
/// under a temporary name, no report pretending the matrix finished.
#[test]
fn ctrl_c_mid_matrix_leaves_nothing_running() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let mut child = testbed()
        .args([
            "matrix",
            "-k",
            "debian:7.2",
            "-V",
            "intel-ir",
            "-V",
            "amd-ir",
            "-j",
            "2",
        ])
        .arg("--results")
        .arg(&results)
        .arg("--snapshots")
        .arg(tmp.path().join("snapshots"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/long-fire.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Both guests up and the agent ready in at least one of them.
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
        let ready = tree(&results)
            .iter()
            .filter(|p| p.ends_with("console.log"))
            .any(|p| {
                std::fs::read_to_string(results.join(p))
                    .unwrap_or_default()
                    .contains("testbed-agent: ready")
            });
        if ready && qemu_processes_with(tmp.path()).len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let out = text(&output);
    assert_eq!(output.status.code(), Some(130), "{out}");
    assert!(out.contains("interrupted"), "{out}");
    assert_no_qemu_left(tmp.path());
    assert_nothing_partial(&results);
    let entries = tree(&results);
    assert!(
        !entries
            .iter()
            .any(|p| p.contains("boot-0") || p.ends_with("report.json")),
        "{entries:?}"
    );
}
