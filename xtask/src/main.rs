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
  setup       install host packages (QEMU from bookworm-backports, busybox-static, QEMU build deps)
  run         setup, then run every scenario on the default kernel and variants
  test        setup, then the whole test suite, tests that boot guests included, then qemu-check
  bench       setup, then time one warm-cache scenario phase by phase, posted against
              remapped delivery (own and equal CPU counts), shared against fresh boots
  bench-kernel TREE REV [DEBIAN_VERSION]
              full and incremental build of git:TREE@REV~1 then @REV (fresh cache, no ccache),
              then boot-to-agent medians of the built kernel and debian:DEBIAN_VERSION (default 6.12)
  qemu-check  build the patched QEMU in target/qemu-check/ and run the qtests
              listed in qemu-patches/qtests.txt (QEMU_TREE=PATH: a QEMU checkout as source)";

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
const KERNEL_BUILD_PACKAGES: &[&str] =
    &["make", "bc", "libelf-dev", "libssl-dev", "kmod", "patch", "ccache", "rsync", "libc6-dev", "uuid-dev"];

const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/irqbypass-testbed-backports.sources";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match task.as_str() {
        "setup" => setup(&sh),
        "run" => {
            setup(&sh)?;
            cmd!(sh, "cargo run --release -p testbed -- run scenarios {rest...}").run()?;
            Ok(())
        }
        "test" => {
            setup(&sh)?;
            let _vm = sh.push_env("TESTBED_VM_TESTS", "1");
            let rust = if cmd!(sh, "cargo nextest --version").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
                cmd!(sh, "cargo nextest run --workspace --no-fail-fast {rest...}").run()
            } else {
                // Without nextest, .config/nextest.toml's one-guest-at-a-time
                // group does not apply: run each binary's tests one at a time.
                cmd!(sh, "cargo test --workspace --no-fail-fast {rest...} -- --test-threads=1").run()
            };
            // the patch authors' qtests run even when a Rust test failed
            let qemu = qemu_check(&sh);
            rust?;
            qemu
        }
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
            for scenario in ["bench/scenarios/edu-bench-halted.toml", "bench/scenarios/edu-bench-running.toml"] {
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

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Kernel build and boot figures: a full build of `REV~1` in a fresh cache
/// with ccache off (what a first `git:` spec costs), then `REV` in the same
/// kept build directory (one commit later: what a bisect step costs), then
/// `testbed bench`'s boot phases for the built kernel and a Debian one.
fn bench_kernel(sh: &Shell, args: &[String]) -> Result<()> {
    let [tree, rev, rest @ ..] = args else { bail!("{USAGE}") };
    let debian = rest.first().map(String::as_str).unwrap_or("6.12");
    cmd!(sh, "cargo build --release -p testbed").run()?;
    let testbed = project_root().join("target/release/testbed");
    let testbed = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("release/testbed"))
        .unwrap_or(testbed);
    let cache = project_root().join("target/bench-kernel-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let mut times = Vec::new();
    for (label, spec) in [
        ("full build", format!("git:{tree}@{rev}~1")),
        ("incremental build (one commit later)", format!("git:{tree}@{rev}")),
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
    cmd!(sh, "{testbed} bench {scenario} --variant intel-ir --kernel {built}").run()?;
    let debian = format!("debian:{debian}");
    cmd!(sh, "{testbed} bench {scenario} --variant intel-ir --kernel {debian}").run()?;
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
    let missing_build = missing_packages(sh, &[QEMU_BUILD_PACKAGES, KERNEL_BUILD_PACKAGES].concat());
    if qemu_ok && busybox_ok && missing_build.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "installing QEMU >= 10, busybox-static and the QEMU and kernel build packages ({}) needs root: \
             run `sudo cargo xtask setup` once",
            missing_build.join(" ")
        );
    }
    if qemu_ok && busybox_ok {
        let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
        cmd!(sh, "apt-get update -q").run()?;
        cmd!(sh, "apt-get install -y -q --no-install-recommends {missing_build...}").run()?;
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
    cmd!(sh, "apt-get install -y -q --no-install-recommends -t {backports} qemu-system-x86").run()?;
    cmd!(sh, "apt-get install -y -q --no-install-recommends busybox-static").run()?;
    if !missing_build.is_empty() {
        cmd!(sh, "apt-get install -y -q --no-install-recommends {missing_build...}").run()?;
    }
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
        None => (format!("tests/qtest/{name}"), format!("qtest-x86_64/{name}")),
    }
}

/// Builds the patched QEMU in `target/qemu-check/` (persistent and
/// incremental, same configure arguments as the testbed's build) and runs
/// the qtests `qemu-patches/qtests.txt` lists.
fn qemu_check(sh: &Shell) -> Result<()> {
    let root = project_root();
    let patches = root.join("qemu-patches");
    let list = patches.join("qtests.txt");
    let names = qtest_names(&std::fs::read_to_string(&list).unwrap_or_default());
    if names.is_empty() {
        println!("qemu-check: skipped: no qtests listed in {} (one name per line, e.g. amd-iommu-test)", list.display());
        return Ok(());
    }
    let source = match std::env::var_os("QEMU_TREE").filter(|v| !v.is_empty()) {
        Some(tree) => images::QemuSource::Tree(tree.into()),
        None => images::QemuSource::pinned(),
    };
    let spec = images::QemuBuildSpec::new(source, &patches);
    let cache = images::Cache::default_location();
    let progress = &mut |p: images::Progress| eprintln!("qemu-check: {p}");
    let tree = images::prepare_check_tree(&cache, &spec, &root.join("target/qemu-check"), progress)?;
    println!("qemu-check: {} in {}", tree.description, tree.build.display());
    let (mut targets, tests): (Vec<String>, Vec<String>) = names.iter().map(|n| qemu_test_target(n)).unzip();
    targets.insert(0, images::QEMU_BINARY.to_owned());
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    images::ninja(&tree.build, &targets, &tree.log, progress)?;
    let (meson, build) = (&tree.meson, &tree.build);
    cmd!(sh, "{meson} test -C {build} --no-rebuild --print-errorlogs {tests...}").run()?;
    Ok(())
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
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
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
                stanza.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            };
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else { continue };
            let signed = field("Signed-By:").unwrap_or_default();
            if suites.split_whitespace().any(|s| !s.contains('-')) && signed.contains("debian-archive") {
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
            ("tests/unit/test-svm-avic".to_owned(), "test-svm-avic".to_owned())
        );
        assert_eq!(
            super::qemu_test_target("amd-iommu-ga-test"),
            ("tests/qtest/amd-iommu-ga-test".to_owned(), "qtest-x86_64/amd-iommu-ga-test".to_owned())
        );
    }

    #[test]
    fn qemu_version_parsing() {
        assert_eq!(super::qemu_major("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)"), 10);
        assert_eq!(super::qemu_major("QEMU emulator version 7.2.15"), 7);
        assert_eq!(super::qemu_major("garbage"), 0);
    }
}
