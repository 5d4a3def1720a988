//! Every snapshot file belongs to a scenario that exists and to a known
//! variant, and has a body: a renamed or deleted scenario must take its
//! snapshots with it. Scenarios live in `scenarios/`, in `built-kernel/`
//! when they need a kernel the testbed builds, or in `nested/` when they
//! run a real L2 Linux.
//!
//! This test lives in `snapshots/` on purpose: cargo-insta looks for pending
//! `.snap.new` files in the directories of the workspace's targets, and this
//! target puts `snapshots/` among them, so `cargo insta review` works here.

use std::path::Path;

#[test]
fn every_snapshot_has_a_scenario_and_a_variant() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let scenario_dirs = ["scenarios", "built-kernel", "nested"];
    let mut problems = Vec::new();
    let mut seen = 0;
    for variant_dir in std::fs::read_dir(root.join("snapshots")).unwrap().flatten() {
        if !variant_dir.path().is_dir() {
            continue;
        }
        let dir_name = variant_dir.file_name().to_string_lossy().into_owned();
        // `<variant>@<major.minor>`: a kernel line's own snapshots
        let (variant, line) = match dir_name.split_once('@') {
            Some((v, l)) => (v.to_owned(), Some(l.to_owned())),
            None => (dir_name.clone(), None),
        };
        if let Some(l) = &line {
            let ok = l.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
            });
            if !ok {
                problems.push(format!(
                    "snapshots/{dir_name}: expected <variant>@<major.minor>"
                ));
            }
        }
        if testbed::variant::lookup(&variant).is_err() {
            problems.push(format!("snapshots/{dir_name}: no such variant"));
        }
        for file in std::fs::read_dir(variant_dir.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let Some(scenario) = name.strip_suffix(".snap") else {
                continue;
            };
            seen += 1;
            let found: Vec<&str> = scenario_dirs
                .iter()
                .copied()
                .filter(|d| root.join(d).join(format!("{scenario}.toml")).exists())
                .collect();
            match found.as_slice() {
                [] => problems.push(format!(
                    "snapshots/{dir_name}/{name}: no {scenario}.toml in {}",
                    scenario_dirs.join(" or ")
                )),
                [dir] => {
                    let scenario_file = root.join(dir).join(format!("{scenario}.toml"));
                    if !testbed::scenario::load(&scenario_file).unwrap().runs_on(&variant) {
                        problems.push(format!("snapshots/{dir_name}/{name}: {dir}/{scenario}.toml does not run on {variant}"));
                    }
                }
                _ => problems.push(format!(
                    "snapshots/{dir_name}/{name}: {scenario}.toml is in both {}: one snapshot cannot serve two scenarios",
                    found.join(" and ")
                )),
            }
            let text = std::fs::read_to_string(file.path()).unwrap();
            // insta's format: a metadata block between `---` lines, then the body.
            let body = text
                .strip_prefix("---\n")
                .and_then(|rest| rest.split_once("\n---\n"))
                .map(|(_, b)| b);
            match body {
                Some(body) if body.trim_start().starts_with(&format!("{scenario}:")) => {}
                _ => problems.push(format!(
                    "snapshots/{dir_name}/{name}: no report body for {scenario}"
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!("{seen} snapshot files checked");
}
