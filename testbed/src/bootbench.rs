//! `testbed bench-boots`: boot L1 N times in a row on one variant and
//! kernel, with no scenario, and measure each boot's time to the agent's
//! Ready. Every boot must reach the agent: a boot that does not is a bug
//! to find, so there is no retry; its console log, QEMU's stderr and the
//! QMP transcript stay in its directory, and the command prints the
//! console's tail and QEMU's last words.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::qemu::Accel;
use crate::run::{self, BootTarget, RunOptions, EXIT_FAILED, EXIT_OK, EXIT_SKIP, EXIT_USAGE};
use crate::ui::Ui;
use crate::variant;

#[derive(clap::Args, Debug)]
pub struct BootBenchArgs {
    /// Boots to make, one after another
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub count: u32,
    /// Variant to boot
    #[arg(long, short = 'V')]
    pub variant: String,
    /// Kernel spec: debian:MAJOR.MINOR[.PATCH], path:BZIMAGE[,modules=DIR] or git:TREE[@REV]
    #[arg(long, short = 'k', default_value = "debian:7.2")]
    pub kernel: String,
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
    /// L1 CPUs, instead of the variant's own count
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub smp: Option<u32>,
    /// An extra QEMU argument, appended last (repeatable)
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
    /// Extra words for the guest kernel command line
    #[arg(long = "append")]
    pub append: Vec<String>,
    /// Where each boot's logs go (default: results/bench-boots/<variant>)
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Write every boot's figures as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One boot's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootRecord {
    pub index: usize,
    /// QEMU start to QMP ready.
    pub qemu_start: f64,
    /// QMP `cont` to the agent's Ready: the kernel's boot.
    pub to_ready: Option<f64>,
    /// Ready to QEMU's exit after the power-off request.
    pub shutdown: Option<f64>,
    /// Why the boot failed (before Ready, or at power-off).
    pub failure: Option<String>,
    pub log_dir: PathBuf,
}

impl BootRecord {
    pub fn reached_agent(&self) -> bool {
        self.to_ready.is_some()
    }
}

/// Median, minimum, maximum, mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub stddev: f64,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        mean,
        stddev: var.sqrt(),
    })
}

/// The last `n` lines of a text file, or why it could not be read.
fn tail_of(path: &Path, n: usize) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..]
                .iter()
                .map(|l| l.to_string())
                .collect()
        }
        Err(e) => vec![format!("({}: {e})", path.display())],
    }
}

pub async fn main(args: BootBenchArgs) -> u8 {
    let variant = match variant::lookup(&args.variant) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let kernel: images::KernelSpec = match args.kernel.parse() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let accel = match args.accel.as_str() {
        "tcg" => Accel::Tcg,
        "kvm" => Accel::Kvm,
        _ => Accel::detect(),
    };
    let options = RunOptions {
        paths: Vec::new(),
        variants: vec![variant],
        kernel,
        json: None,
        fresh_boot: true,
        share_boots: false,
        step_timeout: Duration::from_secs(60),
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
    let ui = Ui::new();
    let code = bench(&args, &options, variant, &ui).await;
    ui.finish();
    code
}

async fn bench(
    args: &BootBenchArgs,
    options: &RunOptions,
    variant: &'static variant::Variant,
    ui: &Ui,
) -> u8 {
    let fail = |message: String, code: u8| {
        eprintln!("error: {message}");
        code
    };
    let cache = images::Cache::default_location();
    let runtime = match run::runtime_dir() {
        Ok(r) => r,
        Err(e) => return fail(e.message, e.code),
    };
    let agent = match run::write_agent(runtime.path()) {
        Ok(a) => a,
        Err(e) => return fail(e.message, e.code),
    };
    let images = match run::prepare_kernel(&cache, &options.kernel, options, &agent, &mut |p| {
        ui.images(p)
    }) {
        Ok(i) => i,
        Err(e) => return fail(e.message, e.code),
    };
    let patched = if variant.qemu == variant::QemuKind::Patched {
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
    let dir = args
        .results
        .clone()
        .unwrap_or_else(|| PathBuf::from("results/bench-boots").join(variant.name));
    // the previous run's boot directories would only mislead
    let _ = std::fs::remove_dir_all(&dir);
    let smp = options.smp.unwrap_or(variant.smp);
    ui.line(&format!(
        "bench-boots: {} boots of {} on {} ({}, {} CPUs, {}), logs in {}",
        args.count,
        images.kernel.release,
        variant.name,
        options.accel.name(),
        smp,
        patched.as_ref().map_or_else(
            || options.qemu.display().to_string(),
            |b| b.description.clone()
        ),
        dir.display()
    ));
    let started = Instant::now();
    let mut records = Vec::new();
    for i in 0..args.count as usize {
        let target = BootTarget {
            images: &images,
            patched_qemu: patched.as_ref(),
            log_dir: dir.join(format!("boot-{i}")),
            runtime_dir: runtime.path().join(format!("{}-{i}", variant.name)),
        };
        let outcome = match run::boot(options, &target, variant, &[], &[], &mut |_| {}).await {
            Ok(o) => o,
            Err(e) => return fail(e, EXIT_SKIP),
        };
        let t = &outcome.timings;
        let reached = outcome.ready.is_some();
        let record = BootRecord {
            index: i,
            qemu_start: t.qemu_start.as_secs_f64(),
            to_ready: reached.then_some(t.boot_to_ready.as_secs_f64()),
            shutdown: (reached && outcome.failure.is_none()).then_some(t.shutdown.as_secs_f64()),
            failure: outcome.failure.as_ref().map(|f| f.message.clone()),
            log_dir: target.log_dir.clone(),
        };
        match (&record.to_ready, &record.failure) {
            (Some(s), None) => ui.line(&format!("boot {i:>3}: agent ready after {s:6.2} s")),
            (Some(s), Some(why)) => ui.line(&format!(
                "boot {i:>3}: agent ready after {s:6.2} s, then FAILED: {why}"
            )),
            (None, why) => {
                ui.line(&format!(
                    "boot {i:>3}: FAILED before the agent: {}",
                    why.as_deref().unwrap_or("no reason")
                ));
                let console = target.log_dir.join("console.log");
                ui.line(&format!("  console log kept: {}", console.display()));
                for l in tail_of(&console, 25) {
                    ui.line(&format!("  console| {l}"));
                }
                for l in tail_of(&target.log_dir.join("qemu-stderr.log"), 10) {
                    ui.line(&format!("  qemu stderr| {l}"));
                }
            }
        }
        records.push(record);
    }
    let reached: Vec<f64> = records.iter().filter_map(|r| r.to_ready).collect();
    let failed: Vec<&BootRecord> = records.iter().filter(|r| r.failure.is_some()).collect();
    println!();
    println!(
        "bench-boots: {} on {} ({} CPUs): {} of {} boots reached the agent, {} failed; {:.0} s in all",
        images.kernel.release,
        variant.name,
        smp,
        reached.len(),
        records.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    let spreads = [
        (
            "QEMU start to QMP",
            spread(&records.iter().map(|r| r.qemu_start).collect::<Vec<_>>()),
        ),
        ("boot to agent ready", spread(&reached)),
        (
            "power-off",
            spread(
                &records
                    .iter()
                    .filter_map(|r| r.shutdown)
                    .collect::<Vec<_>>(),
            ),
        ),
    ];
    for (label, s) in &spreads {
        if let Some(s) = s {
            println!(
                "  {label:<20} median {:6.2} s   min {:6.2}  max {:6.2}  mean {:6.2}  sd {:5.2}",
                s.median, s.min, s.max, s.mean, s.stddev
            );
        }
    }
    for r in &failed {
        println!(
            "  boot {}: {} (logs: {})",
            r.index,
            r.failure.as_deref().unwrap_or(""),
            r.log_dir.display()
        );
    }
    if let Some(path) = &args.json {
        let value = serde_json::json!({
            "variant": variant.name,
            "kernel": images.kernel.release,
            "smp": smp,
            "accel": options.accel.name(),
            "boots": records,
            "boot_to_ready": spreads[1].1,
        });
        let text = serde_json::to_string_pretty(&value).expect("json") + "\n";
        if let Err(e) = run::write_atomically(path, text.as_bytes()) {
            eprintln!("error: writing {}: {e}", path.display());
            return EXIT_FAILED;
        }
    }
    if failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.mean), (2.0, 1.0, 3.0, 2.0));
        assert!((s.stddev - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let s = spread(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail_of(&p, 2), ["c", "d"]);
        assert_eq!(tail_of(&p, 10), ["a", "b", "c", "d"]);
        assert!(tail_of(&dir.path().join("none"), 2)[0].contains("none"));
    }
}
