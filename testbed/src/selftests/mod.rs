//! `testbed selftests`: the kernel's own KVM and VFIO selftests, built from
//! the tested kernel's source (images::selftests), packed into the L1
//! initramfs and run one by one by the agent, on each variant, each from a
//! freshly restored L1 (`--share-boots`, or a variant QEMU will not migrate:
//! one boot for as many tests as it survives). A test that takes L1 down is
//! `BROKEN` with what the runner saw, and a fresh L1 goes on with the next
//! one.

pub mod avic;
pub mod boot;
pub mod catalog;
pub mod output;

use std::path::{Path, PathBuf};
use std::time::Duration;

use images::{SelftestBuild, SelftestSource, SelftestSuite};

use crate::qemu::{Accel, BootConfig, PciDevice};
use crate::run::{self, InitramfsExtras, RunOptions, EXIT_FAILED, EXIT_OK, EXIT_SKIP, EXIT_USAGE};
use crate::runner::Timeouts;
use crate::ui::Ui;
use crate::variant::{self, Variant};
use catalog::{Outcome, TestId, Verdict};
use output::Row;

/// Where the selftests live in L1.
pub const GUEST_ROOT: &str = "/selftests";

/// The QEMU id of the device VFIO selftests get.
const VFIO_DEVICE_ID: &str = "vfio0";

/// L1's memory. VFIO's tests pin what they map: vfio_pci_driver_test maps
/// (and so pins) a 1 GiB memcpy region plus the driver's 2 MiB, which 1 GiB
/// of L1 cannot hold (the pin fails, the fixture set-up asserts). Under
/// TCG memory the guest never touches costs the host nothing.
fn memory_mib(vfio: bool) -> u32 {
    if vfio {
        3072
    } else {
        1024
    }
}

#[derive(clap::Args, Debug)]
pub struct SelftestsArgs {
    /// Tests to run: kvm:x86/xapic_ipi_test, x86/xapic_ipi_test or
    /// xapic_ipi_test; default: each suite's default list
    pub tests: Vec<String>,
    /// Suite (repeatable): kvm, vfio; default: both
    #[arg(long = "suite", value_name = "SUITE")]
    pub suites: Vec<String>,
    /// Kernel spec: debian:MAJOR.MINOR[.PATCH], path:BZIMAGE[,modules=DIR] or git:TREE[@REV]
    #[arg(long, short = 'k', default_value = "debian:7.2")]
    pub kernel: String,
    /// Variant to run on (repeatable); default: the default variants
    #[arg(long = "variant", short = 'V')]
    pub variants: Vec<String>,
    /// Also run on this variant and print where the others differ from it
    #[arg(long, value_name = "VARIANT")]
    pub baseline: Option<String>,
    /// Write the results as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write JUnit XML here (one test case per test x variant x kernel)
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Write KTAP here
    #[arg(long)]
    pub ktap: Option<PathBuf>,
    /// Print the tests that would run, then exit
    #[arg(long)]
    pub list: bool,
    /// Seconds a test may run before the agent kills it (TCG is slow)
    #[arg(long, default_value_t = 300)]
    pub test_timeout: u64,
    /// Seconds the agent may stay silent (it sends a heartbeat every second)
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Seconds from QEMU start to the agent being ready
    #[arg(long, default_value_t = 120)]
    pub boot_timeout: u64,
    /// Device model the VFIO selftests get, bound to vfio-pci (edu, igb, e1000e)
    #[arg(long, default_value = "igb")]
    pub vfio_device: String,
    /// Accelerator: auto picks KVM only on hosts with hardware virtualization
    #[arg(long, default_value = "auto", value_parser = ["auto", "tcg", "kvm"])]
    pub accel: String,
    /// QEMU binary (stock variants)
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// QEMU checkout to build the patched QEMU from (patched variants)
    #[arg(long, value_name = "PATH")]
    pub qemu_tree: Option<PathBuf>,
    /// L1 CPUs, instead of the variant's own count
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub smp: Option<u32>,
    /// An extra QEMU argument, appended last (repeatable)
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
    /// Extra words for the guest kernel command line
    #[arg(long = "append")]
    pub append: Vec<String>,
    /// Tests share boots (a fresh boot after a test that takes L1 down),
    /// instead of each starting from a restored L1
    #[arg(long)]
    pub share_boots: bool,
    /// Where logs go (default: results/selftests)
    #[arg(long)]
    pub results: Option<PathBuf>,
}

/// Checked command-line input.
struct Inputs {
    suites: Vec<SelftestSuite>,
    variants: Vec<&'static Variant>,
    baseline: Option<&'static str>,
    vfio_model: wire::DeviceModel,
    options: RunOptions,
    results: PathBuf,
}

fn inputs(args: &SelftestsArgs) -> Result<Inputs, String> {
    let mut suites = Vec::new();
    for s in &args.suites {
        let suite: SelftestSuite = s
            .parse()
            .map_err(|e: images::ImagesError| format!("--suite {s}: {e}"))?;
        if !suites.contains(&suite) {
            suites.push(suite);
        }
    }
    if suites.is_empty() {
        suites = vec![SelftestSuite::Kvm, SelftestSuite::Vfio];
    }
    let mut variants: Vec<&'static Variant> = if args.variants.is_empty() {
        variant::defaults().collect()
    } else {
        args.variants
            .iter()
            .map(|n| variant::lookup(n).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?
    };
    let baseline = match &args.baseline {
        Some(name) => {
            let b = variant::lookup(name).map_err(|e| format!("--baseline: {e}"))?;
            if !variants.iter().any(|v| v.name == b.name) {
                variants.insert(0, b);
            }
            Some(b.name)
        }
        None => None,
    };
    let vfio_model: wire::DeviceModel =
        serde_json::from_value(serde_json::Value::String(args.vfio_device.clone()))
            .ok()
            .filter(|m: &wire::DeviceModel| {
                m.qemu_driver().is_some() && m.vdpa().is_none() && !m.spec().sriov_vf
            })
            .ok_or_else(|| {
                format!(
                    "--vfio-device {}: not a PCI device model VFIO can take (edu, igb, e1000e)",
                    args.vfio_device
                )
            })?;
    let kernel = args
        .kernel
        .parse()
        .map_err(|e: images::ImagesError| e.to_string())?;
    if args.test_timeout == 0 {
        return Err("--test-timeout must be at least 1 second".into());
    }
    let accel = match args.accel.as_str() {
        "tcg" => Accel::Tcg,
        "kvm" => Accel::Kvm,
        _ => Accel::detect(),
    };
    let nested_vmx = crate::qemu::host_nested_vmx();
    if let Some(why) = variants
        .iter()
        .find_map(|v| v.host_problem(accel, nested_vmx))
    {
        return Err(why);
    }
    let options = RunOptions {
        paths: Vec::new(),
        variants: variants.clone(),
        kernel,
        json: None,
        fresh_boot: false,
        share_boots: args.share_boots,
        step_timeout: Duration::from_secs(args.timeout),
        boot_timeout: Duration::from_secs(args.boot_timeout),
        accel,
        qemu: args.qemu.clone(),
        qemu_tree: args.qemu_tree.clone(),
        append: args.append.clone(),
        bzimage: false,
        smp: args.smp,
        qemu_args: args.qemu_args.clone(),
        results: None,
        snapshots: None,
    };
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| PathBuf::from("results/selftests"));
    Ok(Inputs {
        suites,
        variants,
        baseline,
        vfio_model,
        options,
        results,
    })
}

/// A test the run wants, or one of the defaults this source lacks.
enum Wanted {
    Run(TestId),
    Missing(TestId, String),
}

fn select(
    args: &SelftestsArgs,
    suites: &[SelftestSuite],
    build: &SelftestBuild,
) -> Result<Vec<Wanted>, String> {
    let available: Vec<TestId> = build
        .suites
        .iter()
        .filter(|s| suites.contains(&s.suite))
        .flat_map(|s| {
            s.tests.iter().map(|t| TestId {
                suite: s.suite,
                name: t.clone(),
            })
        })
        .collect();
    if !args.tests.is_empty() {
        // a test of a suite that did not build here: say why it is not there
        let missing: Vec<String> = build
            .suites
            .iter()
            .filter(|s| suites.contains(&s.suite))
            .filter_map(|s| s.missing.as_ref().map(|why| format!("{}: {why}", s.suite)))
            .collect();
        return args
            .tests
            .iter()
            .map(|a| {
                catalog::resolve(a, &available)
                    .map(|t| Wanted::Run(t.clone()))
                    .map_err(|e| match missing.as_slice() {
                        [] => e,
                        m => format!("{e}; from {}, {}", build.source, m.join("; ")),
                    })
            })
            .collect();
    }
    let mut wanted = Vec::new();
    for &suite in suites {
        let missing_suite = build
            .suites
            .iter()
            .find(|s| s.suite == suite)
            .and_then(|s| s.missing.clone());
        for name in catalog::defaults(suite) {
            let id = TestId {
                suite,
                name: (*name).to_owned(),
            };
            if available.contains(&id) {
                wanted.push(Wanted::Run(id));
            } else {
                let why = missing_suite.clone().unwrap_or_else(|| {
                    format!(
                        "{} has no {suite} test {name} (kselftest-list.txt)",
                        build.source
                    )
                });
                wanted.push(Wanted::Missing(id, why));
            }
        }
    }
    Ok(wanted)
}

/// The path of a built test in the guest.
fn guest_path(t: &TestId) -> String {
    format!("{GUEST_ROOT}/{}/{}", t.suite, t.name)
}

pub async fn main(args: SelftestsArgs) -> u8 {
    let inputs = match inputs(&args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let ui = Ui::new();
    let code = run_all(&args, &inputs, &ui).await;
    ui.finish();
    code
}

async fn run_all(args: &SelftestsArgs, inputs: &Inputs, ui: &Ui) -> u8 {
    let options = &inputs.options;
    let cache = images::Cache::default_location();
    let fail = |message: String, code: u8| {
        eprintln!("error: {message}");
        code
    };
    let kernel = match tokio::task::block_in_place(|| {
        images::resolve_kernel(&cache, &options.kernel, &mut |p| ui.images(p))
    }) {
        Ok(k) => k,
        Err(e) => {
            return fail(
                format!("kernel {}: {e}", options.kernel),
                if e.is_bad_input() {
                    EXIT_USAGE
                } else {
                    EXIT_SKIP
                },
            )
        }
    };
    let source = match SelftestSource::for_kernel(&options.kernel, &kernel) {
        Ok(s) => s,
        Err(e) => return fail(format!("selftests: {e}"), EXIT_SKIP),
    };
    let build = match tokio::task::block_in_place(|| {
        // every suite, whatever runs: one cache entry per source, and the vfio build is seconds
        images::build_selftests(&cache, &source, &SelftestSuite::ALL, &mut |p| ui.images(p))
    }) {
        Ok(b) => b,
        Err(e) => {
            return fail(
                format!("selftests: {e}"),
                if e.is_bad_input() {
                    EXIT_USAGE
                } else {
                    EXIT_SKIP
                },
            )
        }
    };
    // images said where the sources come from (Progress::SelftestsFrom, with the note)
    let wanted = match select(args, &inputs.suites, &build) {
        Ok(w) => w,
        Err(e) => return fail(e, EXIT_USAGE),
    };
    let to_run: Vec<&TestId> = wanted
        .iter()
        .filter_map(|w| {
            if let Wanted::Run(t) = w {
                Some(t)
            } else {
                None
            }
        })
        .collect();
    if args.list {
        for w in &wanted {
            match w {
                Wanted::Run(t) => println!("{t}"),
                Wanted::Missing(t, why) => println!("{t}  (skip: {why})"),
            }
        }
        return EXIT_OK;
    }
    let files: Vec<(String, PathBuf)> = to_run
        .iter()
        .map(|t| {
            (
                guest_path(t),
                build.root.join(t.suite.to_string()).join(&t.name),
            )
        })
        .collect();
    let vfio_wanted = to_run.iter().any(|t| t.suite == SelftestSuite::Vfio);
    let extras = InitramfsExtras {
        // VFIO selftests open devices through iommufd too, where the kernel has it
        optional_modules: if vfio_wanted {
            vec![vec!["iommufd"]]
        } else {
            Vec::new()
        },
        files,
    };
    let runtime = match run::runtime_dir() {
        Ok(r) => r,
        Err(e) => return fail(e.message, e.code),
    };
    let agent = match run::write_agent(runtime.path()) {
        Ok(a) => a,
        Err(e) => return fail(e.message, e.code),
    };
    let images = match run::prepare_kernel_with(
        &cache,
        &options.kernel,
        options,
        &agent,
        &extras,
        &mut |p| ui.images(p),
    ) {
        Ok(i) => i,
        Err(e) => return fail(e.message, e.code),
    };
    let patched = if inputs
        .variants
        .iter()
        .any(|v| v.qemu == variant::QemuKind::Patched)
    {
        let project = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        match run::prepare_patched_qemu(&cache, &project, options.qemu_tree.as_deref(), &mut |p| {
            ui.images(p)
        }) {
            Ok(b) => {
                ui.line(&format!("patched qemu: {}", b.description));
                Some(b)
            }
            Err(e) => return fail(e.message, e.code),
        }
    } else {
        None
    };
    let devices = if vfio_wanted {
        let m = inputs.vfio_model;
        vec![PciDevice {
            id: VFIO_DEVICE_ID.into(),
            driver: m.qemu_driver().expect("checked").into(),
            props: m.spec().qemu_props.into(),
            hotplug: false,
            addr: None,
            sriov: false,
            hub: None,
        }]
    } else {
        Vec::new()
    };
    let jobs: Vec<boot::TestJob> = to_run
        .iter()
        .map(|t| boot::TestJob {
            name: t.to_string(),
            argv: vec![guest_path(t)],
            cwd: format!("{GUEST_ROOT}/{}", t.suite),
            timeout: Duration::from_secs(catalog::timeout_secs(t, args.test_timeout)),
            vfio_devices: if t.suite == SelftestSuite::Vfio {
                vec![VFIO_DEVICE_ID.into()]
            } else {
                Vec::new()
            },
        })
        .collect();
    let timeouts = Timeouts {
        boot: options.boot_timeout,
        step: options.step_timeout,
        shutdown: Duration::from_secs(30),
    };
    let mut rows = Vec::new();
    let mut headers = Vec::new();
    let mut avic_modes: Vec<String> = Vec::new();
    let mut no_boot = Vec::new();
    for &variant in &inputs.variants {
        let dir = inputs.results.join(variant.name);
        // the previous run's logs of this variant would only mislead
        let _ = std::fs::remove_dir_all(&dir);
        let (qemu, data_dirs) = crate::qemu::qemu_for(variant, &options.qemu, patched.as_ref());
        let config = |n: usize| -> Result<BootConfig, String> {
            let log_dir = dir.join(format!("boot-{n}"));
            let runtime_dir = runtime.path().join(format!("{}-{n}", variant.name));
            for d in [&log_dir, &runtime_dir] {
                std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
            }
            Ok(BootConfig {
                qemu: qemu.clone(),
                data_dirs: data_dirs.clone(),
                variant,
                accel: options.accel,
                kernel: images.boot_image.clone(),
                initrd: images.initrd.clone(),
                extra_cmdline: options.append.clone(),
                devices: devices.clone(),
                memory_mib: memory_mib(vfio_wanted),
                smp: options.smp.unwrap_or(variant.smp),
                extra_args: options.qemu_args.clone(),
                runtime_dir,
                console_log: log_dir.join("console.log"),
            })
        };
        let runs = boot::run_tests(
            &config,
            &jobs,
            timeouts,
            options.restores().then_some(&cache),
            &mut |e| ui.run(e),
        )
        .await;
        match (&runs.restored_from, &runs.shared_because) {
            (Some((state, saved)), _) => ui.line(&format!(
                "{:<14} each test from L1 state {}{}",
                variant.name,
                state.display(),
                match saved {
                    Some((boot, save)) => format!(
                        " (saved now: booted in {:.1} s, saved in {:.1} s)",
                        boot.as_secs_f64(),
                        save.as_secs_f64()
                    ),
                    None => String::new(),
                }
            )),
            (None, Some(reason)) => {
                ui.line(&format!("{:<14} tests share boots: {reason}", variant.name))
            }
            (None, None) => {}
        }
        if let Some(why) = &runs.no_boot {
            no_boot.push(format!("{}: {why}", variant.name));
        }
        let release = runs
            .boots
            .iter()
            .find_map(|b| b.platform.as_ref().map(|p| p.kernel_release.clone()))
            .unwrap_or_else(|| kernel.release.clone());
        headers.push(variant_header(variant.name, &runs, &build));
        if let Some(mode) = runs
            .boots
            .iter()
            .find_map(|b| b.platform.as_ref().and_then(|p| p.avic_mode()))
        {
            avic_modes.push(format!("{}: KVM runs {mode}", variant.name));
        }
        let mut ran = to_run.iter().zip(&runs.tests);
        for w in &wanted {
            let row = match w {
                Wanted::Run(_) => {
                    let Some((t, run)) = ran.next() else { break };
                    let facts = catalog::Facts {
                        iommufd: runs
                            .boots
                            .get(run.boot)
                            .and_then(|b| b.platform.as_ref())
                            .is_some_and(|p| p.iommufd),
                        irq_remapping: runs
                            .boots
                            .get(run.boot)
                            .and_then(|b| b.platform.as_ref())
                            .is_some_and(|p| p.irq_remapping.is_some()),
                    };
                    let verdict = catalog::classify(
                        t,
                        variant.name,
                        &facts,
                        run.result.as_ref(),
                        run.broken.as_deref(),
                        &run.output,
                    );
                    let events = run.result.as_ref().and_then(|r| r.event_counts.clone());
                    let x2avic = runs
                        .boots
                        .get(run.boot)
                        .and_then(|b| b.platform.as_ref())
                        .and_then(|p| p.x2avic);
                    let mode = avic::Mode::of(variant.avic(), x2avic);
                    let verdict = avic::judge(verdict, t, mode, events.as_ref());
                    let log = write_log(&dir, t, run, &verdict);
                    let console = runs
                        .boots
                        .get(run.boot)
                        .map(|b| b.console_log.display().to_string());
                    let retried = match run.retried_after {
                        Some(_) => crate::lost_wakeup::SECOND_TRY,
                        None => "",
                    };
                    ui.line(&format!(
                        "{:<14} {:<36} {}{retried}",
                        variant.name,
                        t.to_string(),
                        verdict.outcome.label()
                    ));
                    Row {
                        test: (*t).clone(),
                        variant: variant.name,
                        kernel: release.clone(),
                        verdict,
                        seconds: run.wall.as_secs_f64(),
                        output: run.output.clone(),
                        log,
                        console_log: console,
                        events,
                        retried_after: run.retried_after.clone(),
                    }
                }
                Wanted::Missing(t, why) => Row {
                    test: t.clone(),
                    variant: variant.name,
                    kernel: release.clone(),
                    verdict: Verdict {
                        outcome: Outcome::Skip,
                        reason: Some(why.clone()),
                    },
                    seconds: 0.0,
                    output: Vec::new(),
                    log: None,
                    console_log: None,
                    events: None,
                    retried_after: None,
                },
            };
            rows.push(row);
        }
    }
    ui.finish();
    println!();
    for line in &avic_modes {
        println!("{line}");
    }
    print!("{}", output::table(&rows));
    if let Some(b) = inputs.baseline {
        let diff = output::baseline_diff(&rows, b);
        println!();
        if diff.is_empty() {
            println!("every variant's results equal the baseline {b}'s");
        } else {
            println!("differences from the baseline {b}:");
            for d in diff {
                println!("  {d}");
            }
        }
    }
    let header = serde_json::json!({
        "kernel": options.kernel.to_string(),
        "source": build.source,
        "source_note": build.note,
        "variants": headers,
    });
    let mut code = if rows.iter().any(|r| r.verdict.outcome.is_failure()) {
        EXIT_FAILED
    } else {
        EXIT_OK
    };
    type Render<'a> = Box<dyn Fn() -> String + 'a>;
    let writes: [(&Option<PathBuf>, Render); 3] = [
        (
            &args.json,
            Box::new(|| {
                serde_json::to_string_pretty(&output::json(header.clone(), &rows)).expect("json")
                    + "\n"
            }),
        ),
        (&args.junit, Box::new(|| output::junit(&rows))),
        (&args.ktap, Box::new(|| output::ktap(&rows))),
    ];
    for (path, text) in writes {
        if let Some(path) = path {
            if let Err(e) = run::write_atomically(path, text().as_bytes()) {
                eprintln!("error: writing {}: {e}", path.display());
                code = EXIT_FAILED;
            }
        }
    }
    // no variant could boot this kernel at all: a bisect should skip it
    if no_boot.len() == inputs.variants.len() {
        for n in no_boot {
            eprintln!("error: {n}");
        }
        return EXIT_SKIP;
    }
    code
}

/// What one variant's boots said about the platform, for the JSON header.
fn variant_header(name: &str, runs: &boot::Runs, build: &SelftestBuild) -> serde_json::Value {
    let first = runs.boots.iter().find(|b| b.platform.is_some());
    serde_json::json!({
        "variant": name,
        "boots": runs.boots.len(),
        "restored": runs.restored_from.is_some(),
        "shared_because": runs.shared_because,
        "qemu": first.map(|b| b.qemu_version.clone()),
        "kernel_release": first.and_then(|b| b.platform.as_ref().map(|p| p.kernel_release.clone())),
        "kvm_vendor": first.and_then(|b| b.platform.as_ref().and_then(|p| p.kvm_vendor.clone())),
        "apicv": first.and_then(|b| b.platform.as_ref().and_then(|p| p.apicv)),
        "avic": first.and_then(|b| b.platform.as_ref().and_then(|p| p.avic_mode())),
        "irq_posting": first.and_then(|b| b.platform.as_ref().map(|p| p.irq_posting)),
        "iommufd": first.and_then(|b| b.platform.as_ref().map(|p| p.iommufd)),
        "source": build.source,
    })
}

/// The test's output, verdict and how it ended, under the variant's directory.
fn write_log(dir: &Path, t: &TestId, run: &boot::TestRun, verdict: &Verdict) -> Option<String> {
    let path = dir
        .join(t.suite.to_string())
        .join(format!("{}.log", t.name));
    let mut text = format!("# {t}: {}", verdict.outcome.label());
    if let Some(r) = &verdict.reason {
        text.push_str(&format!(": {r}"));
    }
    text.push('\n');
    if let Some(result) = &run.result {
        text.push_str(&format!(
            "# status {:?}, {} ms in L1, boot {}\n",
            result.status, result.millis, run.boot
        ));
        for w in &result.kernel_warnings {
            text.push_str(&format!("# kernel warned: {w}\n"));
        }
        if let Some(c) = &result.event_counts {
            text.push_str(&format!("# AVIC events: {}\n", avic::summary(c)));
        }
        if result.dropped_bytes > 0 {
            text.push_str(&format!(
                "# {} bytes of output dropped\n",
                result.dropped_bytes
            ));
        }
    }
    for l in &run.output {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::create_dir_all(path.parent()?).ok()?;
    run::write_atomically(&path, text.as_bytes()).ok()?;
    Some(path.display().to_string())
}
