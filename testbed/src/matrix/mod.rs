//! `testbed matrix`: scenarios x variants x kernels in one command.
//!
//! Built on `testbed run`'s pieces: [`run::prepare_kernel`] per kernel,
//! [`plan::group`] per (kernel, variant) pair so its scenarios share one L1
//! boot, [`run::boot`] and [`run::judge`] per boot. Up to `-j` boots run
//! at once (a TCG guest keeps about one host core busy: even on amd-avic's
//! two vCPUs, the second mostly halts), longest first. A kernel that cannot be fetched, or a
//! patched QEMU that cannot be built, turns its cells into errors; the rest
//! of the matrix runs on.
//!
//! Results directory (stable, see [`results`]):
//! `<root>/<kernel>/<variant>/<scenario>/` per cell, `<root>/boots/...` per
//! boot, and `report.json`, `junit.xml`, `summary.md` at the top.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::plan;
use crate::qemu::Accel;
use crate::report::Report;
use crate::run::{self, KernelImages, RunOptions, Verdict};
use crate::scenario::Scenario;
use crate::variant::{self, QemuKind, Variant};

pub mod file;
pub(crate) mod output;
mod progress;
pub mod results;
pub mod shard;

pub use output::{junit, markdown};
pub use shard::Shard;

use progress::MatrixUi;

/// One kernel from each line that matters for irqbypass: 6.12 (long-term),
/// 6.16 (the last with the list-based registry), 6.17 (the first with the
/// xarray), and the newest 7.x; each resolved to the newest available
/// release of its line when the matrix runs.
pub const DEFAULT_KERNELS: [&str; 4] = ["debian:6.12", "debian:6.16", "debian:6.17", "debian:7"];

#[derive(clap::Args, Debug)]
pub struct MatrixArgs {
    /// Scenario files or directories (default: the matrix file's, else scenarios/)
    pub paths: Vec<PathBuf>,
    /// Matrix file (kernels, variants, scenarios); flags override its axes
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Kernel spec (repeatable); default: the matrix file's, else one per
    /// line that matters (debian:6.12, 6.16, 6.17, 7)
    #[arg(long = "kernel", short = 'k')]
    pub kernels: Vec<String>,
    /// Variant (repeatable); default: the matrix file's, else the default variants
    #[arg(long = "variant", short = 'V')]
    pub variants: Vec<String>,
    /// Host CPUs for guests at once (default: all the machine has)
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Run only part I of N of the (kernel, variant) pairs, e.g. 2/4
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Print the CI matrix of shards instead of running
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// Shards for --emit (default: one per (kernel, variant) pair)
    #[arg(long, requires = "emit")]
    pub shards: Option<usize>,
    /// Results directory (default: results/matrix beside scenarios/)
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Skip cells that passed in the results directory with the same kernel,
    /// scenario, snapshot and settings
    #[arg(long)]
    pub resume: bool,
    /// Run the matrix with -j 1 and then -j N (temporary results) and print both wall times
    #[arg(long, conflicts_with_all = ["resume", "emit"])]
    pub bench: bool,
    /// Give every scenario its own boot (by default each starts from an L1
    /// restored from a saved state)
    #[arg(long, conflicts_with = "share_boots")]
    pub fresh_boot: bool,
    /// Scenarios that agree on devices share one boot, instead of each
    /// starting from a restored L1
    #[arg(long)]
    pub share_boots: bool,
    /// Seconds the agent may stay silent during a scenario
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Seconds from QEMU start to the agent being ready
    #[arg(long, default_value_t = 120)]
    pub boot_timeout: u64,
    /// Accelerator: auto picks KVM only on hosts with hardware virtualization
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// QEMU binary (stock variants)
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// QEMU checkout to build the patched QEMU from (patched variants)
    #[arg(long, value_name = "PATH")]
    pub qemu_tree: Option<PathBuf>,
    /// Boot the bzImage as it is instead of the uncompressed kernel
    #[arg(long)]
    pub bzimage: bool,
    /// Extra words for the guest kernel command line
    #[arg(long = "append")]
    pub append: Vec<String>,
    /// Snapshot directory (default: snapshots/ beside the scenarios' directory)
    #[arg(long)]
    pub snapshots: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Emit {
    /// `matrix=<json>` for $GITHUB_OUTPUT: one entry per shard
    Github,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AccelChoice {
    Auto,
    Tcg,
    Kvm,
}

/// What a matrix runs, inputs checked.
pub struct Matrix {
    pub kernels: Vec<images::KernelSpec>,
    pub variants: Vec<&'static Variant>,
    pub scenarios: Vec<Scenario>,
    pub scenario_paths: Vec<PathBuf>,
    /// From the matrix file's `[[known-failure]]` entries.
    pub known_failures: Vec<file::KnownFailure>,
}

/// A (kernel, variant) pair: the unit of sharding and of boot sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub kernel: usize,
    pub variant: &'static Variant,
}

impl Matrix {
    /// From the command line and the matrix file; errors are usage errors.
    pub fn resolve(args: &MatrixArgs) -> Result<Matrix, String> {
        let from_file = match &args.file {
            Some(path) => Some(file::load(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let kernels = if !args.kernels.is_empty() {
            args.kernels
                .iter()
                .map(|k| k.parse::<images::KernelSpec>().map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?
        } else if let Some(k) = from_file.as_ref().and_then(|f| f.kernels.clone()) {
            k
        } else {
            DEFAULT_KERNELS
                .iter()
                .map(|k| k.parse().expect("default kernel specs parse"))
                .collect()
        };
        let variants = if !args.variants.is_empty() {
            args.variants
                .iter()
                .map(|v| variant::lookup(v).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?
        } else if let Some(v) = from_file.as_ref().and_then(|f| f.variants.clone()) {
            v
        } else {
            variant::defaults().collect()
        };
        let scenario_paths = if !args.paths.is_empty() {
            args.paths.clone()
        } else if let Some(s) = from_file.as_ref().and_then(|f| f.scenarios.clone()) {
            s
        } else {
            vec![PathBuf::from("scenarios")]
        };
        for (what, dup) in [
            ("kernel", first_duplicate(&kernels)),
            ("variant", first_duplicate(&variants)),
        ] {
            if let Some(d) = dup {
                return Err(format!("{what} {d} given twice"));
            }
        }
        let scenarios = run::load_scenarios(&scenario_paths).map_err(|e| e.message)?;
        let known_failures = from_file.map(|f| f.known_failures).unwrap_or_default();
        Ok(Matrix {
            kernels,
            variants,
            scenarios,
            scenario_paths,
            known_failures,
        })
    }

    /// Pairs in kernel-major order, those with at least one scenario that
    /// runs on the variant.
    pub fn pairs(&self) -> Vec<Pair> {
        let mut pairs = Vec::new();
        for kernel in 0..self.kernels.len() {
            for &variant in &self.variants {
                if self.scenarios.iter().any(|s| s.runs_on(variant.name)) {
                    pairs.push(Pair { kernel, variant });
                }
            }
        }
        pairs
    }

    pub fn pair_label(&self, pair: &Pair) -> String {
        format!("{} {}", self.kernels[pair.kernel], pair.variant.name)
    }
}

fn first_duplicate<T: PartialEq + std::fmt::Display>(items: &[T]) -> Option<String> {
    items
        .iter()
        .enumerate()
        .find(|(i, x)| items[..*i].contains(x))
        .map(|(_, x)| x.to_string())
}

/// How one cell ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellResult {
    Judged(Verdict),
    /// Passed in an earlier run of the same results directory (`--resume`).
    Resumed,
    /// Never ran: its kernel could not be fetched, its QEMU not built.
    Error,
    /// Failed as a `[[known-failure]]` of the matrix file says it does
    /// (its variant, kernel and boot fact): expected, not a pass.
    KnownFailure(Verdict),
    /// Passed where a `[[known-failure]]` says it fails: the entry is stale.
    UnexpectedPass,
}

impl CellResult {
    pub fn label(self) -> &'static str {
        match self {
            CellResult::Judged(v) => v.label(),
            CellResult::Resumed => "pass (resumed)",
            CellResult::Error => "ERROR",
            CellResult::KnownFailure(_) => "xfail",
            CellResult::UnexpectedPass => "XPASS",
        }
    }

    pub fn passed(self) -> bool {
        matches!(
            self,
            CellResult::Judged(Verdict::Pass | Verdict::Accepted) | CellResult::Resumed
        )
    }

    /// Passed, or failed as known: what the exit code accepts.
    pub fn expected(self) -> bool {
        self.passed() || matches!(self, CellResult::KnownFailure(_))
    }

    /// The result once the matrix's known failures are applied: a failure
    /// becomes `xfail` only when an entry covers the cell's variant and
    /// kernel and the boot showed the entry's fact; a pass an entry covers
    /// is `XPASS`. Cells that never ran stay as they are.
    pub fn with_known(
        self,
        known: &[file::KnownFailure],
        variant: &str,
        release: Option<&str>,
        platform: Option<&wire::Platform>,
        scenario: file::ScenarioFacts,
    ) -> (CellResult, Option<String>) {
        let Some(k) = known
            .iter()
            .find(|k| k.covers(variant, release) && k.when.can_affect(scenario))
        else {
            return (self, None);
        };
        let fact = match k.when {
            file::Fact::NoIrqRemapping => platform.is_some_and(|p| p.irq_remapping.is_none()),
            // can_affect: the scenario does
            file::Fact::IrqfdDeassign => true,
            file::Fact::L1FrozeWithL2 => scenario.l1_hung,
        };
        match self {
            r if r.passed() && k.may_pass => (
                r,
                Some(format!(
                    "passed; a known failure shows in some runs only: {}",
                    k.reason
                )),
            ),
            r if r.passed() => (
                CellResult::UnexpectedPass,
                Some(format!(
                    "passed, but listed as a known failure: {}",
                    k.reason
                )),
            ),
            CellResult::Judged(v) if !self.is_error() && fact => (
                CellResult::KnownFailure(v),
                Some(format!("known failure ({}): {}", k.when.name(), k.reason)),
            ),
            CellResult::Judged(v) if !self.is_error() => (
                self,
                Some(format!(
                    "not the known failure of {variant} here, which comes with {}: {}",
                    k.when.name(),
                    v.label()
                )),
            ),
            r => (r, None),
        }
    }

    /// JUnit's split: a failure is the code's fault, an error the setup's.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            CellResult::Error | CellResult::Judged(Verdict::NoBoot)
        )
    }
}

/// One scenario on one variant on one kernel.
#[derive(Debug, Clone)]
pub struct MatrixCell {
    /// The kernel spec as given, e.g. `debian:7`.
    pub kernel: String,
    /// What it resolved to (`uname -r`), when it could be fetched.
    pub kernel_release: Option<String>,
    pub variant: &'static str,
    pub scenario: String,
    pub result: CellResult,
    /// The scenario's wall time in its boot.
    pub seconds: Option<f64>,
    pub detail: Vec<String>,
    pub diff: Option<String>,
    pub report: Option<Report>,
    /// The cell's directory, relative to the results root.
    pub dir: PathBuf,
    /// The console log of the cell's boot, if it booted.
    pub console_log: Option<PathBuf>,
}

/// One boot of the matrix.
#[derive(Debug, Clone)]
pub struct BootRecord {
    pub kernel: String,
    pub variant: &'static str,
    pub scenarios: Vec<String>,
    /// Relative to the results root.
    pub dir: PathBuf,
    pub failure: Option<String>,
    pub qemu_version: String,
    pub boot_to_ready: f64,
    pub seconds: f64,
    /// Restored from a saved L1 state rather than booted.
    pub restored: bool,
    /// Why this boot's scenarios shared it where each would have started
    /// from a restored L1.
    pub shared_because: Option<String>,
}

/// A kernel of the matrix and what became of it.
#[derive(Debug, Clone)]
pub struct KernelRecord {
    pub spec: String,
    pub release: Option<String>,
    pub description: Option<String>,
    pub error: Option<String>,
}

/// Everything a finished matrix run knows.
#[derive(Debug, Clone)]
pub struct MatrixOutcome {
    pub cells: Vec<MatrixCell>,
    pub boots: Vec<BootRecord>,
    pub kernels: Vec<KernelRecord>,
    pub wall: Duration,
    pub jobs: usize,
    pub shard: Option<Shard>,
}

impl MatrixOutcome {
    pub fn exit_code(&self) -> u8 {
        if self.cells.iter().all(|c| c.result.expected()) {
            run::EXIT_OK
        } else {
            run::EXIT_FAILED
        }
    }
}

/// `testbed matrix`.
pub async fn main(args: MatrixArgs) -> u8 {
    let matrix = match Matrix::resolve(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return run::EXIT_USAGE;
        }
    };
    let pairs = matrix.pairs();
    if pairs.is_empty() {
        eprintln!("error: none of the selected scenarios runs on the selected variants");
        return run::EXIT_USAGE;
    }
    if let Some(Emit::Github) = args.emit {
        let labels: Vec<String> = pairs.iter().map(|p| matrix.pair_label(p)).collect();
        let count = args.shards.unwrap_or(labels.len());
        if count == 0 {
            eprintln!("error: --shards must be at least 1");
            return run::EXIT_USAGE;
        }
        println!("{}", shard::github_matrix(&labels, count));
        return run::EXIT_OK;
    }
    let pairs = match args.shard {
        Some(s) => pairs[s.range(pairs.len())].to_vec(),
        None => pairs,
    };
    if pairs.is_empty() {
        eprintln!(
            "shard {}: no cells",
            args.shard.map(|s| s.to_string()).unwrap_or_default()
        );
        return run::EXIT_OK;
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let options = run_options(&args, &matrix);
    let nested_vmx = crate::qemu::host_nested_vmx();
    if let Some(why) = options
        .variants
        .iter()
        .find_map(|v| v.host_problem(options.accel, nested_vmx))
    {
        eprintln!("error: {why}");
        return run::EXIT_USAGE;
    }
    let project = run::project_dir(&matrix.scenarios[0].path);
    let snapshots = args
        .snapshots
        .clone()
        .unwrap_or_else(|| project.join("snapshots"));

    if args.bench {
        return bench(&matrix, &pairs, &options, &snapshots, jobs).await;
    }
    let root = args
        .results
        .clone()
        .unwrap_or_else(|| project.join("results").join("matrix"));
    let settings = Settings {
        options: &options,
        snapshots: &snapshots,
        root: &root,
        jobs,
        resume: args.resume,
    };
    let outcome = match run_matrix(&matrix, &pairs, &settings, args.shard).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return run::EXIT_FAILED;
        }
    };
    output::print_table(&outcome);
    match results::write_reports(&root, &outcome) {
        Ok(written) => {
            for path in written {
                println!("wrote {}", path.display());
            }
        }
        Err(e) => {
            eprintln!("error: writing reports under {}: {e}", root.display());
            return run::EXIT_FAILED;
        }
    }
    outcome.exit_code()
}

fn run_options(args: &MatrixArgs, matrix: &Matrix) -> RunOptions {
    RunOptions {
        paths: matrix.scenario_paths.clone(),
        variants: matrix.variants.clone(),
        kernel: matrix.kernels[0].clone(),
        json: None,
        fresh_boot: args.fresh_boot,
        share_boots: args.share_boots,
        step_timeout: Duration::from_secs(args.timeout),
        boot_timeout: Duration::from_secs(args.boot_timeout),
        accel: match args.accel {
            AccelChoice::Auto => Accel::detect(),
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Kvm => Accel::Kvm,
        },
        qemu: args.qemu.clone(),
        qemu_tree: args.qemu_tree.clone(),
        append: args.append.clone(),
        bzimage: args.bzimage,
        smp: None,
        qemu_args: Vec::new(),
        results: None,
        snapshots: args.snapshots.clone(),
    }
}

/// How a matrix runs, besides what it runs.
pub struct Settings<'a> {
    pub options: &'a RunOptions,
    pub snapshots: &'a Path,
    pub root: &'a Path,
    pub jobs: usize,
    pub resume: bool,
}

/// A boot to run: scenarios of one pair that share an L1.
struct Unit<'a> {
    pair: Pair,
    images: &'a KernelImages,
    patched_qemu: Option<&'a images::QemuBuild>,
    index: usize,
    scenarios: Vec<&'a Scenario>,
    devices: Vec<crate::qemu::PciDevice>,
}

/// Runs `pairs` of `matrix`: kernels and QEMU first (cached), then every
/// boot, at most `jobs` host CPUs' worth at once. Dropping the future
/// (Ctrl-C) kills the running QEMUs and removes their unfinished boot
/// directories; finished cells are already complete on disk.
pub async fn run_matrix(
    matrix: &Matrix,
    pairs: &[Pair],
    settings: &Settings<'_>,
    shard: Option<Shard>,
) -> Result<MatrixOutcome, String> {
    let started = Instant::now();
    let options = settings.options;
    let used_kernels: Vec<usize> = (0..matrix.kernels.len())
        .filter(|k| pairs.iter().any(|p| p.kernel == *k))
        .collect();
    let cells_total: usize = pairs
        .iter()
        .map(|p| {
            matrix
                .scenarios
                .iter()
                .filter(|s| s.runs_on(p.variant.name))
                .count()
        })
        .sum();
    let ui = MatrixUi::new(cells_total);
    let runtime = run::runtime_dir().map_err(|e| e.message)?;
    let agent = run::write_agent(runtime.path()).map_err(|e| e.message)?;
    let cache = images::Cache::default_location();

    // Kernels, one after another (the cache serializes fetches anyway).
    let mut kernels: Vec<KernelRecord> = matrix
        .kernels
        .iter()
        .map(|k| KernelRecord {
            spec: k.to_string(),
            release: None,
            description: None,
            error: None,
        })
        .collect();
    let mut prepared: Vec<Option<KernelImages>> = matrix.kernels.iter().map(|_| None).collect();
    for &k in &used_kernels {
        let spec = &matrix.kernels[k];
        ui.status(&format!("{spec}: fetching"));
        match run::prepare_kernel(&cache, spec, options, &agent, &mut |p| {
            ui.status(&format!("{spec}: {p}"))
        }) {
            Ok(images) => {
                ui.line(&format!("kernel {spec}: {}", images.kernel.description));
                kernels[k].release = Some(images.kernel.release.clone());
                kernels[k].description = Some(images.kernel.description.clone());
                prepared[k] = Some(images);
            }
            Err(e) => {
                let prefix = format!("kernel {spec}: ");
                let why = e
                    .message
                    .strip_prefix(&prefix)
                    .unwrap_or(&e.message)
                    .to_owned();
                ui.line(&format!("kernel {spec}: cannot be used: {why}"));
                kernels[k].error = Some(why);
            }
        }
    }
    let project = run::project_dir(&matrix.scenarios[0].path);
    let patched_qemu: Option<Result<images::QemuBuild, String>> = pairs
        .iter()
        .any(|p| p.variant.qemu == QemuKind::Patched)
        .then(|| {
            ui.status("patched qemu");
            let build = run::prepare_patched_qemu(
                &cache,
                &project,
                options.qemu_tree.as_deref(),
                &mut |p| ui.status(&format!("patched qemu: {p}")),
            )
            .map_err(|e| e.message);
            match &build {
                Ok(b) => ui.line(&format!("patched qemu: {}", b.description)),
                Err(e) => ui.line(&format!("patched qemu: cannot be used: {e}")),
            }
            build
        });

    // Cells that cannot run or need not run, and the boots of the rest.
    let mut cells: Vec<MatrixCell> = Vec::new();
    let pair_scenarios: Vec<Vec<Scenario>> = pairs
        .iter()
        .map(|p| {
            matrix
                .scenarios
                .iter()
                .filter(|s| s.runs_on(p.variant.name))
                .cloned()
                .collect()
        })
        .collect();
    let mut to_run: Vec<(usize, Vec<Scenario>)> = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let kernel = &kernels[pair.kernel];
        let qemu_error = match (&patched_qemu, pair.variant.qemu) {
            (Some(Err(e)), QemuKind::Patched) => Some(e.clone()),
            _ => None,
        };
        let cannot = match (&kernel.error, qemu_error) {
            (Some(e), _) => Some(format!("kernel {} cannot be used: {e}", kernel.spec)),
            (None, Some(e)) => Some(format!("patched qemu cannot be used: {e}")),
            (None, None) => None,
        };
        let mut remaining = Vec::new();
        for scenario in &pair_scenarios[i] {
            let mut cell = MatrixCell {
                kernel: kernel.spec.clone(),
                kernel_release: kernel.release.clone(),
                variant: pair.variant.name,
                scenario: scenario.name.clone(),
                result: CellResult::Error,
                seconds: None,
                detail: Vec::new(),
                diff: None,
                report: None,
                dir: results::cell_dir(&kernel.spec, pair.variant.name, &scenario.name),
                console_log: None,
            };
            if let Some(why) = &cannot {
                cell.detail.push(why.clone());
                results::write_cell(settings.root, &cell, None, None);
                ui.cell_done(&cell);
                cells.push(cell);
                continue;
            }
            let fingerprint = results::fingerprint(
                kernel.description.as_deref().unwrap_or_default(),
                pair.variant,
                scenario,
                settings.snapshots,
                options,
                patched_qemu
                    .as_ref()
                    .and_then(|q| q.as_ref().ok())
                    .filter(|_| pair.variant.qemu == QemuKind::Patched),
            );
            if settings.resume {
                if let Some(seconds) =
                    results::passed_before(settings.root, &cell.dir, &fingerprint)
                {
                    cell.result = CellResult::Resumed;
                    cell.seconds = seconds;
                    ui.cell_done(&cell);
                    cells.push(cell);
                    continue;
                }
            }
            remaining.push(scenario.clone());
        }
        if !remaining.is_empty() {
            to_run.push((i, remaining));
        }
    }
    let mut units: Vec<Unit> = Vec::new();
    for (i, scenarios) in &to_run {
        let pair = pairs[*i];
        let images = prepared[pair.kernel]
            .as_ref()
            .expect("kernels of runnable pairs are prepared");
        for (index, group) in plan::group(scenarios, options.fresh_boot)
            .into_iter()
            .enumerate()
        {
            units.push(Unit {
                pair,
                images,
                patched_qemu: patched_qemu.as_ref().and_then(|q| q.as_ref().ok()),
                index,
                scenarios: group.scenarios,
                devices: group.devices,
            });
        }
    }

    // Longest first, so that a long boot (a stress scenario in a boot of
    // its own) does not start last and run alone while the other CPUs idle.
    // The sort is stable: boots of equal estimate keep matrix order. The
    // semaphore is fair, so boots start in this order.
    units.sort_by(|a, b| {
        estimated_seconds(&b.scenarios).total_cmp(&estimated_seconds(&a.scenarios))
    });
    ui.status(&format!(
        "{} groups of scenarios, {} L1s at a time",
        units.len(),
        settings.jobs
    ));
    let cpus = tokio::sync::Semaphore::new(settings.jobs);
    let ctx = UnitContext {
        matrix,
        settings,
        kernels: &kernels,
        runtime: runtime.path(),
        cpus: &cpus,
        ui: &ui,
    };
    let finished =
        futures::future::join_all(units.iter().enumerate().map(|(n, u)| run_unit(&ctx, n, u)))
            .await;
    ui.finish();
    let mut boots = Vec::new();
    for (unit_cells, unit_boots) in finished {
        cells.extend(unit_cells);
        boots.extend(unit_boots);
    }
    // Matrix order: kernel, variant, scenario, whatever finished first.
    let order = |c: &MatrixCell| {
        let k = matrix
            .kernels
            .iter()
            .position(|k| k.to_string() == c.kernel);
        let v = matrix.variants.iter().position(|v| v.name == c.variant);
        let s = matrix.scenarios.iter().position(|s| s.name == c.scenario);
        (k, v, s)
    };
    cells.sort_by_key(order);
    Ok(MatrixOutcome {
        cells,
        boots,
        kernels,
        wall: started.elapsed(),
        jobs: settings.jobs,
        shard,
    })
}

/// A rough cost of a boot, only to order boots: the boot itself, a little
/// per step, and the interrupts its `fire` steps raise (a few hundred per
/// second get through a TCG guest and its nested L2).
fn estimated_seconds(scenarios: &[&Scenario]) -> f64 {
    let mut seconds = 8.0;
    for s in scenarios {
        for step in &s.steps {
            seconds += 0.1;
            if let wire::Step::Fire { count, .. } = step {
                seconds += f64::from(*count) / 500.0;
            }
        }
    }
    seconds
}

struct UnitContext<'a> {
    matrix: &'a Matrix,
    settings: &'a Settings<'a>,
    kernels: &'a [KernelRecord],
    runtime: &'a Path,
    cpus: &'a tokio::sync::Semaphore,
    ui: &'a MatrixUi,
}

/// How a unit's L1s start, decided before any boot.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// One boot for the unit's scenarios (`--share-boots`, `--fresh-boot`).
    Boot,
    /// Each scenario from a restored L1 (the default); the saving boot may
    /// still find QEMU unwilling to migrate, and then the scenarios share it.
    Restore,
    /// One boot, because restore is impossible for these scenarios.
    Shared(String),
}

fn start_of(options: &RunOptions, scenarios: &[&Scenario]) -> Start {
    if !options.restores() {
        return Start::Boot;
    }
    match crate::restore::unsupported(scenarios) {
        Some(reason) => Start::Shared(reason),
        None => Start::Restore,
    }
}

/// Aborts a spawned restore when the matrix is dropped (Ctrl-C), so that
/// its QEMU goes with the run.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The L1s of one unit: each outcome with the unit's scenarios it ran (by
/// index), whether it was restored, and why it was shared if restore was
/// wanted.
struct UnitL1s {
    outcomes: Vec<(crate::runner::BootOutcome, Vec<usize>, bool)>,
    shared_because: Option<String>,
    /// The boot that saved the unit's L1 state, when this run made it:
    /// its boot and save times.
    saved: Option<(Duration, Duration)>,
}

async fn run_unit(
    ctx: &UnitContext<'_>,
    n: usize,
    unit: &Unit<'_>,
) -> (Vec<MatrixCell>, Vec<BootRecord>) {
    let kernel = &ctx.kernels[unit.pair.kernel];
    let variant = unit.pair.variant;
    let label = ctx.matrix.pair_label(&unit.pair);
    let cpu = ctx
        .cpus
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let progress = ctx.ui.unit(&label);
    let error_cell = |s: &Scenario, why: &str| -> MatrixCell {
        let cell = MatrixCell {
            kernel: kernel.spec.clone(),
            kernel_release: kernel.release.clone(),
            variant: variant.name,
            scenario: s.name.clone(),
            result: CellResult::Error,
            seconds: None,
            detail: vec![why.to_owned()],
            diff: None,
            report: None,
            dir: results::cell_dir(&kernel.spec, variant.name, &s.name),
            console_log: None,
        };
        results::write_cell(ctx.settings.root, &cell, None, None);
        ctx.ui.cell_done(&cell);
        cell
    };
    let error_cells = |why: String| -> Vec<MatrixCell> {
        unit.scenarios.iter().map(|s| error_cell(s, &why)).collect()
    };
    let boot_dir = results::boot_dir(&kernel.spec, variant.name, unit.index);
    let live = match results::LiveBootDir::create(ctx.settings.root, &boot_dir) {
        Ok(d) => d,
        Err(e) => {
            return (
                error_cells(format!(
                    "creating a boot directory under {}: {e}",
                    ctx.settings.root.display()
                )),
                Vec::new(),
            )
        }
    };
    let target = run::BootTarget {
        images: unit.images,
        patched_qemu: unit.patched_qemu,
        log_dir: live.path().to_path_buf(),
        runtime_dir: ctx.runtime.join(format!("u{n}")),
    };
    let options = ctx.settings.options;
    let started = Instant::now();
    let all: Vec<usize> = (0..unit.scenarios.len()).collect();
    let start = start_of(options, &unit.scenarios);
    let l1s = match start {
        Start::Boot | Start::Shared(_) => {
            let shared_because = match start {
                Start::Shared(reason) => {
                    ctx.ui.line(&format!(
                        "{label} boot {}: scenarios share one boot: {reason}",
                        unit.index
                    ));
                    Some(reason)
                }
                _ => None,
            };
            let cfg =
                match run::boot_config(options, &target, variant, &unit.scenarios, &unit.devices) {
                    Ok(c) => c,
                    Err(e) => return (error_cells(e), Vec::new()),
                };
            let timeouts = run::timeouts(options);
            let first = crate::runner::run_boot(&cfg, &unit.scenarios, timeouts, &mut |e| {
                progress.event(e)
            })
            .await;
            // the fallback gives the rest of a broken boot a new one; the
            // boots --share-boots asked for stay as asked
            let outcomes = if shared_because.is_some() {
                crate::runner::rest_on_new_boots(&cfg, first, &unit.scenarios, timeouts, &mut |e| {
                    progress.event(e)
                })
                .await
            } else {
                vec![first]
            };
            UnitL1s {
                outcomes: outcomes
                    .into_iter()
                    .map(|o| {
                        let of = ran_in(&unit.scenarios, &o);
                        (o, of, false)
                    })
                    .collect(),
                shared_because,
                saved: None,
            }
        }
        Start::Restore => {
            let cfg =
                match run::boot_config(options, &target, variant, &unit.scenarios, &unit.devices) {
                    Ok(c) => c,
                    Err(e) => return (error_cells(e), Vec::new()),
                };
            let cache = images::Cache::default_location();
            let timeouts = run::timeouts(options);
            use crate::restore::{self, Obtained};
            match restore::obtain_state(&cache, &cfg, timeouts, &mut |e| progress.event(e)).await {
                Obtained::Blocked(session, outcome, reason) => {
                    let group = restore::in_session(
                        &cfg,
                        *session,
                        outcome,
                        &unit.scenarios,
                        timeouts,
                        &mut |e| progress.event(e),
                        reason,
                    )
                    .await;
                    let reason = match group.mode {
                        restore::GroupMode::Shared { reason } => reason,
                        restore::GroupMode::Restored { .. } => String::new(),
                    };
                    ctx.ui.line(&format!(
                        "{label} boot {}: scenarios share one boot: {reason}",
                        unit.index
                    ));
                    UnitL1s {
                        outcomes: group
                            .outcomes
                            .into_iter()
                            .map(|o| {
                                let of = ran_in(&unit.scenarios, &o);
                                (o, of, false)
                            })
                            .collect(),
                        shared_because: Some(reason),
                        saved: None,
                    }
                }
                Obtained::Failed(outcome) => UnitL1s {
                    outcomes: vec![(outcome, all, false)],
                    shared_because: None,
                    saved: None,
                },
                Obtained::State(state, saved) => {
                    if let Some((boot, save)) = saved {
                        ctx.ui.line(&format!(
                            "{label} boot {}: saved the L1 state (booted in {:.1} s, saved in {:.1} s)",
                            unit.index,
                            boot.as_secs_f64(),
                            save.as_secs_f64()
                        ));
                    }
                    drop(state);
                    // the saving boot's CPU goes back: every scenario takes its own
                    drop(cpu);
                    drop(progress);
                    let restores = unit.scenarios.iter().enumerate().map(|(i, s)| {
                        let cache = cache.clone();
                        let cfg = cfg.clone();
                        let scenario: Scenario = (*s).clone();
                        let label = format!("{label} {}", s.name);
                        async move {
                            let _cpu = ctx
                                .cpus
                                .acquire()
                                .await
                                .expect("the semaphore is never closed");
                            let progress = ctx.ui.unit(&label);
                            let events = progress.events();
                            let failed_cfg = restore::scenario_cfg(&cfg, i, &s.name);
                            let task = AbortOnDrop(tokio::spawn(async move {
                                restore::run_group_from(
                                    &cache,
                                    &cfg,
                                    i,
                                    &[&scenario],
                                    timeouts,
                                    &mut |e| events.event(e),
                                )
                                .await
                                .outcomes
                            }));
                            let mut task = task;
                            let outcomes = match (&mut task.0).await {
                                Ok(o) => o,
                                Err(e) => {
                                    let mut o = crate::runner::BootOutcome::new(&failed_cfg);
                                    o.failure = Some(crate::runner::Failure {
                                        message: format!("the restore task ended: {e}"),
                                        before_ready: true,
                                    });
                                    vec![o]
                                }
                            };
                            outcomes
                                .into_iter()
                                .map(|o| (o, vec![i], true))
                                .collect::<Vec<_>>()
                        }
                    });
                    UnitL1s {
                        outcomes: futures::future::join_all(restores)
                            .await
                            .into_iter()
                            .flatten()
                            .collect(),
                        shared_because: None,
                        saved,
                    }
                }
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    // The unit is over: its directory becomes boot-N, and messages that
    // name its files follow it there.
    let final_dir = ctx.settings.root.join(&boot_dir);
    let live_path = live.path().to_string_lossy().into_owned();
    let final_path = final_dir.to_string_lossy().into_owned();
    let moved = |p: &Path| PathBuf::from(p.to_string_lossy().replace(&live_path, &final_path));
    let kept = match live.finish(&final_dir) {
        Ok(()) => true,
        Err(e) => {
            ctx.ui.line(&format!(
                "{label}: cannot keep the boot's logs in {}: {e}",
                final_dir.display()
            ));
            false
        }
    };
    let mut cells = Vec::new();
    for (si, scenario) in unit.scenarios.iter().enumerate() {
        let Some((outcome, _, _)) = l1s
            .outcomes
            .iter()
            .find(|(o, of, _)| {
                of.contains(&si) && o.runs.iter().any(|r| r.scenario == scenario.name)
            })
            .or_else(|| {
                l1s.outcomes
                    .iter()
                    .rev()
                    .find(|(_, of, _)| of.contains(&si))
            })
        else {
            cells.push(error_cell(scenario, "no L1 ran this scenario"));
            continue;
        };
        let boot_files = kept
            .then(|| outcome.console_log.parent().map(moved))
            .flatten();
        let mut judged = run::judge(ctx.settings.snapshots, variant, scenario, outcome);
        let (result, known) = CellResult::Judged(judged.verdict).with_known(
            &ctx.matrix.known_failures,
            variant.name,
            kernel.release.as_deref(),
            judged.report.as_ref().map(|r| &r.platform),
            file::ScenarioFacts {
                // its own hang, not a "not run" after another's
                l1_hung: judged.detail.iter().any(|d| {
                    d.starts_with("guest hung: no word from the agent")
                        || d.starts_with("L1 stalled: ")
                }),
                ..file::ScenarioFacts::of(scenario)
            },
        );
        judged.detail.extend(known);
        let seconds = outcome
            .runs
            .iter()
            .position(|r| r.scenario == scenario.name)
            .and_then(|i| outcome.timings.scenarios.get(i))
            .map(Duration::as_secs_f64);
        let cell = MatrixCell {
            kernel: kernel.spec.clone(),
            kernel_release: kernel.release.clone(),
            variant: variant.name,
            scenario: scenario.name.clone(),
            result,
            seconds,
            // insta printed the diff as it went, among other cells' output:
            // point at the cell's own copy instead.
            detail: judged
                .detail
                .iter()
                .map(|d| {
                    let diff_file = ctx.settings.root.join(results::cell_dir(
                        &kernel.spec,
                        variant.name,
                        &scenario.name,
                    ));
                    d.replace(&live_path, &final_path).replace(
                        "(diff above)",
                        &format!("(diff in {})", diff_file.join("diff.txt").display()),
                    )
                })
                .collect(),
            diff: judged.diff,
            report: judged.report,
            dir: results::cell_dir(&kernel.spec, variant.name, &scenario.name),
            console_log: boot_files.as_ref().map(|d| d.join("console.log")),
        };
        let fingerprint = results::fingerprint(
            kernel.description.as_deref().unwrap_or_default(),
            variant,
            scenario,
            ctx.settings.snapshots,
            ctx.settings.options,
            unit.patched_qemu
                .filter(|_| variant.qemu == QemuKind::Patched),
        );
        results::write_cell(
            ctx.settings.root,
            &cell,
            boot_files.as_deref(),
            Some(&fingerprint),
        );
        ctx.ui.cell_done(&cell);
        cells.push(cell);
    }
    let saving = l1s.saved.map(|(boot, save)| BootRecord {
        kernel: kernel.spec.clone(),
        variant: variant.name,
        scenarios: Vec::new(),
        dir: boot_dir.join("save"),
        failure: None,
        qemu_version: String::new(),
        boot_to_ready: boot.as_secs_f64(),
        seconds: (boot + save).as_secs_f64(),
        restored: false,
        shared_because: None,
    });
    let shared_boots = l1s.outcomes.iter().filter(|(_, _, r)| !r).count();
    let boots = saving
        .into_iter()
        .chain(l1s.outcomes.iter().map(|(outcome, of, restored)| {
            // a restored L1's logs are in a directory of their own under the unit's
            let sub = outcome
                .console_log
                .parent()
                .and_then(|d| d.strip_prefix(&live_path).ok())
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let t = &outcome.timings;
            BootRecord {
                kernel: kernel.spec.clone(),
                variant: variant.name,
                scenarios: of.iter().map(|&i| unit.scenarios[i].name.clone()).collect(),
                dir: boot_dir.join(sub),
                failure: outcome
                    .failure
                    .as_ref()
                    .map(|f| f.message.replace(&live_path, &final_path)),
                qemu_version: outcome.qemu_version.clone(),
                boot_to_ready: t.boot_to_ready.as_secs_f64(),
                // the unit's wall time is its one boot's; restored L1s and
                // the new boots after a break (several per unit) count their own
                seconds: if *restored || shared_boots > 1 {
                    (t.qemu_start
                        + t.boot_to_ready
                        + t.scenarios.iter().sum::<Duration>()
                        + t.shutdown)
                        .as_secs_f64()
                } else {
                    seconds
                },
                restored: *restored,
                shared_because: l1s.shared_because.clone(),
            }
        }))
        .collect();
    (cells, boots)
}

/// The indices of `scenarios` that `outcome` ran (or marked not run);
/// all of them for a boot that never got to run one.
fn ran_in(scenarios: &[&Scenario], outcome: &crate::runner::BootOutcome) -> Vec<usize> {
    let all = 0..scenarios.len();
    if outcome.runs.is_empty() {
        return all.collect();
    }
    all.filter(|&i| outcome.runs.iter().any(|r| r.scenario == scenarios[i].name))
        .collect()
}

/// `--bench`: the same matrix with -j 1 and then -j `jobs`, each into a
/// fresh temporary results directory, then both wall times and the ratio.
async fn bench(
    matrix: &Matrix,
    pairs: &[Pair],
    options: &RunOptions,
    snapshots: &Path,
    jobs: usize,
) -> u8 {
    let levels: Vec<usize> = if jobs > 1 { vec![1, jobs] } else { vec![1] };
    let mut walls = Vec::new();
    for &j in &levels {
        let tmp = match tempfile::Builder::new().prefix("testbed-bench-").tempdir() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot create a results directory: {e}");
                return run::EXIT_FAILED;
            }
        };
        let settings = Settings {
            options,
            snapshots,
            root: tmp.path(),
            jobs: j,
            resume: false,
        };
        let outcome = match run_matrix(matrix, pairs, &settings, None).await {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return run::EXIT_FAILED;
            }
        };
        let passed = outcome.cells.iter().filter(|c| c.result.passed()).count();
        eprintln!(
            "-j {j}: {} cells ({passed} passed) in {} boots, {:.1} s",
            outcome.cells.len(),
            outcome.boots.len(),
            outcome.wall.as_secs_f64()
        );
        walls.push((j, outcome));
    }
    let kernels: Vec<String> = walls[0]
        .1
        .kernels
        .iter()
        .filter_map(|k| k.release.clone())
        .collect();
    println!(
        "bench: matrix of {} kernels ({}) x {} variants ({}), {} cells in {} boots, accel {}",
        pairs
            .iter()
            .map(|p| p.kernel)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        kernels.join(", "),
        matrix.variants.len(),
        matrix
            .variants
            .iter()
            .map(|v| v.name)
            .collect::<Vec<_>>()
            .join(", "),
        walls[0].1.cells.len(),
        walls[0].1.boots.len(),
        options.accel.name()
    );
    let base = walls[0].1.wall.as_secs_f64();
    for (j, outcome) in &walls {
        let wall = outcome.wall.as_secs_f64();
        let boots: f64 = outcome.boots.iter().map(|b| b.seconds).sum();
        println!(
            "  -j {j}: wall {wall:>7.1} s   sum of boots {boots:>7.1} s   {:.2} s per cell   speed-up {:.2}x",
            wall / outcome.cells.len().max(1) as f64,
            base / wall
        );
    }
    if walls.iter().all(|(_, o)| o.exit_code() == run::EXIT_OK) {
        run::EXIT_OK
    } else {
        eprintln!("bench: some cells did not pass (timings still printed)");
        run::EXIT_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: file::ScenarioFacts = file::ScenarioFacts {
        has_devices: true,
        deassigns_irqfd: false,
        starts_l2: false,
        l1_hung: false,
    };
    const NO_DEVICE: file::ScenarioFacts = file::ScenarioFacts {
        has_devices: false,
        deassigns_irqfd: false,
        starts_l2: false,
        l1_hung: false,
    };

    fn known() -> Vec<file::KnownFailure> {
        let text = "[[known-failure]]\nvariant = \"amd-ir\"\nkernels-from = \"7.3\"\nwhen = \"no-irq-remapping\"\nreason = \"no SB IO-APIC\"\n";
        file::parse(Path::new("matrix.toml"), text)
            .unwrap()
            .known_failures
    }

    fn options(flags: &[&str]) -> RunOptions {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: MatrixArgs,
        }
        let argv = ["matrix", "--accel", "tcg"].iter().chain(flags);
        let cli = <Cli as clap::Parser>::try_parse_from(argv).unwrap();
        let matrix = Matrix {
            kernels: vec!["debian:7.2".parse().unwrap()],
            variants: vec![variant::lookup("intel-ir").unwrap()],
            scenarios: Vec::new(),
            scenario_paths: Vec::new(),
            known_failures: Vec::new(),
        };
        run_options(&cli.args, &matrix)
    }

    fn scenario(name: &str, steps: Vec<wire::Step>) -> Scenario {
        Scenario {
            name: name.into(),
            path: format!("scenarios/{name}.toml").into(),
            description: String::new(),
            fresh_boot: false,
            variants: None,
            devices: Vec::new(),
            steps,
            expect: Vec::new(),
        }
    }

    #[test]
    fn each_scenario_starts_from_a_restored_l1_unless_told_or_impossible() {
        let plain = scenario("edu-producer-first", Vec::new());
        let nested = scenario(
            "igb-l2",
            vec![wire::Step::StartL2 {
                l2: "l2".into(),
                devices: Vec::new(),
                queues: 1,
                append: None,
                hotplug: false,
            }],
        );
        assert_eq!(start_of(&options(&[]), &[&plain]), Start::Restore);
        assert_eq!(
            start_of(&options(&["--share-boots"]), &[&plain]),
            Start::Boot
        );
        assert_eq!(
            start_of(&options(&["--fresh-boot"]), &[&plain]),
            Start::Boot
        );
        // a group restore cannot serve shares one boot, and says why
        match start_of(&options(&[]), &[&plain, &nested]) {
            Start::Shared(why) => assert!(why.contains("igb-l2 runs a nested L2"), "{why}"),
            other => panic!("{other:?}"),
        }
        // --share-boots and --fresh-boot exclude each other, like `testbed run`'s
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            args: MatrixArgs,
        }
        assert!(
            <Cli as clap::Parser>::try_parse_from(["matrix", "--share-boots", "--fresh-boot"])
                .is_err()
        );
    }

    #[test]
    fn known_failures_need_variant_kernel_and_fact() {
        let k = known();
        let no_ir = wire::Platform::default();
        let ir = wire::Platform {
            irq_remapping: Some("amd x2apic".into()),
            ..Default::default()
        };
        let broken = CellResult::Judged(Verdict::Broken);
        let pass = CellResult::Judged(Verdict::Pass);
        let r73 = Some("7.3.4+deb13-amd64");

        let (r, why) = broken.with_known(&k, "amd-ir", r73, Some(&no_ir), DEVICE);
        assert_eq!(r, CellResult::KnownFailure(Verdict::Broken));
        assert_eq!(
            why.unwrap(),
            "known failure (no-irq-remapping): no SB IO-APIC"
        );
        assert!(r.expected() && !r.passed());
        assert_eq!(r.label(), "xfail");

        // a pass where the entry expects a failure is a failure
        let (r, why) = pass.with_known(&k, "amd-ir", r73, Some(&ir), DEVICE);
        assert_eq!(r, CellResult::UnexpectedPass);
        assert!(
            !r.expected()
                && why
                    .unwrap()
                    .starts_with("passed, but listed as a known failure")
        );

        // failing with interrupt remapping on is another failure
        let (r, why) = broken.with_known(&k, "amd-ir", r73, Some(&ir), DEVICE);
        assert_eq!(r, broken);
        assert!(!r.expected() && why.unwrap().starts_with("not the known failure"));
        // so is failing without facts (no report)
        assert_eq!(broken.with_known(&k, "amd-ir", r73, None, DEVICE).0, broken);

        // other kernels and variants are not covered
        assert_eq!(
            broken.with_known(
                &k,
                "amd-ir",
                Some("7.2.13+deb14-amd64"),
                Some(&no_ir),
                DEVICE
            ),
            (broken, None)
        );
        assert_eq!(
            broken.with_known(&k, "amd-ir-patched", r73, Some(&no_ir), DEVICE),
            (broken, None)
        );
        // cells that never ran stay errors
        let no_boot = CellResult::Judged(Verdict::NoBoot);
        assert_eq!(
            no_boot.with_known(&k, "amd-ir", r73, Some(&no_ir), DEVICE),
            (no_boot, None)
        );
        assert_eq!(
            CellResult::Error.with_known(&k, "amd-ir", r73, None, DEVICE),
            (CellResult::Error, None)
        );
        // a scenario with no device (edu-l2-ipi) does not need interrupt
        // remapping: it passes as a plain pass, and fails as a plain failure
        // (measured: edu-l2-ipi was XPASS on amd-ir with 7.3 before)
        assert_eq!(
            pass.with_known(&k, "amd-ir", r73, Some(&no_ir), NO_DEVICE),
            (pass, None)
        );
        assert_eq!(
            broken.with_known(&k, "amd-ir", r73, Some(&no_ir), NO_DEVICE),
            (broken, None)
        );
    }

    /// Stock QEMU's lost wakeup (docs/tcg-lost-wakeup.md): only a hang of
    /// a scenario that starts an L2 is the known failure; another failure
    /// of the same cell is not, and a scenario without an L2 is not covered.
    #[test]
    fn a_frozen_l1_is_known_only_when_the_scenario_starts_an_l2_and_hung() {
        let text = "[[known-failure]]\nvariant = \"amd-ir\"\nkernels-from = \"6.16\"\nkernels-before = \"6.17\"\nwhen = \"l1-froze-with-l2\"\nmay-pass = true\nreason = \"lost wakeup\"\n";
        let k = file::parse(Path::new("matrix.toml"), text)
            .unwrap()
            .known_failures;
        let platform = wire::Platform::default();
        let r616 = Some("6.16.12+deb13-amd64");
        let broken = CellResult::Judged(Verdict::Broken);
        let l2 = file::ScenarioFacts {
            starts_l2: true,
            ..DEVICE
        };
        let hung = file::ScenarioFacts {
            l1_hung: true,
            ..l2
        };
        let (r, why) = broken.with_known(&k, "amd-ir", r616, Some(&platform), hung);
        assert_eq!(r, CellResult::KnownFailure(Verdict::Broken));
        assert_eq!(
            why.unwrap(),
            "known failure (l1-froze-with-l2): lost wakeup"
        );
        // broken otherwise (a panic, QEMU gone): still a failure
        let (r, why) = broken.with_known(&k, "amd-ir", r616, Some(&platform), l2);
        assert_eq!(r, broken);
        assert!(why.unwrap().starts_with("not the known failure"));
        // no L2, no entry
        let (r, why) = broken.with_known(
            &k,
            "amd-ir",
            r616,
            Some(&platform),
            file::ScenarioFacts {
                l1_hung: true,
                ..DEVICE
            },
        );
        assert_eq!((r, why), (broken, None));
        // other lines are not covered
        let r617 = Some("6.17.13+deb13-amd64");
        assert_eq!(
            broken.with_known(&k, "amd-ir", r617, Some(&platform), hung),
            (broken, None)
        );
    }

    /// CVE-2026-23198 on 6.17: a race, so a pass is a pass; only scenarios
    /// that deassign an irqfd, only up to 6.18.
    #[test]
    fn a_known_race_covers_scenarios_that_deassign_and_may_pass() {
        let text = "[[known-failure]]\nvariant = \"amd-avic\"\nkernels-from = \"6.17\"\nkernels-before = \"6.18\"\nwhen = \"irqfd-deassign\"\nmay-pass = true\nreason = \"CVE\"\n";
        let k = file::parse(Path::new("matrix.toml"), text)
            .unwrap()
            .known_failures;
        let deassigns = file::ScenarioFacts {
            deassigns_irqfd: true,
            ..DEVICE
        };
        let platform = wire::Platform::default();
        let r617 = Some("6.17.13+deb13-amd64");
        let broken = CellResult::Judged(Verdict::Broken);
        let check = CellResult::Judged(Verdict::ChecksFailed);
        let pass = CellResult::Judged(Verdict::Pass);

        let (r, why) = broken.with_known(&k, "amd-avic", r617, Some(&platform), deassigns);
        assert_eq!(r, CellResult::KnownFailure(Verdict::Broken));
        assert_eq!(why.unwrap(), "known failure (irqfd-deassign): CVE");
        let (r, _) = check.with_known(&k, "amd-avic", r617, Some(&platform), deassigns);
        assert_eq!(r, CellResult::KnownFailure(Verdict::ChecksFailed));
        // the race not hit: a pass, said so
        let (r, why) = pass.with_known(&k, "amd-avic", r617, Some(&platform), deassigns);
        assert_eq!(r, pass);
        assert!(why
            .unwrap()
            .starts_with("passed; a known failure shows in some runs only"));
        // a scenario that deassigns nothing fails as itself
        assert_eq!(
            broken.with_known(&k, "amd-avic", r617, Some(&platform), DEVICE),
            (broken, None)
        );
        // 6.18 and 6.16 are not covered
        for release in ["6.18.12+deb13-amd64", "6.16.12+deb13-amd64"] {
            assert_eq!(
                broken.with_known(&k, "amd-avic", Some(release), Some(&platform), deassigns),
                (broken, None)
            );
        }
    }
}
