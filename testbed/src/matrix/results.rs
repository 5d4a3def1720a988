//! The matrix's results directory. Its layout is stable (CI uploads it,
//! people and scripts read it):
//!
//! ```text
//! <root>/report.json  junit.xml  summary.md
//! <root>/<kernel>/<variant>/<scenario>/   one per cell:
//!     result.json      verdict, time, details, what it ran on (always)
//!     report.txt       the normalized report, as snapshots hold it
//!     report.json      the machine-readable report
//!     diff.txt         snapshot -> report, when they differ
//!     console.log  qmp.log  qemu-stderr.log   its boot's logs, when it failed
//! <root>/boots/<kernel>/<variant>/boot-N/  console.log qmp.log qemu-stderr.log
//! ```
//!
//! `<kernel>` is the spec as given with `:` and `/` made safe
//! (`debian:7` -> `debian-7`), so a directory keeps its name when `debian:7`
//! starts resolving to a newer release; `result.json` says which release ran.
//!
//! Nothing is ever half written: a cell directory is filled under a
//! temporary name and renamed into place; a boot writes into a temporary
//! directory that becomes `boot-N` when the boot is over, and is removed if
//! the matrix is interrupted.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{MatrixCell, MatrixOutcome};
use crate::run::{write_atomically, RunOptions};
use crate::scenario::Scenario;
use crate::variant::Variant;

/// `debian:6.12` -> `debian-6.12`; anything but letters, digits, `.`, `_`
/// and `-` becomes `-`.
pub fn kernel_dir(spec: &str) -> String {
    let mut out = String::new();
    for c in spec.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            c
        } else {
            '-'
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out.trim_matches('-').to_owned()
}

pub fn cell_dir(kernel: &str, variant: &str, scenario: &str) -> PathBuf {
    PathBuf::from(kernel_dir(kernel))
        .join(variant)
        .join(scenario)
}

pub fn boot_dir(kernel: &str, variant: &str, index: usize) -> PathBuf {
    PathBuf::from("boots")
        .join(kernel_dir(kernel))
        .join(variant)
        .join(format!("boot-{index}"))
}

/// The directory a boot writes its logs into while it runs: a temporary
/// sibling of its final place, removed on drop unless [`finish`](Self::finish)ed.
pub struct LiveBootDir {
    dir: tempfile::TempDir,
}

impl LiveBootDir {
    pub fn create(root: &Path, boot_dir: &Path) -> std::io::Result<LiveBootDir> {
        let parent = root.join(boot_dir.parent().unwrap_or(Path::new("")));
        std::fs::create_dir_all(&parent)?;
        let name = boot_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{name}.running-"))
            .tempdir_in(&parent)?;
        Ok(LiveBootDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Moves the logs to `dest`, replacing an older boot's.
    pub fn finish(self, dest: &Path) -> std::io::Result<()> {
        let live = self.dir.keep();
        replace_dir(&live, dest).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&live);
        })
    }
}

/// Renames `from` to `to`, removing what was at `to` first.
fn replace_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        // Move the old one aside first, so `to` is never half deleted.
        let parent = to.parent().unwrap_or(Path::new("."));
        let old = tempfile::Builder::new()
            .prefix(".old-")
            .tempdir_in(parent)?;
        std::fs::rename(to, old.path().join("x"))?;
    }
    std::fs::rename(from, to)
}

/// What a passing cell depends on; `--resume` skips a cell only when this
/// is unchanged. Hex SHA-256 over the resolved kernel, the variant, the
/// scenario file, its snapshot, the settings that change a run, the
/// patched QEMU (if the variant runs it) and the testbed's version.
pub fn fingerprint(
    kernel_description: &str,
    variant: &Variant,
    scenario: &Scenario,
    snapshots: &Path,
    options: &RunOptions,
    patched_qemu: Option<&images::QemuBuild>,
) -> String {
    let mut h = Sha256::new();
    let snapshot = crate::report::snapshot_file(snapshots, variant.name, &scenario.name);
    let append = options.append.join(" ");
    let parts: [&[u8]; 9] = [
        env!("CARGO_PKG_VERSION").as_bytes(),
        kernel_description.as_bytes(),
        variant.name.as_bytes(),
        &std::fs::read(&scenario.path).unwrap_or_default(),
        &std::fs::read(snapshot).unwrap_or_default(),
        options.accel.name().as_bytes(),
        append.as_bytes(),
        if options.bzimage { b"bzimage" } else { b"pvh" },
        patched_qemu
            .map(|q| q.description.as_str())
            .unwrap_or("")
            .as_bytes(),
    ];
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the cell at `dir` passed in an earlier run with this
/// fingerprint; then its time (if it had one).
pub fn passed_before(root: &Path, dir: &Path, fingerprint: &str) -> Option<Option<f64>> {
    let text = std::fs::read(root.join(dir).join("result.json")).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let passed = json["passed"].as_bool() == Some(true);
    (passed && json["fingerprint"].as_str() == Some(fingerprint)).then(|| json["seconds"].as_f64())
}

pub fn cell_json(cell: &MatrixCell) -> serde_json::Value {
    serde_json::json!({
        "kernel": cell.kernel,
        "kernel_release": cell.kernel_release,
        "variant": cell.variant,
        "scenario": cell.scenario,
        "result": cell.result.label(),
        "passed": cell.result.passed(),
        "expected": cell.result.expected(),
        "seconds": cell.seconds,
        "detail": cell.detail,
        "dir": cell.dir,
    })
}

/// Writes the cell's directory (see the module docs) in one rename. Errors
/// are reported on stderr and leave no directory: the cell's verdict is
/// already in the run's reports.
pub fn write_cell(
    root: &Path,
    cell: &MatrixCell,
    boot_logs: Option<&Path>,
    fingerprint: Option<&str>,
) {
    if let Err(e) = try_write_cell(root, cell, boot_logs, fingerprint) {
        eprintln!("error: writing {}: {e}", root.join(&cell.dir).display());
    }
}

fn try_write_cell(
    root: &Path,
    cell: &MatrixCell,
    boot_logs: Option<&Path>,
    fingerprint: Option<&str>,
) -> std::io::Result<()> {
    let dest = root.join(&cell.dir);
    let parent = dest.parent().unwrap_or(root);
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.writing-", cell.scenario))
        .tempdir_in(parent)?;
    let mut result = cell_json(cell);
    // Only a judged cell can be resumed: its fingerprint says what it ran.
    if let Some(f) = fingerprint {
        result["fingerprint"] = f.into();
    }
    std::fs::write(
        tmp.path().join("result.json"),
        serde_json::to_vec_pretty(&result)?,
    )?;
    if let Some(report) = &cell.report {
        let header = format!(
            "# {} on {}, kernel {} ({}), qemu {}\n\n",
            cell.scenario,
            cell.variant,
            cell.kernel,
            report.header.kernel_release,
            report.header.qemu_version
        );
        std::fs::write(tmp.path().join("report.txt"), header + &report.body())?;
        std::fs::write(
            tmp.path().join("report.json"),
            serde_json::to_vec_pretty(&report.to_json())?,
        )?;
    }
    if let Some(diff) = &cell.diff {
        std::fs::write(tmp.path().join("diff.txt"), diff)?;
    }
    if !cell.result.passed() {
        if let Some(logs) = boot_logs {
            for name in ["console.log", "qmp.log", "qemu-stderr.log"] {
                let from = logs.join(name);
                let to = tmp.path().join(name);
                if from.exists() && std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to)?;
                }
            }
        }
    }
    let filled = tmp.keep();
    replace_dir(&filled, &dest).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&filled);
    })
}

/// Writes `report.json`, `junit.xml` and `summary.md` at the root, each
/// atomically; returns their paths.
pub fn write_reports(root: &Path, outcome: &MatrixOutcome) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(root)?;
    let files = [
        (
            "report.json",
            serde_json::to_string_pretty(&super::output::json(outcome))?,
        ),
        ("junit.xml", super::output::junit(outcome, root)),
        ("summary.md", super::output::markdown(outcome, root)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = root.join(name);
        write_atomically(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dirs_are_safe_and_stable() {
        assert_eq!(kernel_dir("debian:6.12"), "debian-6.12");
        assert_eq!(kernel_dir("debian:7"), "debian-7");
        assert_eq!(
            kernel_dir("path:/boot/vmlinuz-6.1,modules=/lib/m"),
            "path-boot-vmlinuz-6.1-modules-lib-m"
        );
        assert_eq!(
            cell_dir("debian:7", "amd-ir", "edu-l2-ipi"),
            PathBuf::from("debian-7/amd-ir/edu-l2-ipi")
        );
        assert_eq!(
            boot_dir("debian:7", "amd-ir", 0),
            PathBuf::from("boots/debian-7/amd-ir/boot-0")
        );
    }

    #[test]
    fn a_boot_directory_is_renamed_into_place_or_removed() {
        let root = tempfile::tempdir().unwrap();
        let rel = boot_dir("debian:7", "amd-ir", 0);
        let live = LiveBootDir::create(root.path(), &rel).unwrap();
        std::fs::write(live.path().join("console.log"), "old").unwrap();
        live.finish(&root.path().join(&rel)).unwrap();
        let live = LiveBootDir::create(root.path(), &rel).unwrap();
        std::fs::write(live.path().join("console.log"), "new").unwrap();
        live.finish(&root.path().join(&rel)).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join(&rel).join("console.log")).unwrap(),
            "new"
        );
        // Interrupted: dropped before finishing leaves nothing behind.
        let live = LiveBootDir::create(root.path(), &boot_dir("debian:7", "amd-ir", 1)).unwrap();
        std::fs::write(live.path().join("console.log"), "partial").unwrap();
        drop(live);
        let names: Vec<String> = std::fs::read_dir(root.path().join("boots/debian-7/amd-ir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["boot-0"]);
    }
}
