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
    /// Scenarios that agree on devices share one boot (the fallback where
    /// restore is impossible) instead of each starting from a restored L1.
    /// `fresh_boot` and `share_boots` unset: restore (`testbed run`'s default).
    pub share_boots: bool,
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
    /// L1 CPUs instead of the variant's own count.
    pub smp: Option<u32>,
    /// Extra QEMU arguments, e.g. `-trace igb_irq_*`.
    pub qemu_args: Vec<String>,
    pub results: Option<PathBuf>,
    pub snapshots: Option<PathBuf>,
}

/// Bad command-line input: exit 2.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Variant(UnknownVariant),
    /// A variant this host cannot run (`Variant::host_problem`).
    #[error("{0}")]
    Host(String),
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
    /// The variant's QEMU could not be built.
    NotRun,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::New => "NEW SNAPSHOT",
            Verdict::Accepted => "ACCEPTED",
            Verdict::Mismatch => "MISMATCH",
            Verdict::ChecksFailed => "CHECK FAILED",
            Verdict::Broken => "BROKEN",
            Verdict::NoBoot => "NO BOOT",
            Verdict::NotRun => "NOT RUN",
        }
    }
}

pub struct Cell {
    pub scenario: String,
    pub variant: &'static str,
    pub verdict: Verdict,
    pub detail: Vec<String>,
    pub report: Option<Report>,
    /// The unified diff, snapshot to report, when they differ.
    pub diff: Option<String>,
}

/// Everything a run needs once the inputs are valid.
pub(crate) struct Prepared {
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) images: KernelImages,
    snapshots: PathBuf,
    results: PathBuf,
    runtime: tempfile::TempDir,
    /// Built when a variant needs the patched QEMU.
    patched_qemu: Option<images::QemuBuild>,
    /// Why the patched QEMU could not be built, when stock variants run
    /// anyway: the patched ones are then not run.
    patched_qemu_error: Option<String>,
}

/// A kernel ready to boot: fetched, with its initramfs.
pub struct KernelImages {
    pub kernel: images::Kernel,
    /// What QEMU's -kernel gets: the PVH ELF when the kernel has one (its
    /// self-decompression is most of a TCG boot), else the bzImage.
    pub boot_image: PathBuf,
    pub initrd: PathBuf,
    /// The guest agent that went into `initrd` (a nested boot's initramfs
    /// and its L2's get the same one).
    pub agent: PathBuf,
}

/// Why inputs could not be prepared: the message and `testbed run`'s exit code.
#[derive(Debug, Clone)]
pub struct PrepareError {
    pub message: String,
    pub code: u8,
}

impl PrepareError {
    fn skip(message: String) -> PrepareError {
        PrepareError {
            message,
            code: EXIT_SKIP,
        }
    }
}

/// Loads scenarios, fetches the kernel, builds the initramfs. Errors carry the exit code.
pub(crate) fn prepare(options: &RunOptions, ui: &Ui) -> Result<Prepared, u8> {
    let report = |e: PrepareError| {
        eprintln!("error: {}", e.message);
        e.code
    };
    let scenarios = load_scenarios(&options.paths).map_err(report)?;
    let project = project_dir(&scenarios[0].path);
    let snapshots = options
        .snapshots
        .clone()
        .unwrap_or_else(|| project.join("snapshots"));
    let results = options
        .results
        .clone()
        .unwrap_or_else(|| project.join("results"));
    let cache = images::Cache::default_location();
    let runtime = runtime_dir().map_err(report)?;
    let agent = write_agent(runtime.path()).map_err(report)?;
    let images = prepare_kernel(&cache, &options.kernel, options, &agent, &mut |p| {
        ui.images(p)
    })
    .map_err(report)?;
    let mut patched_qemu_error = None;
    let patched_qemu = if options
        .variants
        .iter()
        .any(|v| v.qemu == crate::variant::QemuKind::Patched)
    {
        match prepare_patched_qemu(&cache, &project, options.qemu_tree.as_deref(), &mut |p| {
            ui.images(p)
        }) {
            Ok(build) => {
                ui.line(&format!("patched qemu: {}", build.description));
                Some(build)
            }
            // the stock variants' results are still worth having
            Err(e)
                if options
                    .variants
                    .iter()
                    .any(|v| v.qemu == crate::variant::QemuKind::Stock) =>
            {
                eprintln!(
                    "error: {}; its variants are not run, the stock ones are",
                    e.message
                );
                patched_qemu_error = Some(e.message);
                None
            }
            Err(e) => return Err(report(e)),
        }
    } else {
        None
    };
    Ok(Prepared {
        scenarios,
        images,
        snapshots,
        results,
        runtime,
        patched_qemu,
        patched_qemu_error,
    })
}

/// Scenario files, fully checked; none is an error (exit 2).
pub fn load_scenarios(paths: &[PathBuf]) -> Result<Vec<Scenario>, PrepareError> {
    let scenarios = scenario::load_paths(paths).map_err(|e| PrepareError {
        message: e.to_string(),
        code: EXIT_USAGE,
    })?;
    if scenarios.is_empty() {
        return Err(PrepareError {
            message: format!("no scenario files in {}", display_paths(paths)),
            code: EXIT_USAGE,
        });
    }
    Ok(scenarios)
}

/// The temporary directory for sockets and the agent binary.
pub fn runtime_dir() -> Result<tempfile::TempDir, PrepareError> {
    tempfile::Builder::new()
        .prefix("testbed-")
        .tempdir()
        .map_err(|e| PrepareError::skip(format!("cannot create a runtime directory: {e}")))
}

/// The embedded guest agent, written into `dir`.
pub fn write_agent(dir: &Path) -> Result<PathBuf, PrepareError> {
    crate::agent::write_to(dir)
        .map_err(|e| PrepareError::skip(format!("cannot write the agent: {e}")))
}

/// Fetches (or finds in the cache) the kernel of `spec`, extracts its PVH
/// entry unless `--bzimage`, and builds its initramfs. A spec naming no
/// available kernel is exit 2, anything else that fails exit 125.
pub fn prepare_kernel(
    cache: &images::Cache,
    spec: &images::KernelSpec,
    options: &RunOptions,
    agent: &Path,
    progress: &mut dyn FnMut(images::Progress),
) -> Result<KernelImages, PrepareError> {
    prepare_kernel_with(
        cache,
        spec,
        options,
        agent,
        &InitramfsExtras::default(),
        progress,
    )
}

/// What an initramfs holds beyond the agent and the scenarios' modules.
#[derive(Debug, Clone, Default)]
pub struct InitramfsExtras {
    /// Module groups added where the kernel has all of a group (the agent
    /// loads them with the rest).
    pub optional_modules: Vec<Vec<&'static str>>,
    /// (path in the guest, file on the host), e.g. selftest binaries.
    pub files: Vec<(String, PathBuf)>,
}

/// [`prepare_kernel`] with further modules and files in the initramfs.
pub fn prepare_kernel_with(
    cache: &images::Cache,
    spec: &images::KernelSpec,
    options: &RunOptions,
    agent: &Path,
    extras: &InitramfsExtras,
    progress: &mut dyn FnMut(images::Progress),
) -> Result<KernelImages, PrepareError> {
    let kernel = tokio::task::block_in_place(|| images::resolve_kernel(cache, spec, progress))
        .map_err(|e| PrepareError {
            message: format!("kernel {spec}: {e}"),
            code: if e.is_bad_input() {
                EXIT_USAGE
            } else {
                EXIT_SKIP
            },
        })?;
    let pvh = if options.bzimage {
        None
    } else {
        tokio::task::block_in_place(|| images::pvh_kernel(cache, &kernel, progress))
            .map_err(|e| PrepareError::skip(format!("kernel {}: {e}", kernel.release)))?
    };
    let boot_image = pvh.unwrap_or_else(|| kernel.bzimage.clone());
    let busybox = PathBuf::from("/bin/busybox");
    let modules = guest_modules(options.accel);
    let mut optional = optional_guest_modules();
    optional.extend(extras.optional_modules.iter().cloned());
    let optional: Vec<&[&str]> = optional.iter().map(Vec::as_slice).collect();
    let initramfs = images::InitramfsSpec {
        kernel: &kernel,
        modules: &modules,
        optional: &optional,
        agent,
        busybox: &busybox,
        files: &extras.files,
    };
    let initrd =
        tokio::task::block_in_place(|| images::build_initramfs(cache, &initramfs, progress))
            .map_err(|e| PrepareError::skip(format!("initramfs for {}: {e}", kernel.release)))?;
    Ok(KernelImages {
        kernel,
        boot_image,
        initrd,
        agent: agent.to_path_buf(),
    })
}

/// Builds (or finds in the cache) the patched QEMU of the project in `project`.
pub fn prepare_patched_qemu(
    cache: &images::Cache,
    project: &Path,
    qemu_tree: Option<&Path>,
    progress: &mut dyn FnMut(images::Progress),
) -> Result<images::QemuBuild, PrepareError> {
    let spec = crate::qemu::patched_qemu_spec(project, qemu_tree);
    tokio::task::block_in_place(|| images::build_qemu(cache, &spec, progress)).map_err(|e| {
        PrepareError {
            message: format!("patched qemu: {e}"),
            code: if e.is_bad_input() {
                EXIT_USAGE
            } else {
                EXIT_SKIP
            },
        }
    })
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
    vec![
        vendor,
        "vfio_pci",
        "vfio_iommu_type1",
        "irqbypass",
        "pvpanic_mmio",
    ]
}

/// Module groups the agent loads where the kernel has all of a group: each
/// vDPA model's modules (kernels the testbed builds have them, Debian's
/// lack vdpa_sim and vp_vdpa). A scenario using the model on a kernel
/// without them fails at its `bind`, naming the missing modules.
pub fn optional_guest_modules() -> Vec<Vec<&'static str>> {
    wire::DeviceModel::ALL
        .iter()
        .filter_map(|m| m.vdpa())
        .map(|v| v.modules.to_vec())
        .collect()
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
        let (here, elsewhere): (Vec<&Scenario>, Vec<&Scenario>) = prepared
            .scenarios
            .iter()
            .partition(|s| s.runs_on(variant.name));
        for scenario in elsewhere {
            ui.line(&format!(
                "{:<14} {:<32} not run: the scenario names its variants ({})",
                variant.name,
                scenario.name,
                scenario.variants.as_deref().unwrap_or_default().join(", ")
            ));
        }
        let here: Vec<Scenario> = here.into_iter().cloned().collect();
        if let (crate::variant::QemuKind::Patched, Some(why)) =
            (variant.qemu, &prepared.patched_qemu_error)
        {
            for scenario in &here {
                ui.line(&format!(
                    "{:<14} {:<32} {}",
                    variant.name,
                    scenario.name,
                    Verdict::NotRun.label()
                ));
                cells.push(Cell {
                    scenario: scenario.name.clone(),
                    variant: variant.name,
                    verdict: Verdict::NotRun,
                    detail: vec![why.clone()],
                    report: None,
                    diff: None,
                });
            }
            continue;
        }
        for (i, group) in plan::group(&here, options.fresh_boot).iter().enumerate() {
            let outcomes = if options.restores() {
                prepared
                    .restore(&options, variant, i, &group.scenarios, &group.devices, &ui)
                    .await
                    .map(|g| g.outcomes)
            } else {
                prepared
                    .boots(&options, variant, i, &group.scenarios, &group.devices, &ui)
                    .await
            };
            let outcomes = match outcomes {
                Ok(o) => o,
                Err(message) => {
                    eprintln!("error: {message}");
                    ui.finish();
                    return EXIT_SKIP;
                }
            };
            for scenario in &group.scenarios {
                let outcome = runner::outcome_of(&outcomes, &scenario.name);
                let cell = judge(&prepared.snapshots, variant, scenario, outcome);
                let retried = match cell.report.as_ref().map(|r| &r.retried_after) {
                    Some(Some(_)) => crate::lost_wakeup::SECOND_TRY,
                    _ => "",
                };
                ui.line(&format!(
                    "{:<14} {:<32} {}{retried}",
                    variant.name,
                    scenario.name,
                    cell.verdict.label()
                ));
                cells.push(cell);
            }
            boots.extend(outcomes.into_iter().map(|o| (variant.name, o)));
        }
    }
    ui.finish();
    if cells.is_empty() {
        eprintln!("error: none of the selected scenarios runs on the selected variants");
        return EXIT_USAGE;
    }
    print_table(&cells);
    println!();
    print!(
        "{}",
        crate::summary::render(&crate::summary::summarize(&cells))
    );
    if let Some(path) = &options.json {
        if let Err(e) = write_json(path, &prepared, &cells, &boots) {
            eprintln!("error: writing {}: {e}", path.display());
            return EXIT_FAILED;
        }
    }
    exit_code(&cells)
}

impl Prepared {
    /// Group `index`'s scenarios in one boot, then new boots for whatever
    /// a break left undone ([`boots`]).
    pub(crate) async fn boots(
        &self,
        options: &RunOptions,
        variant: &'static Variant,
        index: usize,
        scenarios: &[&Scenario],
        devices: &[crate::qemu::PciDevice],
        ui: &Ui,
    ) -> Result<Vec<BootOutcome>, String> {
        let target = self.target(variant, index);
        boots(options, &target, variant, scenarios, devices, &mut |e| {
            ui.run(e)
        })
        .await
    }
}

impl RunOptions {
    /// Each scenario starts from a restored L1 (where the variant allows).
    pub fn restores(&self) -> bool {
        !self.fresh_boot && !self.share_boots
    }
}

impl Prepared {
    /// Group `index`'s scenarios, each from a restored L1 (or shared where
    /// restore is impossible, said on the UI): one outcome per L1 started.
    pub(crate) async fn restore(
        &self,
        options: &RunOptions,
        variant: &'static Variant,
        index: usize,
        scenarios: &[&Scenario],
        devices: &[crate::qemu::PciDevice],
        ui: &Ui,
    ) -> Result<crate::restore::GroupOutcome, String> {
        let target = self.target(variant, index);
        for dir in [&target.log_dir, &target.runtime_dir] {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let cfg = boot_config(options, &target, variant, scenarios, devices)?;
        let cache = images::Cache::default_location();
        let group =
            crate::restore::run_group(&cache, &cfg, scenarios, timeouts(options), &mut |e| {
                ui.run(e)
            })
            .await;
        match &group.mode {
            crate::restore::GroupMode::Shared { reason } => ui.line(&format!(
                "{:<14} boot {index}: scenarios share one boot: {reason}",
                variant.name
            )),
            crate::restore::GroupMode::Restored { state, saved } => {
                let saved = match saved {
                    Some((boot, save)) => format!(
                        " (saved now: booted in {:.1} s, saved in {:.1} s)",
                        boot.as_secs_f64(),
                        save.as_secs_f64()
                    ),
                    None => String::new(),
                };
                ui.line(&format!(
                    "{:<14} boot {index}: each scenario from L1 state {}{saved}",
                    variant.name,
                    state.display()
                ))
            }
        }
        Ok(group)
    }

    fn target(&self, variant: &'static Variant, index: usize) -> BootTarget<'_> {
        BootTarget {
            images: &self.images,
            patched_qemu: self.patched_qemu.as_ref(),
            log_dir: self
                .results
                .join(variant.name)
                .join(format!("boot-{index}")),
            runtime_dir: self
                .runtime
                .path()
                .join(format!("{}-{index}", variant.name)),
        }
    }
}

/// Where one boot gets its images and puts its files.
pub struct BootTarget<'a> {
    pub images: &'a KernelImages,
    pub patched_qemu: Option<&'a images::QemuBuild>,
    /// Console log, QEMU's stderr and the QMP transcript.
    pub log_dir: PathBuf,
    /// Sockets: keep it short (a unix socket path has at most 107 bytes).
    pub runtime_dir: PathBuf,
}

/// One L1 boot running `scenarios` in order, with the run options' QEMU,
/// accelerator, timeouts and extra kernel command line.
pub async fn boot(
    options: &RunOptions,
    target: &BootTarget<'_>,
    variant: &'static Variant,
    scenarios: &[&Scenario],
    devices: &[crate::qemu::PciDevice],
    on_event: &mut (dyn FnMut(runner::RunEvent) + Send),
) -> Result<BootOutcome, String> {
    let cfg = boot_config(options, target, variant, scenarios, devices)?;
    Ok(runner::run_boot(&cfg, scenarios, timeouts(options), on_event).await)
}

/// [`boot`], and when a scenario breaks that boot, new boots for the rest
/// (the scenario itself once more first if it stalled on the stock QEMU's
/// lost wakeup; `runner::rest_on_new_boots`): one outcome per L1 started.
pub async fn boots(
    options: &RunOptions,
    target: &BootTarget<'_>,
    variant: &'static Variant,
    scenarios: &[&Scenario],
    devices: &[crate::qemu::PciDevice],
    on_event: &mut (dyn FnMut(runner::RunEvent) + Send),
) -> Result<Vec<BootOutcome>, String> {
    let cfg = boot_config(options, target, variant, scenarios, devices)?;
    let timeouts = timeouts(options);
    let first = runner::run_boot(&cfg, scenarios, timeouts, on_event).await;
    Ok(runner::rest_on_new_boots(&cfg, first, scenarios, timeouts, on_event).await)
}

/// The run's timeouts.
pub fn timeouts(options: &RunOptions) -> Timeouts {
    Timeouts {
        boot: options.boot_timeout,
        step: options.step_timeout,
        shutdown: Duration::from_secs(30),
    }
}

/// The L1 of `scenarios` as [`boot`] would start it.
pub fn boot_config(
    options: &RunOptions,
    target: &BootTarget<'_>,
    variant: &'static Variant,
    scenarios: &[&Scenario],
    devices: &[crate::qemu::PciDevice],
) -> Result<BootConfig, String> {
    for dir in [&target.log_dir, &target.runtime_dir] {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let (qemu, data_dirs) = crate::qemu::qemu_for(variant, &options.qemu, target.patched_qemu);
    let initrd = if scenarios.iter().any(|s| s.needs_l2()) {
        // the VMM is the binary this boot runs on: resolve a bare name through PATH
        let vmm = which(&qemu).ok_or_else(|| format!("{} not found in PATH", qemu.display()))?;
        let firmware = if data_dirs.is_empty() {
            images::system_data_dirs()
        } else {
            data_dirs.clone()
        };
        let cache = images::Cache::default_location();
        let t0 = Instant::now();
        let initrd = tokio::task::block_in_place(|| {
            let virtio = scenarios.iter().any(|s| s.l2_has_vdpa());
            crate::nested::nested_initrd(
                &cache,
                target.images,
                &vmm,
                &firmware,
                virtio,
                &mut |_| {},
            )
        })
        .map_err(|e| {
            format!(
                "initramfs with an L2 for {}: {e}",
                target.images.kernel.release
            )
        })?;
        eprintln!(
            "nested initramfs ({} MB, VMM {}) ready in {:.1} s",
            std::fs::metadata(&initrd)
                .map(|m| m.len() >> 20)
                .unwrap_or(0),
            vmm.display(),
            t0.elapsed().as_secs_f64()
        );
        initrd
    } else {
        target.images.initrd.clone()
    };
    let cfg = BootConfig {
        qemu,
        data_dirs,
        variant,
        accel: options.accel,
        kernel: target.images.boot_image.clone(),
        initrd,
        extra_cmdline: options.append.clone(),
        devices: devices.to_vec(),
        memory_mib: 1024,
        smp: options.smp.unwrap_or(variant.smp),
        extra_args: options.qemu_args.clone(),
        runtime_dir: target.runtime_dir.clone(),
        console_log: target.log_dir.join("console.log"),
    };
    Ok(cfg)
}

/// `name` itself when it has a slash, else the first executable of that
/// name in PATH.
pub fn which(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return Some(name.to_path_buf()).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The report of `scenario` in a boot's outcome, or why there is none (the
/// guest never got ready, or the run ended before the scenario).
pub fn scenario_report(
    variant: &Variant,
    scenario: &Scenario,
    outcome: &BootOutcome,
) -> Result<Report, String> {
    let run = outcome.runs.iter().find(|r| r.scenario == scenario.name);
    let (Some(ready), Some(run)) = (&outcome.ready, run) else {
        return Err(outcome
            .failure
            .as_ref()
            .map_or("the guest did not boot", |f| f.message.as_str())
            .to_owned());
    };
    let header = report::Header {
        variant: variant.name.to_owned(),
        kernel_release: ready.platform.kernel_release.clone(),
        qemu_version: outcome.qemu_version.clone(),
    };
    Ok(Report::new(scenario, header, &ready.platform, run))
}

/// Builds the report of one scenario run, checks it and compares it with
/// its snapshot under `snapshots`.
pub fn judge(
    snapshots: &Path,
    variant: &'static Variant,
    scenario: &Scenario,
    outcome: &BootOutcome,
) -> Cell {
    let mut cell = Cell {
        scenario: scenario.name.clone(),
        variant: variant.name,
        verdict: Verdict::Pass,
        detail: Vec::new(),
        report: None,
        diff: None,
    };
    let report = match scenario_report(variant, scenario, outcome) {
        Ok(report) => report,
        Err(why) => {
            cell.verdict = Verdict::NoBoot;
            cell.detail.push(format!(
                "{why}\n    console log: {}",
                outcome.console_log.display()
            ));
            return cell;
        }
    };
    for check in report.checks() {
        if !check.passed {
            cell.verdict = Verdict::ChecksFailed;
            cell.detail.push(format!(
                "check {} failed: {}",
                check.expectation, check.detail
            ));
        }
    }
    if let Some(failure) = &report.failure {
        cell.verdict = Verdict::Broken;
        cell.detail.push(format!(
            "{failure}\n    console log: {}",
            outcome.console_log.display()
        ));
    }
    match report::compare_snapshot(snapshots, variant.name, &scenario.name, &report) {
        SnapshotOutcome::Matched => {}
        SnapshotOutcome::New => {
            if cell.verdict == Verdict::Pass {
                cell.verdict = Verdict::New;
            }
            cell.detail.push(format!(
                "no snapshot at {}: review with `cargo insta review`",
                snapshots
                    .join(variant.name)
                    .join(format!("{}.snap", scenario.name))
                    .display()
            ));
        }
        SnapshotOutcome::Accepted
        | SnapshotOutcome::Mismatched {
            accepted: true,
            error: None,
            ..
        } => {
            if cell.verdict == Verdict::Pass {
                cell.verdict = Verdict::Accepted;
            }
        }
        SnapshotOutcome::Mismatched { diff, .. } => {
            if cell.verdict == Verdict::Pass {
                cell.verdict = Verdict::Mismatch;
            }
            cell.diff = Some(diff);
            cell.detail.push(
                "report differs from the snapshot (diff above); review with `cargo insta review`"
                    .into(),
            );
        }
    }
    cell.report = Some(report);
    cell
}

fn exit_code(cells: &[Cell]) -> u8 {
    if cells.iter().any(|c| c.verdict == Verdict::NoBoot) {
        EXIT_SKIP
    } else if cells
        .iter()
        .all(|c| matches!(c.verdict, Verdict::Pass | Verdict::Accepted))
    {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

fn print_table(cells: &[Cell]) {
    println!();
    println!("{:<32} {:<14} RESULT", "SCENARIO", "VARIANT");
    for cell in cells {
        println!(
            "{:<32} {:<14} {}",
            cell.scenario,
            cell.variant,
            cell.verdict.label()
        );
        for line in &cell.detail {
            println!("    {line}");
        }
    }
    let passed = cells
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Pass | Verdict::Accepted))
        .count();
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
        "kernel": prepared.images.kernel.description,
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
pub fn project_dir(scenario_path: &Path) -> PathBuf {
    let absolute =
        std::fs::canonicalize(scenario_path).unwrap_or_else(|_| scenario_path.to_path_buf());
    absolute
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn list_kernels() -> u8 {
    let ui = Ui::new();
    let cache = images::Cache::default_location();
    let kernels = images::list_debian_kernels(&cache, &mut |p| ui.images(p));
    ui.finish();
    match kernels {
        Ok(kernels) => {
            for line in kernel_list_lines(&kernels) {
                println!("{line}");
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SKIP
        }
    }
}

/// `testbed list kernels`: one line per upstream version (a `debian:`
/// spec names no Debian revision) with the Debian version that spec
/// resolves to, the newest. Older revisions of the same upstream version
/// (e.g. a backport rebuilt as `-2~bpo12+1` beside `-1~bpo12+1`, each in
/// its own package) are named on that line. `kernels` is sorted as
/// `images::list_debian_kernels` returns it: by version, then Debian version.
pub fn kernel_list_lines(kernels: &[images::DebianKernel]) -> Vec<String> {
    let mut lines = Vec::new();
    for same in kernels.chunk_by(|a, b| a.version == b.version) {
        let (newest, older) = same.split_last().expect("chunks are not empty");
        let mut older: Vec<&str> = older.iter().map(|k| k.debian_version.as_str()).collect();
        older.retain(|v| *v != newest.debian_version);
        older.dedup();
        let spec = format!("debian:{}", newest.version);
        let mut line = format!("{spec:<18} {}", newest.debian_version);
        if !older.is_empty() {
            line.push_str(&format!(
                " (older revisions not used: {})",
                older.join(", ")
            ));
        }
        lines.push(line);
    }
    lines
}

/// `testbed bench`: boots `iterations` times per variant on a warm cache and
/// prints the median of each phase, and the end-to-end interrupt rate of the
/// scenario's `fire` steps (interrupts raised per second of those steps'
/// wall time, as the host saw them: raise, delivery or accounting, report).
/// With several variants it also prints each rate as a ratio to the first.
/// One boot of the single scenario of `options` on its first variant, for
/// bisects: the report (checks and snapshot are not judged) and the boot's
/// console log, or the exit code when there is none (2 bad input, 125 no
/// kernel or no boot).
pub async fn probe(options: &RunOptions, ui: &Ui) -> Result<(Report, PathBuf), u8> {
    let prepared = prepare(options, ui)?;
    let (Some(variant), [scenario]) = (options.variants.first(), prepared.scenarios.as_slice())
    else {
        eprintln!("error: a probe runs one scenario on one variant");
        return Err(EXIT_USAGE);
    };
    if !scenario.runs_on(variant.name) {
        eprintln!("error: {} does not run on {}", scenario.name, variant.name);
        return Err(EXIT_USAGE);
    }
    let group = plan::group(std::slice::from_ref(scenario), true);
    let outcomes = prepared
        .boots(
            options,
            variant,
            0,
            &group[0].scenarios,
            &group[0].devices,
            ui,
        )
        .await
        .map_err(|e| {
            eprintln!("error: {e}");
            EXIT_SKIP
        })?;
    let outcome = runner::outcome_of(&outcomes, &scenario.name);
    match scenario_report(variant, scenario, outcome) {
        Ok(report) => Ok((report, outcome.console_log.clone())),
        Err(why) => {
            eprintln!(
                "error: {}: {why} (console log: {})",
                prepared.images.kernel.release,
                outcome.console_log.display()
            );
            Err(EXIT_SKIP)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(version: &str, debian_version: &str, package: &str) -> images::DebianKernel {
        let deb = images::DebPackage {
            name: package.into(),
            version: debian_version.into(),
            sha256: String::new(),
            size: 0,
        };
        images::DebianKernel {
            version: images::KernelVersion::parse(version).unwrap(),
            debian_version: debian_version.into(),
            image_package: deb.clone(),
            packages: vec![deb],
        }
    }

    #[test]
    fn kernel_list_has_one_line_per_upstream_version() {
        // bookworm-backports carries 6.12.90 twice: -1~bpo12+1 as
        // linux-image-6.12.90+deb12-amd64 and -2~bpo12+1 as +deb12.1
        let kernels = [
            kernel(
                "6.12.88",
                "6.12.88-1~bpo12+1",
                "linux-image-6.12.88+deb12-amd64",
            ),
            kernel(
                "6.12.90",
                "6.12.90-1~bpo12+1",
                "linux-image-6.12.90+deb12-amd64",
            ),
            kernel(
                "6.12.90",
                "6.12.90-2~bpo12+1",
                "linux-image-6.12.90+deb12.1-amd64",
            ),
            kernel("7.2.13", "7.2.13-1", "linux-image-7.2.13+deb14-amd64"),
            // the same version from two suites: one revision, named once
            kernel("7.2.13", "7.2.13-1", "linux-image-amd64"),
        ];
        assert_eq!(
            kernel_list_lines(&kernels),
            [
                "debian:6.12.88     6.12.88-1~bpo12+1",
                "debian:6.12.90     6.12.90-2~bpo12+1 (older revisions not used: 6.12.90-1~bpo12+1)",
                "debian:7.2.13      7.2.13-1",
            ]
        );
        assert!(kernel_list_lines(&[]).is_empty());
    }
}
