//! Comparing a report body against `<root>/<variant>/<scenario>.snap` with
//! insta's own runtime, so that `cargo insta review|accept|reject` and the
//! `INSTA_*` environment variables work as for any insta test.
//!
//! How insta is driven:
//! - the assertion runs under an [`insta::Settings`] with an absolute
//!   `snapshot_path` (`<root>/<variant>`), no module prefix, no expression,
//!   the scenario description, and `info` = header and platform facts (not
//!   compared);
//! - the workspace handed to insta is `INSTA_WORKSPACE_ROOT` when set, else the
//!   nearest ancestor of the snapshot directory with a `Cargo.toml` holding
//!   `[workspace]`, else the nearest with `.git`, else the snapshot root: insta
//!   reads its config (`insta.yaml`, `.config/insta.yaml`) there and resolves
//!   `INSTA_PENDING_DIR` against it. No environment variable is set and no
//!   `cargo metadata` runs, so the binary works from any directory;
//! - insta panics on a failed assertion; the panic is caught with a panic hook
//!   that stays quiet for this thread only, so the user sees insta's diff and
//!   not a backtrace. A custom comparator records whether the bodies matched.
//!
//! What insta then writes: on a mismatch or a new snapshot,
//! `<scenario>.snap.new` next to the `.snap` (the `.snap` itself is not
//! touched), except with `CI` set or `INSTA_UPDATE=no` (nothing written);
//! with `INSTA_UPDATE=always` it rewrites `<scenario>.snap` in place (plain
//! `fs::write`: truncate then write, so not atomic against a crash).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use insta::{Comparator, DefaultComparator, Snapshot};

use super::Report;

/// How a report compared with its stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// The body equals the stored snapshot.
    Matched,
    /// No snapshot was stored. insta wrote `<scenario>.snap.new` (under CI
    /// nothing).
    New,
    /// No snapshot was stored and insta stored this report as the snapshot
    /// (`INSTA_UPDATE=always`, or `INSTA_FORCE_PASS`).
    Accepted,
    /// The body differs from the stored snapshot, or the stored snapshot
    /// could not be read, or insta could not write its files (`error`).
    Mismatched {
        /// Unified diff, stored snapshot (`-`) to this report (`+`).
        diff: String,
        /// insta accepted the new body in place (`INSTA_UPDATE=always`) or
        /// was told to pass (`INSTA_FORCE_PASS`).
        accepted: bool,
        /// What went wrong besides the difference, if anything.
        error: Option<String>,
    },
}

/// `<root>/<variant>/<scenario>.snap`.
pub fn snapshot_file(snapshot_root: &Path, variant: &str, scenario: &str) -> PathBuf {
    snapshot_root.join(variant).join(format!("{scenario}.snap"))
}

/// The workspace root insta is given for snapshots under `dir`.
pub fn workspace_root(dir: &Path) -> PathBuf {
    if let Some(root) = std::env::var_os("INSTA_WORKSPACE_ROOT") {
        return PathBuf::from(root);
    }
    let dir = absolute(dir);
    for a in dir.ancestors() {
        let manifest = a.join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            if text.lines().any(|l| l.trim() == "[workspace]") {
                return a.to_path_buf();
            }
        }
    }
    for a in dir.ancestors() {
        if a.join(".git").exists() {
            return a.to_path_buf();
        }
    }
    dir
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Serializes comparisons: insta's settings are per thread, but the panic
/// hook and the snapshot files are shared.
static LOCK: Mutex<()> = Mutex::new(());

/// The first reason insta failed an assertion with.
const INSTA_FAILED: &str = "snapshot assertion for";

/// Compare `report.body()` with `snapshot_root/<variant>/<scenario>.snap`
/// through insta (see the module docs for what insta writes).
/// Where a report's snapshot lives: `<variant>@<major.minor>/` when that
/// kernel line has its own snapshot of the scenario (its behaviour really
/// differs from the others'), else `<variant>/`, which holds for every
/// kernel.
pub fn snapshot_dir(root: &Path, variant: &str, scenario: &str, kernel_release: &str) -> PathBuf {
    if let Some(line) = kernel_line(kernel_release) {
        let own = root.join(format!("{variant}@{line}"));
        if own.join(format!("{scenario}.snap")).exists() {
            return own;
        }
    }
    root.join(variant)
}

/// `6.16.12+deb13-amd64` -> `6.16`.
pub fn kernel_line(release: &str) -> Option<String> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().filter(|p| !p.is_empty())?;
    let minor = parts.next().filter(|p| !p.is_empty())?;
    Some(format!("{major}.{minor}"))
}

pub fn compare_snapshot(
    snapshot_root: &Path,
    variant: &str,
    scenario: &str,
    report: &Report,
) -> SnapshotOutcome {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = snapshot_dir(
        &absolute(snapshot_root),
        variant,
        scenario,
        &report.header.kernel_release,
    );
    let snap = dir.join(format!("{scenario}.snap"));
    let existed = snap.exists();
    let old_body = if existed {
        Snapshot::from_file(&snap)
            .ok()
            .and_then(|s| s.contents().as_text().map(|t| t.to_string()))
    } else {
        None
    };
    let workspace = workspace_root(&dir);
    let body = report.body();

    let verdict: Arc<Mutex<Option<bool>>> = Arc::default();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(&dir);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_description(report.scenario.description.clone());
    settings.set_raw_info(&report.info());
    settings.set_input_file(absolute(&report.scenario.path));
    settings.set_comparator(Box::new(Recording {
        verdict: verdict.clone(),
    }));

    let result = quietly(|| {
        settings.bind(|| {
            insta::_macro_support::assert_snapshot(
                (scenario, body.as_str()).into(),
                &workspace,
                "testbed::report::compare_snapshot",
                module_path!(),
                file!(),
                line!(),
                "report.body()",
            )
            .map_err(|e| e.to_string())
        })
    });

    let matched = *verdict.lock().unwrap_or_else(|e| e.into_inner());
    let (failed, error) = match result {
        Ok(Ok(())) => (false, None),
        Ok(Err(e)) => (true, Some(e)),
        Err(message) if message.starts_with(INSTA_FAILED) => (true, None),
        Err(message) => (true, Some(message)),
    };
    match (matched, existed) {
        (Some(true), _) => SnapshotOutcome::Matched,
        (_, false) if error.is_none() && failed => SnapshotOutcome::New,
        (_, false) if error.is_none() => SnapshotOutcome::Accepted,
        _ => {
            let error = match (error, existed, &old_body) {
                (Some(e), _, _) => Some(e),
                (None, true, None) => Some(format!("cannot read {}", snap.display())),
                (None, _, _) => None,
            };
            SnapshotOutcome::Mismatched {
                diff: unified_diff(old_body.as_deref().unwrap_or(""), &body),
                accepted: !failed,
                error,
            }
        }
    }
}

/// Wraps insta's default comparison and remembers its answer.
struct Recording {
    verdict: Arc<Mutex<Option<bool>>>,
}

impl Recording {
    fn record(&self, matched: bool) -> bool {
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(matched);
        matched
    }
}

impl Comparator for Recording {
    fn matches(&self, reference: &Snapshot, test: &Snapshot) -> bool {
        self.record(DefaultComparator.matches(reference, test))
    }

    fn matches_fully(&self, reference: &Snapshot, test: &Snapshot) -> bool {
        self.record(DefaultComparator.matches_fully(reference, test))
    }

    fn dyn_clone(&self) -> Box<dyn Comparator> {
        Box::new(Recording {
            verdict: self.verdict.clone(),
        })
    }
}

type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Run `f`, catching a panic; the panic hook stays quiet for this thread
/// while other threads keep the previous hook. Returns the panic message.
fn quietly<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let me = std::thread::current().id();
    let previous: Arc<Hook> = Arc::new(std::panic::take_hook());
    let chained = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            chained(info);
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(std::panic::take_hook());
    match Arc::try_unwrap(previous) {
        Ok(hook) => std::panic::set_hook(hook),
        Err(shared) => std::panic::set_hook(Box::new(move |info| shared(info))),
    }
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string())
    })
}

fn unified_diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header("snapshot", "report")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_line_snapshot_overrides_the_variant_one() {
        assert_eq!(kernel_line("6.16.12+deb13-amd64").as_deref(), Some("6.16"));
        assert_eq!(kernel_line("7.2.13+deb14-amd64").as_deref(), Some("7.2"));
        assert_eq!(kernel_line("6.1.0-50-amd64").as_deref(), Some("6.1"));
        assert_eq!(kernel_line("weird"), None);
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("intel-ir@6.16");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("a.snap"), "").unwrap();
        assert_eq!(
            snapshot_dir(root.path(), "intel-ir", "a", "6.16.12+deb13-amd64"),
            own
        );
        assert_eq!(
            snapshot_dir(root.path(), "intel-ir", "b", "6.16.12+deb13-amd64"),
            root.path().join("intel-ir")
        );
        assert_eq!(
            snapshot_dir(root.path(), "intel-ir", "a", "6.17.13+deb13-amd64"),
            root.path().join("intel-ir")
        );
    }
}
