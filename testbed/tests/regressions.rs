//! The regression corpus (`regressions/`) on real Debian kernels: boots
//! guests, so it runs only with TESTBED_VM_TESTS=1.
//!
//! `testbed regressions --ci` runs each entry on the one kernel its
//! `[regression]` table marks as affected and the one it marks as fixed
//! (`ci = true`) and wants the checks to fail on the first and pass on the
//! second: one boot per (kernel, variant) pair, the entries of a pair
//! sharing it. That the judgement can fail is shown by the library's unit
//! tests (`regression::tests`) and, on a real kernel, by
//! `a_case_recorded_the_wrong_way_round_is_unexpected` below.

mod common;
use common::*;

#[test]
fn regression_corpus_ci_cases() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let output = testbed()
        .args(["regressions", "--ci", "--results"])
        .arg(tmp.path())
        .arg(repo().join("regressions"))
        .output()
        .unwrap();
    let out = text(&output);
    println!("{out}");
    println!("corpus --ci took {:.0} s", started.elapsed().as_secs_f64());
    assert_eq!(output.status.code(), Some(0), "{out}");
    // the table's rows (the progress lines before it end with the boot time)
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with('v') && l.contains("debian:") && !l.ends_with(" boot)"))
        .collect();
    // two cases per entry, each as expected, one failing and one passing
    let entries = std::fs::read_dir(repo().join("regressions"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    assert_eq!(rows.len(), 2 * entries, "{out}");
    for row in &rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[3], cols[4], "expected and got differ: {row}");
        assert!(row.ends_with("as expected"), "{row}");
    }
    assert_eq!(
        rows.iter()
            .filter(|r| r.split_whitespace().nth(3) == Some("fail"))
            .count(),
        entries,
        "{out}"
    );
    assert_no_qemu_left(tmp.path());
}

/// The same judgement fails when the record is wrong: the consumer entry
/// with its two kernels' expectations swapped comes out UNEXPECTED on both
/// (exit 1), each with what differs.
#[test]
fn a_case_recorded_the_wrong_way_round_is_unexpected() {
    if !vm_tests_enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let name = "v6.5-consumer-only-where-posting.toml";
    let original = std::fs::read_to_string(repo().join("regressions").join(name)).unwrap();
    let swapped = original
        .replace(
            "expect = \"fail\"\nfailing = [\"connected-iff-posting\"]",
            "expect = \"PASS\"",
        )
        .replace("expect = \"pass\"", "expect = \"fail\"")
        .replace("expect = \"PASS\"", "expect = \"pass\"");
    assert_eq!(
        swapped.matches("expect = \"pass\"").count(),
        1,
        "the entry changed shape: update this test"
    );
    assert_ne!(swapped, original);
    let dir = tmp.path().join("regressions");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(name), swapped).unwrap();
    let output = testbed()
        .args(["regressions", "--ci", "--results"])
        .arg(tmp.path())
        .arg(&dir)
        .output()
        .unwrap();
    let out = text(&output);
    println!("{out}");
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains("the checks fail (connected-iff-posting): expected them to pass"),
        "{out}"
    );
    assert!(
        out.contains("the checks pass: expected them to fail"),
        "{out}"
    );
    assert!(out.contains("0 as expected, 2 not"), "{out}");
}
