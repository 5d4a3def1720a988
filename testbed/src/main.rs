//! `testbed`: run irqbypass scenarios in QEMU guests and compare their
//! reports with stored snapshots.
//!
//! Exit codes (shared/design.md): 0 every report matched and every check
//! passed; 1 a mismatch, a failed check or a scenario that broke; 2 bad usage
//! or bad input files; 125 the kernel could not be fetched or booted (so
//! `git bisect run` skips it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use testbed::run::{self, RunOptions};
use testbed::{bisect_cmd, scenario, variant};

#[derive(Parser)]
#[command(
    name = "testbed",
    version,
    about = "Run irqbypass scenarios in QEMU guests with emulated IOMMUs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios and compare their reports with the snapshots
    Run(RunArgs),
    /// Run scenarios on every variant x kernel, in parallel; CI reports and shards
    Matrix(Box<testbed::matrix::MatrixArgs>),
    /// Run the kernel's own KVM and VFIO selftests in L1 on each variant
    Selftests(Box<testbed::selftests::SelftestsArgs>),
    /// Time KVM_IRQFD registration in L1 for N irqfds (doubling N) per kernel: curves, exponents, verdicts
    Scaling(Box<testbed::scaling::ScalingArgs>),
    /// List variants, scenarios or kernels
    List {
        #[arg(value_enum)]
        what: ListWhat,
        /// Scenario files or directories (for `list scenarios`)
        #[arg(default_value = "scenarios")]
        paths: Vec<PathBuf>,
    },
    /// Time the phases of one scenario on a warm cache (median of N boots)
    Bench {
        #[command(flatten)]
        run: RunArgs,
        /// Boots to measure
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        /// Time all the scenarios in shared boots against one boot per
        /// scenario, and check that both ways give the same reports
        #[arg(long)]
        boot_sharing: bool,
    },
    /// Boot L1 N times in a row (no scenario) and time each boot to the
    /// agent; every boot must get there, a failure keeps its logs
    BenchBoots(Box<testbed::bootbench::BootBenchArgs>),
    /// Find the first kernel (Debian version, or commit of --tree) at which
    /// one scenario's checks on one variant pass (or fail) where --good's
    /// did the opposite, or at which its report differs from --good's
    Bisect {
        #[command(flatten)]
        run: RunArgs,
        /// The old end: debian:VERSION, or a revision of --tree
        #[arg(long)]
        good: String,
        /// The new end, whose report differs
        #[arg(long)]
        bad: String,
        /// A clean kernel git tree: bisect its commits with `git bisect
        /// run`, building each; its checkout is restored afterwards
        #[arg(long, value_name = "PATH")]
        tree: Option<PathBuf>,
        /// Also compare the console lines containing TEXT (repeatable)
        #[arg(long, value_name = "TEXT")]
        console_match: Vec<String>,
        /// verdict: the first kernel on which the checks pass, or fail
        /// (git bisect's good/bad); report: the first whose report differs.
        /// Default: the verdict when the scenario has expectations and the
        /// checks differ between the ends, else the report
        #[arg(long, value_enum)]
        question: Option<QuestionArg>,
    },
    /// Run the regression corpus (default: regressions/): each entry's
    /// scenario on the Debian kernels its [regression] table names, and
    /// check that its checks fail or pass there as recorded
    Regressions {
        #[command(flatten)]
        run: RunArgs,
        /// Only the CI cases: one failing and one passing kernel per entry
        #[arg(long)]
        ci: bool,
    },
    /// Fetch or build a kernel (any --kernel spec) and print it as a path:
    /// spec, with the time it took
    Kernel {
        /// debian:VERSION, path:BZIMAGE[,modules=DIR] or git:TREE[@REV]
        spec: String,
    },
    /// Build (or find in the cache) the patched QEMU the patched variants
    /// run, from the pinned source or --qemu-tree plus the qemu-patches/
    /// found from the current directory up, and print its binary, with the
    /// time it took
    Qemu {
        /// QEMU checkout to build from instead of the pinned Debian source
        #[arg(long, value_name = "PATH")]
        qemu_tree: Option<PathBuf>,
    },
    /// Make a kernel git tree from Debian's kernel sources: the linux
    /// source package (the upstream tarball, then one commit per Debian
    /// patch; tags upstream, patched) or, when that has no such version, a
    /// linux-source-X.Y package (Debian's patched tree as one commit; tag
    /// patched)
    KernelTree {
        /// 6.12.107 (newest Debian revision), 6.12.107-1 (exact), or a line
        /// such as 7.3 (newest linux-source-7.3)
        version: String,
        /// Where the tree goes (must not exist)
        dest: PathBuf,
        /// Which kind of source: auto (the source package when it has the
        /// version, else linux-source-X.Y), source-package, linux-source
        #[arg(long, value_enum, default_value = "auto")]
        from: TreeFromArg,
    },
    /// One `git bisect run` step of `testbed bisect --tree` (internal)
    #[command(hide = true)]
    BisectStep {
        #[command(flatten)]
        run: RunArgs,
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        console_match: Vec<String>,
        #[arg(long, value_enum)]
        question: QuestionArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum QuestionArg {
    Verdict,
    Report,
}

impl From<QuestionArg> for testbed::bisect::Question {
    fn from(a: QuestionArg) -> testbed::bisect::Question {
        match a {
            QuestionArg::Verdict => testbed::bisect::Question::Verdict,
            QuestionArg::Report => testbed::bisect::Question::Report,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum TreeFromArg {
    Auto,
    SourcePackage,
    LinuxSource,
}

impl From<TreeFromArg> for images::TreeFrom {
    fn from(a: TreeFromArg) -> images::TreeFrom {
        match a {
            TreeFromArg::Auto => images::TreeFrom::Auto,
            TreeFromArg::SourcePackage => images::TreeFrom::SourcePackage,
            TreeFromArg::LinuxSource => images::TreeFrom::LinuxSource,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ListWhat {
    Variants,
    Scenarios,
    Kernels,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario files or directories of them
    #[arg(default_value = "scenarios")]
    paths: Vec<PathBuf>,
    /// Variant to run on (repeatable); default: the default variants
    #[arg(long = "variant", short = 'V')]
    variants: Vec<String>,
    /// Kernel spec: debian:MAJOR.MINOR[.PATCH], path:BZIMAGE[,modules=DIR] or git:TREE[@REV]
    #[arg(long, short = 'k', default_value = "debian:7.2")]
    kernel: String,
    /// Write the machine-readable report here
    #[arg(long)]
    json: Option<PathBuf>,
    /// Give every scenario its own boot (by default each starts from an L1
    /// restored from a saved state)
    #[arg(long, conflicts_with = "share_boots")]
    fresh_boot: bool,
    /// Scenarios that agree on devices share one boot, instead of each
    /// starting from a restored L1
    #[arg(long)]
    share_boots: bool,
    /// Seconds the agent may stay silent during a scenario
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Seconds from QEMU start to the agent being ready
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// Accelerator: auto picks KVM only on hosts with hardware virtualization
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// QEMU binary
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// QEMU checkout to build the patched QEMU from (patched variants),
    /// instead of the pinned Debian source; qemu-patches/ still applies
    #[arg(long, value_name = "PATH")]
    qemu_tree: Option<PathBuf>,
    /// Boot the bzImage as it is (slower under TCG: it decompresses itself)
    /// instead of the uncompressed kernel through its PVH entry
    #[arg(long)]
    bzimage: bool,
    /// L1 CPUs, instead of the variant's own count (amd-avic: 2, others: 1)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=8))]
    smp: Option<u32>,
    /// An extra QEMU argument, appended last (repeatable), e.g.
    /// `--qemu-arg=-trace --qemu-arg='igb_irq_*'`
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    qemu_args: Vec<String>,
    /// Extra words for the guest kernel command line
    #[arg(long = "append")]
    append: Vec<String>,
    /// Where console logs and reports of each run go (default: results/ beside scenarios/)
    #[arg(long)]
    results: Option<PathBuf>,
    /// Snapshot directory (default: snapshots/ beside the scenarios' directory)
    #[arg(long)]
    snapshots: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Auto,
    Tcg,
    Kvm,
}

impl RunArgs {
    /// The flags that make another testbed process run the same way (the
    /// steps of a git bisect); the kernel is left out.
    fn step_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        let mut flag = |name: &str, value: std::ffi::OsString| {
            a.push(name.into());
            a.push(value);
        };
        for v in &self.variants {
            flag("--variant", v.into());
        }
        flag("--timeout", self.timeout.to_string().into());
        flag("--boot-timeout", self.boot_timeout.to_string().into());
        let accel = match self.accel {
            AccelArg::Auto => "auto",
            AccelArg::Tcg => "tcg",
            AccelArg::Kvm => "kvm",
        };
        flag("--accel", accel.into());
        flag("--qemu", self.qemu.clone().into());
        if let Some(t) = &self.qemu_tree {
            flag("--qemu-tree", t.clone().into());
        }
        for w in &self.append {
            flag("--append", w.into());
        }
        if let Some(r) = &self.results {
            flag("--results", r.clone().into());
        }
        if let Some(s) = &self.snapshots {
            flag("--snapshots", s.clone().into());
        }
        if self.bzimage {
            a.push("--bzimage".into());
        }
        for p in &self.paths {
            a.push(
                std::fs::canonicalize(p)
                    .unwrap_or_else(|_| p.clone())
                    .into(),
            );
        }
        a
    }

    /// A bisect probes one scenario file on one variant.
    fn check_bisect(&self) -> Result<(), String> {
        if self.variants.len() != 1 {
            return Err("a bisect needs exactly one --variant".into());
        }
        if self.paths.len() != 1 || !self.paths[0].is_file() {
            return Err("a bisect needs exactly one scenario file".into());
        }
        Ok(())
    }

    fn options(self) -> Result<RunOptions, run::InputError> {
        let variants = if self.variants.is_empty() {
            variant::defaults().collect()
        } else {
            self.variants
                .iter()
                .map(|name| variant::lookup(name).map_err(run::InputError::Variant))
                .collect::<Result<Vec<_>, _>>()?
        };
        let kernel = self.kernel.parse().map_err(run::InputError::Kernel)?;
        let accel = match self.accel {
            AccelArg::Auto => testbed::qemu::Accel::detect(),
            AccelArg::Tcg => testbed::qemu::Accel::Tcg,
            AccelArg::Kvm => testbed::qemu::Accel::Kvm,
        };
        let nested_vmx = testbed::qemu::host_nested_vmx();
        if let Some(why) = variants
            .iter()
            .find_map(|v| v.host_problem(accel, nested_vmx))
        {
            return Err(run::InputError::Host(why));
        }
        Ok(RunOptions {
            paths: self.paths,
            variants,
            kernel,
            json: self.json,
            fresh_boot: self.fresh_boot,
            share_boots: self.share_boots,
            step_timeout: std::time::Duration::from_secs(self.timeout),
            boot_timeout: std::time::Duration::from_secs(self.boot_timeout),
            accel,
            qemu: self.qemu,
            qemu_tree: self.qemu_tree,
            append: self.append,
            bzimage: self.bzimage,
            smp: self.smp,
            qemu_args: self.qemu_args,
            results: self.results,
            snapshots: self.snapshots,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => match args.options() {
                Ok(options) => interruptible(run::run(options)).await,
                Err(e) => run::usage_error(&e),
            },
            Command::Bench {
                run: args,
                iterations,
                boot_sharing,
            } => match args.options() {
                Ok(options) if boot_sharing => {
                    interruptible(testbed::bench::bench_boot_sharing(options, iterations)).await
                }
                Ok(options) => interruptible(testbed::bench::bench(options, iterations)).await,
                Err(e) => run::usage_error(&e),
            },
            Command::BenchBoots(args) => interruptible(testbed::bootbench::main(*args)).await,
            Command::Matrix(args) => interruptible(testbed::matrix::main(*args)).await,
            Command::Selftests(args) => interruptible(testbed::selftests::main(*args)).await,
            Command::Scaling(args) => interruptible(testbed::scaling::main(*args)).await,
            Command::List { what, paths } => list(what, &paths),
            Command::Bisect {
                run: args,
                good,
                bad,
                tree,
                console_match,
                question,
            } => {
                let question = question.map(Into::into);
                if let Err(e) = args.check_bisect() {
                    eprintln!("error: {e}");
                    return run::EXIT_USAGE;
                }
                let step_args = args.step_args();
                match args.options() {
                    Ok(options) => match tree {
                        Some(tree) => {
                            let bisect = bisect_cmd::git_tree(
                                options,
                                &tree,
                                &good,
                                &bad,
                                &console_match,
                                step_args,
                                question,
                            );
                            interruptible(bisect).await
                        }
                        None => {
                            interruptible(bisect_cmd::versions(
                                options,
                                &good,
                                &bad,
                                &console_match,
                                question,
                            ))
                            .await
                        }
                    },
                    Err(e) => run::usage_error(&e),
                }
            }
            Command::Regressions { run: mut args, ci } => {
                // the run flags' default scenario directory means the corpus here
                if args.paths == [PathBuf::from("scenarios")] {
                    args.paths = vec![PathBuf::from("regressions")];
                }
                match args.options() {
                    Ok(options) => interruptible(testbed::regression::main(options, ci)).await,
                    Err(e) => run::usage_error(&e),
                }
            }
            Command::KernelTree {
                version,
                dest,
                from,
            } => kernel_tree(&version, from.into(), &dest),
            Command::Kernel { spec } => kernel(&spec),
            Command::Qemu { qemu_tree } => patched_qemu(qemu_tree.as_deref()),
            Command::BisectStep {
                run: args,
                state,
                console_match,
                question,
            } => match args.options() {
                Ok(options) => {
                    interruptible(bisect_cmd::step(
                        options,
                        &state,
                        &console_match,
                        question.into(),
                    ))
                    .await
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    128
                }
            },
        }
    });
    // Dropping the runtime drops any QEMU still owned by an aborted task.
    drop(runtime);
    ExitCode::from(code)
}

/// Ctrl-C drops the run: its QEMU processes are killed and its temporary
/// directories removed by their destructors; exit 130 like a shell.
async fn interruptible(work: impl std::future::Future<Output = u8>) -> u8 {
    tokio::select! {
        code = work => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted");
            130
        }
    }
}

fn kernel(spec: &str) -> u8 {
    let spec: images::KernelSpec = match spec.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return run::EXIT_USAGE;
        }
    };
    let ui = testbed::ui::Ui::new();
    let cache = images::Cache::default_location();
    let started = std::time::Instant::now();
    let kernel = images::resolve_kernel(&cache, &spec, &mut |p| ui.images(p));
    ui.finish();
    match kernel {
        Ok(k) => {
            println!(
                "{} ({}), {:.1} s",
                k.description,
                k.release,
                started.elapsed().as_secs_f64()
            );
            println!(
                "path:{},modules={}",
                k.bzimage.display(),
                k.modules_dir.display()
            );
            run::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: kernel {spec}: {e}");
            if e.is_bad_input() {
                run::EXIT_USAGE
            } else {
                run::EXIT_SKIP
            }
        }
    }
}

fn patched_qemu(tree: Option<&std::path::Path>) -> u8 {
    let project = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let spec = testbed::qemu::patched_qemu_spec(&project, tree);
    let ui = testbed::ui::Ui::new();
    let cache = images::Cache::default_location();
    let started = std::time::Instant::now();
    let built = images::build_qemu(&cache, &spec, &mut |p| ui.images(p));
    ui.finish();
    match built {
        Ok(b) => {
            println!(
                "{}, {:.1} s",
                b.description,
                started.elapsed().as_secs_f64()
            );
            println!("{}", b.binary.display());
            run::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: patched qemu: {e}");
            if e.is_bad_input() {
                run::EXIT_USAGE
            } else {
                run::EXIT_SKIP
            }
        }
    }
}

fn kernel_tree(version: &str, from: images::TreeFrom, dest: &std::path::Path) -> u8 {
    let ui = testbed::ui::Ui::new();
    let cache = images::Cache::default_location();
    let made = images::debian_linux_tree(&cache, version, from, dest, &mut |p| ui.images(p));
    ui.finish();
    match made {
        Ok(t) => {
            match &t.origin {
                images::TreeOrigin::SourcePackage => println!(
                    "{}: linux {} as {} commits (branch debian; tags: upstream, patched)",
                    t.path.display(),
                    t.debian_version,
                    t.commits
                ),
                images::TreeOrigin::LinuxSource(name) => println!(
                    "{}: {name} {} (Debian's patched tree) as 1 commit (branch debian; tag: patched)",
                    t.path.display(),
                    t.debian_version
                ),
            }
            run::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_bad_input() {
                run::EXIT_USAGE
            } else {
                run::EXIT_SKIP
            }
        }
    }
}

fn list(what: ListWhat, paths: &[PathBuf]) -> u8 {
    match what {
        ListWhat::Variants => {
            for v in variant::VARIANTS {
                let default = if v.default { " (default)" } else { "" };
                let default = if v.qemu == variant::QemuKind::Patched {
                    format!("{default} (patched qemu)")
                } else {
                    default.to_owned()
                };
                println!("{:<16} {}{default}", v.name, v.summary);
            }
            0
        }
        ListWhat::Scenarios => match scenario::load_paths(paths) {
            Ok(scenarios) => {
                for s in scenarios {
                    println!("{:<28} {}", s.name, s.description);
                }
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        ListWhat::Kernels => run::list_kernels(),
    }
}
