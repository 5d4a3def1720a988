//! `testbed run` and `testbed bench`: resolve inputs, plan boots, run them,
//! compare reports, print a table, choose the exit code.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::plan;
use crate::qemu::{Accel, BootConfig};
use crate::report::{self, Report, SnapshotOutcome};
use crate::runner::{self, BootOutcome, Timeouts};
use crate::scenario::{self, Scenario};
use crate::ui::Ui;
use crate::variant::{UnknownVariant, Variant};

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_SKIP: u8 = 125;

#[derive(Clone)]
pub struct RunOptions {
    pub paths: Vec<PathBuf>,
    pub variants: Vec<&'static Variant>,
    pub kernel: images::KernelSpec,
    pub json: Option<PathBuf>,
    pub fresh_boot: bool,
    pub step_timeout: Duration,
    pub boot_timeout: Duration,
    pub accel: Accel,
    pub qemu: PathBuf,
    /// Source of the patched QEMU (patched variants): a QEMU checkout
    /// instead of the pinned Debian source.
    pub qemu_tree: Option<PathBuf>,
    pub append: Vec<String>,
    /// Boot the bzImage as it is instead of its uncompressed PVH ELF.
    pub bzimage: bool,
    pub results: Option<PathBuf>,
    pub snapshots: Option<PathBuf>,
}

/// Bad command-line input: exit 2.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Variant(UnknownVariant),
    #[error(transparent)]
    Kernel(images::ImagesError),
}

pub fn usage_error(e: &InputError) -> u8 {
    eprintln!("error: {e}");
    EXIT_USAGE
}

/// The verdict for one scenario on one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Report matched the snapshot and every check passed.
    Pass,
    /// No snapshot yet: written as `.snap.new` for review.
    New,
    /// The report differed or was new, and insta stored it as the snapshot
    /// (INSTA_UPDATE=always): passes, as in insta.
    Accepted,
    Mismatch,
    ChecksFailed,
    /// The scenario could not run to its end (guest panic, hang, QEMU died).
    Broken,
    /// The kernel did not boot to the agent.
    NoBoot,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::New => "NEW SNAPSHOT",
            Verdict::Accepted => "ACCEPTED",
            Verdict::Mismatch => "MISMATCH",
            Verdict::ChecksFailed => "CHECK FAILED",
            Verdict::Broken => "BROKEN",
            Verdict::NoBoot => "NO BOOT",
        }
    }
}

pub struct Cell {
    pub scenario: String,
    pub variant: &'static str,
    pub verdict: Verdict,
    pub detail: Vec<String>,
    pub report: Option<Report>,
}

/// Everything a run needs once the inputs are valid.
struct Prepared {
    /// What QEMU's -kernel gets: the PVH ELF when the kernel has one (its
    /// self-decompression is most of a TCG boot), else the bzImage.
    boot_image: PathBuf,
    scenarios: Vec<Scenario>,
    kernel: images::Kernel,
    initrd: PathBuf,
    snapshots: PathBuf,
    results: PathBuf,
    runtime: tempfile::TempDir,
    /// Built when a variant needs the patched QEMU.
    patched_qemu: Option<images::QemuBuild>,
}

/// Loads scenarios, fetches the kernel, builds the initramfs. Errors carry the exit code.
fn prepare(options: &RunOptions, ui: &Ui) -> Result<Prepared, u8> {
    let scenarios = scenario::load_paths(&options.paths).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_USAGE
    })?;
    if scenarios.is_empty() {
        eprintln!("error: no scenario files in {}", display_paths(&options.paths));
        return Err(EXIT_USAGE);
    }
    let project = project_dir(&scenarios[0].path);
    let snapshots = options.snapshots.clone().unwrap_or_else(|| project.join("snapshots"));
    let results = options.results.clone().unwrap_or_else(|| project.join("results"));
    let cache = images::Cache::default_location();
    let kernel = tokio::task::block_in_place(|| {
        images::resolve_kernel(&cache, &options.kernel, &mut |p| ui.images(p))
    })
    .map_err(|e| {
        eprintln!("error: kernel {}: {e}", options.kernel);
        if e.is_bad_input() {
            EXIT_USAGE
        } else {
            EXIT_SKIP
        }
    })?;
    let runtime = tempfile::Builder::new().prefix("testbed-").tempdir().map_err(|e| {
        eprintln!("error: cannot create a runtime directory: {e}");
        EXIT_SKIP
    })?;
    let agent = crate::agent::write_to(runtime.path()).map_err(|e| {
        eprintln!("error: cannot write the agent: {e}");
        EXIT_SKIP
    })?;
    let pvh = if options.bzimage {
        None
    } else {
        tokio::task::block_in_place(|| images::pvh_kernel(&cache, &kernel, &mut |p| ui.images(p))).map_err(|e| {
            eprintln!("error: kernel {}: {e}", kernel.release);
            EXIT_SKIP
        })?
    };
    let boot_image = pvh.unwrap_or_else(|| kernel.bzimage.clone());
    let busybox = PathBuf::from("/bin/busybox");
    let modules = guest_modules(options.accel);
    let spec = images::InitramfsSpec { kernel: &kernel, modules: &modules, agent: &agent, busybox: &busybox };
    let initrd =
        tokio::task::block_in_place(|| images::build_initramfs(&cache, &spec, &mut |p| ui.images(p))).map_err(|e| {
            eprintln!("error: initramfs for {}: {e}", kernel.release);
            EXIT_SKIP
        })?;
    let patched_qemu = if options.variants.iter().any(|v| v.qemu == crate::variant::QemuKind::Patched) {
        let spec = crate::qemu::patched_qemu_spec(&project, options.qemu_tree.as_deref());
        let build = tokio::task::block_in_place(|| images::build_qemu(&cache, &spec, &mut |p| ui.images(p)))
            .map_err(|e| {
                eprintln!("error: patched qemu: {e}");
                if e.is_bad_input() {
                    EXIT_USAGE
                } else {
                    EXIT_SKIP
                }
            })?;
        ui.line(&format!("patched qemu: {}", build.description));
        Some(build)
    } else {
        None
    };
    Ok(Prepared { boot_image, scenarios, kernel, initrd, snapshots, results, runtime, patched_qemu })
}

/// Modules the agent loads in the guest (their dependencies come along).
/// Only the KVM vendor module the guest CPU can run: under TCG `-cpu max`
/// is an AMD CPU with SVM; under KVM the guest CPU is the host's.
pub fn guest_modules(accel: Accel) -> Vec<&'static str> {
    let vendor = match accel {
        Accel::Tcg => "kvm_amd",
        Accel::Kvm => {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            if cpuinfo.contains("GenuineIntel") {
                "kvm_intel"
            } else {
                "kvm_amd"
            }
        }
    };
    vec![vendor, "vfio_pci", "vfio_iommu_type1", "irqbypass", "pvpanic_mmio"]
}

pub async fn run(options: RunOptions) -> u8 {
    let ui = Ui::new();
    let prepared = match prepare(&options, &ui) {
        Ok(p) => p,
        Err(code) => {
            ui.finish();
            return code;
        }
    };
    let mut cells = Vec::new();
    let mut boots = Vec::new();
    for variant in &options.variants {
        let (here, elsewhere): (Vec<&Scenario>, Vec<&Scenario>) =
            prepared.scenarios.iter().partition(|s| s.runs_on(variant.name));
        for scenario in elsewhere {
            ui.line(&format!(
                "{:<14} {:<32} not run: the scenario names its variants ({})",
                variant.name,
                scenario.name,
                scenario.variants.as_deref().unwrap_or_default().join(", ")
            ));
        }
        let here: Vec<Scenario> = here.into_iter().cloned().collect();
        for (i, group) in plan::group(&here, options.fresh_boot).iter().enumerate() {
            let outcome = match boot(&options, &prepared, variant, i, &group.scenarios, &group.devices, &ui).await {
                Ok(outcome) => outcome,
                Err(message) => {
                    eprintln!("error: {message}");
                    ui.finish();
                    return EXIT_SKIP;
                }
            };
            for scenario in &group.scenarios {
                let cell = judge(&prepared, variant, scenario, &outcome);
                ui.line(&format!("{:<14} {:<32} {}", variant.name, scenario.name, cell.verdict.label()));
                cells.push(cell);
            }
            boots.push((variant.name, outcome));
        }
    }
    ui.finish();
    if cells.is_empty() {
        eprintln!("error: none of the selected scenarios runs on the selected variants");
        return EXIT_USAGE;
    }
    print_table(&cells);
    if let Some(path) = &options.json {
        if let Err(e) = write_json(path, &prepared, &cells, &boots) {
            eprintln!("error: writing {}: {e}", path.display());
            return EXIT_FAILED;
        }
    }
    exit_code(&cells)
}

async fn boot(
    options: &RunOptions,
    prepared: &Prepared,
    variant: &'static Variant,
    index: usize,
    scenarios: &[&Scenario],
    devices: &[crate::qemu::PciDevice],
    ui: &Ui,
) -> Result<BootOutcome, String> {
    let log_dir = prepared.results.join(variant.name).join(format!("boot-{index}"));
    let runtime_dir = prepared.runtime.path().join(format!("{}-{index}", variant.name));
    for dir in [&log_dir, &runtime_dir] {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let (qemu, data_dirs) = crate::qemu::qemu_for(variant, &options.qemu, prepared.patched_qemu.as_ref());
    let cfg = BootConfig {
        qemu,
        data_dirs,
        variant,
        accel: options.accel,
        kernel: prepared.boot_image.clone(),
        initrd: prepared.initrd.clone(),
        extra_cmdline: options.append.clone(),
        devices: devices.to_vec(),
        memory_mib: 1024,
        runtime_dir,
        console_log: log_dir.join("console.log"),
    };
    let timeouts = Timeouts { boot: options.boot_timeout, step: options.step_timeout, shutdown: Duration::from_secs(30) };
    Ok(runner::run_boot(&cfg, scenarios, timeouts, &mut |e| ui.run(e)).await)
}

/// Builds the report of one scenario run, checks it and compares it.
fn judge(prepared: &Prepared, variant: &'static Variant, scenario: &Scenario, outcome: &BootOutcome) -> Cell {
    let mut cell = Cell {
        scenario: scenario.name.clone(),
        variant: variant.name,
        verdict: Verdict::Pass,
        detail: Vec::new(),
        report: None,
    };
    let run = outcome.runs.iter().find(|r| r.scenario == scenario.name);
    let (Some(ready), Some(run)) = (&outcome.ready, run) else {
        cell.verdict = Verdict::NoBoot;
        let why = outcome.failure.as_ref().map(|f| f.message.as_str()).unwrap_or("the guest did not boot");
        cell.detail.push(format!("{why}\n    console log: {}", outcome.console_log.display()));
        return cell;
    };
    let header = report::Header {
        variant: variant.name.to_owned(),
        kernel_release: ready.platform.kernel_release.clone(),
        qemu_version: outcome.qemu_version.clone(),
    };
    let report = Report::new(scenario, header, &ready.platform, run);
    for check in report.checks() {
        if !check.passed {
            cell.verdict = Verdict::ChecksFailed;
            cell.detail.push(format!("check {} failed: {}", check.expectation, check.detail));
        }
    }
    if let Some(failure) = &run.failure {
        cell.verdict = Verdict::Broken;
        cell.detail.push(format!("{failure}\n    console log: {}", outcome.console_log.display()));
    }
    match report::compare_snapshot(&prepared.snapshots, variant.name, &scenario.name, &report) {
        SnapshotOutcome::Matched => {}
        SnapshotOutcome::New => {
            if cell.verdict == Verdict::Pass {
                cell.verdict = Verdict::New;
            }
            cell.detail.push(format!(
                "no snapshot at {}: review with `cargo insta review`",
                prepared.snapshots.join(variant.name).join(format!("{}.snap", scenario.name)).display()
            ));
        }
        SnapshotOutcome::Accepted | SnapshotOutcome::Mismatched { accepted: true, error: None, .. } => {
            if cell.verdict == Verdict::Pass {
                cell.verdict = Verdict::Accepted;
            }
        }
        SnapshotOutcome::Mismatched { .. } => {
            if cell.verdict == Verdict::Pass {
                cell.verdict = Verdict::Mismatch;
            }
            cell.detail.push("report differs from the snapshot (diff above); review with `cargo insta review`".into());
        }
    }
    cell.report = Some(report);
    cell
}

fn exit_code(cells: &[Cell]) -> u8 {
    if cells.iter().any(|c| c.verdict == Verdict::NoBoot) {
        EXIT_SKIP
    } else if cells.iter().all(|c| matches!(c.verdict, Verdict::Pass | Verdict::Accepted)) {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

fn print_table(cells: &[Cell]) {
    println!();
    println!("{:<32} {:<14} RESULT", "SCENARIO", "VARIANT");
    for cell in cells {
        println!("{:<32} {:<14} {}", cell.scenario, cell.variant, cell.verdict.label());
        for line in &cell.detail {
            println!("    {line}");
        }
    }
    let passed = cells.iter().filter(|c| matches!(c.verdict, Verdict::Pass | Verdict::Accepted)).count();
    println!();
    println!("{passed} passed, {} failed", cells.len() - passed);
}

fn write_json(
    path: &Path,
    prepared: &Prepared,
    cells: &[Cell],
    boots: &[(&'static str, BootOutcome)],
) -> std::io::Result<()> {
    let value = serde_json::json!({
        "kernel": prepared.kernel.description,
        "results": cells.iter().map(|c| serde_json::json!({
            "scenario": c.scenario,
            "variant": c.variant,
            "verdict": c.verdict.label(),
            "detail": c.detail,
            "report": c.report.as_ref().map(Report::to_json),
        })).collect::<Vec<_>>(),
        "boots": boots.iter().map(|(variant, b)| serde_json::json!({
            "variant": variant,
            "qemu_version": b.qemu_version,
            "console_log": b.console_log,
            "failure": b.failure.as_ref().map(|f| &f.message),
            "seconds": {
                "qemu_start": b.timings.qemu_start.as_secs_f64(),
                "boot_to_ready": b.timings.boot_to_ready.as_secs_f64(),
                "scenarios": b.timings.scenarios.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                "shutdown": b.timings.shutdown.as_secs_f64(),
            },
        })).collect::<Vec<_>>(),
    });
    write_atomically(path, serde_json::to_string_pretty(&value)?.as_bytes())
}

/// Writes through a temporary file in the same directory and renames it, so
/// an interrupted run never leaves half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The directory holding `scenarios/`, `snapshots/` and `results/`: the
/// parent of the scenario file's directory.
fn project_dir(scenario_path: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(scenario_path).unwrap_or_else(|_| scenario_path.to_path_buf());
    absolute.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

pub fn list_kernels() -> u8 {
    let ui = Ui::new();
    let cache = images::Cache::default_location();
    let kernels = images::list_debian_kernels(&cache, &mut |p| ui.images(p));
    ui.finish();
    match kernels {
        Ok(kernels) => {
            for k in kernels {
                println!("debian:{}", k.version);
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SKIP
        }
    }
}

/// `testbed bench`: boots `iterations` times per variant on a warm cache and
/// prints the median of each phase, and the end-to-end interrupt rate of the
/// scenario's `fire` steps (interrupts raised per second of those steps'
/// wall time, as the host saw them: raise, delivery or accounting, report).
/// With several variants it also prints each rate as a ratio to the first.
pub async fn bench(options: RunOptions, iterations: usize) -> u8 {
    let ui = Ui::new();
    let prepared = match prepare(&options, &ui) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if options.variants.is_empty() {
        return EXIT_USAGE;
    }
    let scenario = &prepared.scenarios[0];
    let group = plan::group(std::slice::from_ref(scenario), true);
    let mut summaries = Vec::new();
    for variant in &options.variants {
        let mut phases: Vec<[f64; 5]> = Vec::new();
        let mut rates: Vec<f64> = Vec::new();
        let mut posted = 0u64;
        let mut raised = 0u64;
        for i in 0..iterations.max(1) {
            let started = Instant::now();
            let outcome =
                match boot(&options, &prepared, variant, i, &group[0].scenarios, &group[0].devices, &ui).await {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return EXIT_SKIP;
                    }
                };
            if let Some(f) = &outcome.failure {
                eprintln!("error: {} boot {i} failed: {}", variant.name, f.message);
                return EXIT_FAILED;
            }
            let t = &outcome.timings;
            phases.push([
                t.qemu_start.as_secs_f64(),
                t.boot_to_ready.as_secs_f64(),
                t.scenarios.iter().map(Duration::as_secs_f64).sum(),
                t.shutdown.as_secs_f64(),
                started.elapsed().as_secs_f64(),
            ]);
            for run in &outcome.runs {
                let (n, secs) = fire_rate(scenario, run);
                if secs > 0.0 {
                    rates.push(n as f64 / secs);
                }
                raised += n;
                if let Some(Ok(c)) = &run.iommu {
                    posted += c.posted;
                }
            }
        }
        summaries.push((variant.name, phases, rates, posted, raised));
    }
    ui.finish();
    let mut first_rate = None;
    for (name, phases, rates, posted, raised) in &summaries {
        println!(
            "bench: scenario {} on {} ({}, {}), {} boots, medians:",
            scenario.name,
            name,
            prepared.kernel.release,
            options.accel.name(),
            phases.len()
        );
        let names = ["qemu start", "kernel boot to agent ready", "scenario", "shutdown", "total"];
        for (i, label) in names.iter().enumerate() {
            let (median, min, max) = median_min_max(phases.iter().map(|p| p[i]).collect());
            println!("  {label:<28} {median:>7.3} s   (min {min:.3}, max {max:.3})");
        }
        if rates.is_empty() {
            println!("  {:<28} no fire step", "interrupts/s (fire steps)");
            continue;
        }
        let (median, min, max) = median_min_max(rates.clone());
        let ratio = match first_rate {
            None => {
                first_rate = Some((*name, median));
                String::new()
            }
            Some((first, rate)) => format!("   = {:.2} x {first}", median / rate),
        };
        println!("  {:<28} {median:>7.0}     (min {min:.0}, max {max:.0}){ratio}", "interrupts/s (fire steps)");
        if *raised > 0 {
            println!(
                "  {:<28} {posted} of {raised} raised ({:.0}%)",
                "posted by the IOMMU",
                *posted as f64 * 100.0 / *raised as f64
            );
        }
    }
    EXIT_OK
}

/// Interrupts raised by a run's `fire` steps and those steps' wall time (s).
pub fn fire_rate(scenario: &Scenario, run: &runner::ScenarioRun) -> (u64, f64) {
    let mut raised = 0u64;
    let mut secs = 0.0;
    for (i, step) in scenario.steps.iter().enumerate() {
        if let wire::Step::Fire { count, .. } = step {
            if let Some(t) = run.step_times.get(i) {
                raised += u64::from(*count);
                secs += t.as_secs_f64();
            }
        }
    }
    (raised, secs)
}

fn median_min_max(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

/// One boot of the single scenario of `options` on its first variant, for
/// bisects: the report (checks and snapshot are not judged) and the boot's
/// console log, or the exit code when there is none (2 bad input, 125 no
/// kernel or no boot).
pub async fn probe(options: &RunOptions, ui: &Ui) -> Result<(Report, PathBuf), u8> {
    let prepared = prepare(options, ui)?;
    let (Some(variant), [scenario]) = (options.variants.first(), prepared.scenarios.as_slice()) else {
        eprintln!("error: a probe runs one scenario on one variant");
        return Err(EXIT_USAGE);
    };
    if !scenario.runs_on(variant.name) {
        eprintln!("error: {} does not run on {}", scenario.name, variant.name);
        return Err(EXIT_USAGE);
    }
    let group = plan::group(std::slice::from_ref(scenario), true);
    let outcome = boot(options, &prepared, variant, 0, &group[0].scenarios, &group[0].devices, ui).await.map_err(|e| {
        eprintln!("error: {e}");
        EXIT_SKIP
    })?;
    let run = outcome.runs.iter().find(|r| r.scenario == scenario.name);
    let (Some(ready), Some(run)) = (&outcome.ready, run) else {
        let why = outcome.failure.as_ref().map(|f| f.message.as_str()).unwrap_or("the guest did not boot");
        eprintln!("error: {}: {why} (console log: {})", prepared.kernel.release, outcome.console_log.display());
        return Err(EXIT_SKIP);
    };
    let header = report::Header {
        variant: variant.name.to_owned(),
        kernel_release: ready.platform.kernel_release.clone(),
        qemu_version: outcome.qemu_version.clone(),
    };
    Ok((Report::new(scenario, header, &ready.platform, run), outcome.console_log.clone()))
}
