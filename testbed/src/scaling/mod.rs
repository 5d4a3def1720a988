//! `testbed scaling`: how irqfd registration grows with the number of
//! irqfds, per kernel. One L1 boot per kernel; the agent (guest-agent
//! `scaling.rs`) creates N irqfds in ceil(N / per-VM) VMs for each N of a
//! doubling series, times every KVM_IRQFD from inside L1, and first checks
//! with its kprobes whether KVM registers an irqbypass consumer per irqfd
//! (it does only where device posting is on in L1: on 6.16+
//! `enable_device_posted_irqs` = APICv and the IOMMU's IRQ_POSTING_CAP).
//! `fit.rs` turns the points into a curve, an exponent and a verdict.

pub mod fit;
pub mod output;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::qemu::{Accel, BootConfig};
use crate::run::{self, InitramfsExtras, RunOptions, EXIT_FAILED, EXIT_OK, EXIT_SKIP, EXIT_USAGE};
use crate::runner::{BootOutcome, Interrupt, Session, Timeouts};
use crate::ui::Ui;
use crate::variant::{self, Variant};

#[derive(clap::Args, Debug)]
pub struct ScalingArgs {
    /// Kernel specs to compare (repeatable)
    #[arg(long = "kernel", short = 'k', default_values_t = ["debian:6.16".to_string(), "debian:7.2".to_string()])]
    pub kernels: Vec<String>,
    /// Variant (posting variants make KVM register an irqbypass consumer per irqfd)
    #[arg(long, short = 'V', default_value = "amd-avic")]
    pub variant: String,
    /// Smallest N of the doubling series
    #[arg(long, default_value_t = 64)]
    pub min: u32,
    /// Largest N of the doubling series
    #[arg(long, default_value_t = 16384)]
    pub max: u32,
    /// Irqfds per VM (at most 4072: GSIs below KVM_MAX_IRQ_ROUTES, 0-23 left to the IOAPIC)
    #[arg(long, default_value_t = 64)]
    pub per_vm: u32,
    /// Measurements per N (the curve takes their median)
    #[arg(long, default_value_t = 3)]
    pub repeats: u32,
    /// Irqfds registered with the kprobes on, to see whether KVM registers consumers
    #[arg(long, default_value_t = 16)]
    pub probe: u32,
    /// L1 memory in MiB (every VM costs L1 some)
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    /// L1 CPUs (one keeps TCG's timing steadier)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub smp: u32,
    /// Seconds the agent may stay silent (it sends a heartbeat every second)
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Seconds from QEMU start to the agent being ready
    #[arg(long, default_value_t = 120)]
    pub boot_timeout: u64,
    /// Accelerator: auto picks KVM only on hosts with hardware virtualization
    #[arg(long, default_value = "auto", value_parser = ["auto", "tcg", "kvm"])]
    pub accel: String,
    /// QEMU binary (stock variants)
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// QEMU checkout to build the patched QEMU from (patched variants)
    #[arg(long, value_name = "PATH")]
    pub qemu_tree: Option<PathBuf>,
    /// Extra words for the guest kernel command line
    #[arg(long = "append")]
    pub append: Vec<String>,
    /// Write the points, curves and fits as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where logs go (default: results/scaling)
    #[arg(long)]
    pub results: Option<PathBuf>,
}

/// The doubling series from `min` to `max` (both included when `max` is
/// `min` times a power of two; else the last N below `max`, then `max`).
pub fn series(min: u32, max: u32) -> Result<Vec<u32>, String> {
    if min == 0 || max < min {
        return Err(format!("--min {min} --max {max}: need 1 <= min <= max"));
    }
    let mut s = Vec::new();
    let mut n = min;
    while n < max {
        s.push(n);
        n = n.saturating_mul(2);
    }
    s.push(max);
    Ok(s)
}

/// L1's command line: `tsc=reliable` first. Under TCG on a loaded host
/// the clocksource watchdog finds the TSC unstable after a few minutes
/// and switches L1 to the HPET, whose every read is an MMIO exit to
/// QEMU: the agent reads the clock twice per KVM_IRQFD, so the switch
/// would change the cost of what is being timed in the middle of a series.
fn cmdline(append: &[String]) -> Vec<String> {
    let mut words = vec!["tsc=reliable".to_string()];
    words.extend(append.iter().cloned());
    words
}

/// One kernel's run.
#[derive(Debug, Default)]
pub struct KernelRun {
    pub spec: String,
    pub release: String,
    pub platform: Option<wire::Platform>,
    pub points: Vec<wire::ScalingPoint>,
    pub done: Option<wire::ScalingDone>,
    /// Why the run ended early (boot failure, hang), if it did.
    pub failure: Option<String>,
    pub wall: Duration,
}

struct Inputs {
    variant: &'static Variant,
    kernels: Vec<images::KernelSpec>,
    job: wire::ScalingJob,
    options: RunOptions,
}

fn inputs(args: &ScalingArgs) -> Result<Inputs, String> {
    let variant = variant::lookup(&args.variant).map_err(|e| e.to_string())?;
    let kernels = args
        .kernels
        .iter()
        .map(|k| {
            k.parse()
                .map_err(|e: images::ImagesError| format!("--kernel {k}: {e}"))
        })
        .collect::<Result<Vec<images::KernelSpec>, _>>()?;
    if !(1..=wire::MAX_IRQFDS_PER_VM).contains(&args.per_vm) {
        return Err(format!(
            "--per-vm {}: between 1 and {}",
            args.per_vm,
            wire::MAX_IRQFDS_PER_VM
        ));
    }
    if args.repeats == 0 {
        return Err("--repeats must be at least 1".into());
    }
    let job = wire::ScalingJob {
        series: series(args.min, args.max)?,
        per_vm: args.per_vm,
        repeats: args.repeats,
        probe_irqfds: args.probe,
    };
    let accel = match args.accel.as_str() {
        "tcg" => Accel::Tcg,
        "kvm" => Accel::Kvm,
        _ => Accel::detect(),
    };
    let options = RunOptions {
        paths: Vec::new(),
        variants: vec![variant],
        kernel: kernels[0].clone(),
        json: None,
        fresh_boot: false,
        share_boots: true,
        step_timeout: Duration::from_secs(args.timeout),
        boot_timeout: Duration::from_secs(args.boot_timeout),
        accel,
        qemu: args.qemu.clone(),
        qemu_tree: args.qemu_tree.clone(),
        append: args.append.clone(),
        bzimage: false,
        smp: Some(args.smp),
        qemu_args: Vec::new(),
        results: None,
        snapshots: None,
    };
    Ok(Inputs {
        variant,
        kernels,
        job,
        options,
    })
}

pub async fn main(args: ScalingArgs) -> u8 {
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

async fn run_all(args: &ScalingArgs, inputs: &Inputs, ui: &Ui) -> u8 {
    let options = &inputs.options;
    let cache = images::Cache::default_location();
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| PathBuf::from("results/scaling"));
    let fail = |message: String, code: u8| {
        eprintln!("error: {message}");
        code
    };
    let runtime = match run::runtime_dir() {
        Ok(r) => r,
        Err(e) => return fail(e.message, e.code),
    };
    let agent = match run::write_agent(runtime.path()) {
        Ok(a) => a,
        Err(e) => return fail(e.message, e.code),
    };
    let patched = if inputs.variant.qemu == variant::QemuKind::Patched {
        let project = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        match run::prepare_patched_qemu(&cache, &project, options.qemu_tree.as_deref(), &mut |p| {
            ui.images(p)
        }) {
            Ok(b) => Some(b),
            Err(e) => return fail(e.message, e.code),
        }
    } else {
        None
    };
    let (qemu, data_dirs) = crate::qemu::qemu_for(inputs.variant, &options.qemu, patched.as_ref());
    let timeouts = Timeouts {
        boot: options.boot_timeout,
        step: options.step_timeout,
        shutdown: Duration::from_secs(30),
    };
    let mut runs = Vec::new();
    for (k, spec) in inputs.kernels.iter().enumerate() {
        let mut run = KernelRun {
            spec: spec.to_string(),
            ..Default::default()
        };
        let extras = InitramfsExtras {
            optional_modules: Vec::new(),
            files: Vec::new(),
        };
        let images =
            match run::prepare_kernel_with(&cache, spec, options, &agent, &extras, &mut |p| {
                ui.images(p)
            }) {
                Ok(i) => i,
                Err(e) => {
                    run.failure = Some(e.message);
                    runs.push(run);
                    continue;
                }
            };
        run.release = images.kernel.release.clone();
        let log_dir = results
            .join(inputs.variant.name)
            .join(format!("kernel-{k}"));
        let runtime_dir = runtime.path().join(format!("kernel-{k}"));
        for d in [&log_dir, &runtime_dir] {
            let _ = std::fs::remove_dir_all(d);
            if let Err(e) = std::fs::create_dir_all(d) {
                return fail(format!("creating {}: {e}", d.display()), EXIT_FAILED);
            }
        }
        let cfg = BootConfig {
            qemu: qemu.clone(),
            data_dirs: data_dirs.clone(),
            variant: inputs.variant,
            accel: options.accel,
            kernel: images.boot_image.clone(),
            initrd: images.initrd.clone(),
            extra_cmdline: cmdline(&options.append),
            devices: Vec::new(),
            memory_mib: args.memory,
            smp: args.smp,
            extra_args: Vec::new(),
            runtime_dir,
            console_log: log_dir.join("console.log"),
        };
        let started = Instant::now();
        measure(&cfg, &inputs.job, timeouts, ui, &mut run).await;
        run.wall = started.elapsed();
        ui.line(&output::kernel_summary(&run));
        runs.push(run);
    }
    ui.finish();
    println!();
    print!(
        "{}",
        output::report(inputs.variant.name, &inputs.job, &runs)
    );
    if let Some(path) = &args.json {
        let json = output::json(inputs.variant.name, &inputs.job, &runs);
        let text = serde_json::to_string_pretty(&json).expect("json") + "\n";
        if let Err(e) = run::write_atomically(path, text.as_bytes()) {
            eprintln!("error: writing {}: {e}", path.display());
            return EXIT_FAILED;
        }
    }
    if runs.iter().all(|r| r.platform.is_none()) {
        return EXIT_SKIP;
    }
    if runs
        .iter()
        .any(|r| r.failure.is_some() || r.done.as_ref().is_none_or(|d| d.error.is_some()))
    {
        return EXIT_FAILED;
    }
    EXIT_OK
}

/// One boot: the agent runs the job, the points come back.
async fn measure(
    cfg: &BootConfig,
    job: &wire::ScalingJob,
    timeouts: Timeouts,
    ui: &Ui,
    run: &mut KernelRun,
) {
    let mut outcome = BootOutcome::new(cfg);
    let started = Session::start(cfg, timeouts, &mut outcome, &mut |e| ui.run(e)).await;
    run.platform = outcome.ready.as_ref().map(|r| r.platform.clone());
    if let Some(p) = &run.platform {
        run.release = p.kernel_release.clone();
    }
    let mut session = match started {
        Ok(s) => s,
        Err(f) => {
            run.failure = Some(format!("L1 did not boot to the agent: {}", f.message));
            return;
        }
    };
    let what = format!("the scaling job on {}", run.release);
    if session
        .send(&wire::HostMessage::Scaling(job.clone()))
        .await
        .is_err()
    {
        run.failure = Some(session.gone(&what).await);
        return;
    }
    let total = job.series.len() * job.repeats as usize;
    // the status changes only with N (off a terminal each one is a line)
    let mut shown = None;
    loop {
        match session.next_message(timeouts.step, &what).await {
            Interrupt::Message(wire::AgentMessage::Progress { index }) => {
                let n = job.series[index.min(job.series.len() - 1)];
                if shown != Some((n, run.points.len())) {
                    shown = Some((n, run.points.len()));
                    ui.status(format!(
                        "{}: N={n} ({}/{total} points)",
                        run.release,
                        run.points.len()
                    ));
                }
            }
            Interrupt::Message(wire::AgentMessage::ScalingPoint(p)) => {
                ui.line(&format!(
                    "{}: N={:>6} in {:>4} VMs, repeat {}: {:>10.1} ms total, {:>8.1} us per call in the last tenth",
                    run.release,
                    p.n,
                    p.vms,
                    p.repeat + 1,
                    p.chunked_total_ns as f64 / 1e6,
                    p.last_tenth_median_ns as f64 / 1e3
                ));
                run.points.push(p);
            }
            Interrupt::Message(wire::AgentMessage::ScalingDone(d)) => {
                run.done = Some(d);
                break;
            }
            Interrupt::Message(other) => {
                run.failure = Some(format!(
                    "agent sent {} during {what}",
                    crate::runner::message_kind(&other)
                ));
                return;
            }
            Interrupt::Failed(message) => {
                run.failure = Some(message);
                return;
            }
        }
    }
    let _ = session.poweroff().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ScalingArgs,
    }

    fn parse(words: &[&str]) -> ScalingArgs {
        Cli::try_parse_from(std::iter::once("scaling").chain(words.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn doubling_series() {
        assert_eq!(series(64, 512).unwrap(), [64, 128, 256, 512]);
        assert_eq!(series(64, 1000).unwrap(), [64, 128, 256, 512, 1000]);
        assert_eq!(series(5, 5).unwrap(), [5]);
        assert!(series(0, 8).is_err());
        assert!(series(16, 8).is_err());
    }

    #[test]
    fn defaults_compare_the_list_with_the_xarray_on_the_posting_variant() {
        let i = inputs(&parse(&[])).unwrap();
        assert_eq!(i.variant.name, "amd-avic");
        let kernels: Vec<String> = i.kernels.iter().map(ToString::to_string).collect();
        assert_eq!(kernels, ["debian:6.16", "debian:7.2"]);
        assert_eq!(i.job.series.last(), Some(&16384));
        assert_eq!((i.job.per_vm, i.job.repeats), (64, 3));
    }

    #[test]
    fn bad_inputs_are_refused() {
        for words in [
            &["--per-vm", "0"][..],
            &["--per-vm", "4073"],
            &["--repeats", "0"],
            &["--min", "0"],
            &["--variant", "nope"],
        ] {
            assert!(inputs(&parse(words)).is_err(), "{words:?}");
        }
        assert!(inputs(&parse(&["--per-vm", "4072"])).is_ok());
    }

    #[test]
    fn l1_keeps_its_tsc() {
        assert_eq!(cmdline(&["quiet".into()]), ["tsc=reliable", "quiet"]);
    }
}
