//! Upstream kernel selftests (KVM, VFIO), built statically once per source
//! and suite set, for running inside L1.
//!
//! [`build_selftests`] takes a [`SelftestSource`] (the `linux-source-X.Y`
//! package of a Debian kernel's line, or a kernel git tree) and the suites
//! wanted, and returns the installed kselftest tree (`INSTALL_PATH`
//! layout: `run_kselftest.sh`, `kselftest-list.txt`, `kselftest/`, one
//! directory per suite) in a cache entry:
//!
//! 1. the source is unpacked into a work directory (`dpkg-deb -x` and the
//!    tarball inside, or `git archive` plus the checkout's uncommitted
//!    diff), less the parts nothing here reads (`drivers/`, other
//!    architectures, `Documentation/`, `sound/`; targets of symlinks into
//!    them do get unpacked);
//! 2. `make headers` at the top (the selftests include `usr/include`);
//! 3. per suite, `make -C tools/testing/selftests TARGETS=<suite>
//!    LDFLAGS=-static EXTRA_CFLAGS=-g0`; a suite the source lacks, or whose
//!    build fails (the source's own bug: 7.2's VFIO selftests call a helper
//!    their library lacks), gets a `missing` reason instead of tests;
//! 4. one `make install` of the suites that built, `strip --strip-debug` of
//!    the ELF files, and a check that every test `kselftest-list.txt` lists
//!    is there and is a static ELF (no PT_INTERP) or a script.
//!
//! What the machine lacks (rsync, static libc, libuuid for VFIO) is an
//! error before anything is downloaded, never a suite recorded as missing.
//!
//! Layout under the cache root:
//!
//! ```text
//! selftests/<sha256>/      kselftest/ (the installed tree), build.log, selftests.json
//! resolved/selftests-source-<version>.json   remembered linux-source choice per kernel version
//! logs/selftests-<key>.log the log of the last failed build of <key>
//! ```
//!
//! The key covers the source's identity (package name, version and SHA256;
//! or commit, or HEAD plus the uncommitted diff's hash), the suites, the
//! make variables and [`SELFTESTS_FORMAT_VERSION`]. The unpacked source is
//! thrown away with the work directory.

mod check;
mod source;
pub(crate) use source::linux_source_tarball;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apt::hex;
use crate::cache::{publish, Cache};
use crate::kbuild::{jobs, run_logged};
use crate::kernel::Kernel;
use crate::spec::{KernelSpec, KernelVersion};
use crate::{ImagesError, IoContext, Progress};

use check::{exec_kind, first_error, is_compile_line, parse_kselftest_list, ExecKind};
use source::SourceId;

/// Bump when the build procedure or the entry layout changes.
pub const SELFTESTS_FORMAT_VERSION: u32 = 1;

/// Make variables every suite is built and installed with: static, and
/// without debug info (it would be most of each binary; the selftest
/// makefiles put `$(EXTRA_CFLAGS)` after their `-g`).
const MAKE_VARS: &[&str] = &["LDFLAGS=-static", "EXTRA_CFLAGS=-g0"];

/// Environment a caller may carry that would change what the selftest
/// makefiles do (they append to CFLAGS and LDFLAGS, honour O= and ARCH).
const CLEARED_ENV: &[&str] = &[
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "CFLAGS",
    "CPPFLAGS",
    "LDFLAGS",
    "LDLIBS",
    "EXTRA_CFLAGS",
    "ARCH",
    "SUBARCH",
    "CROSS_COMPILE",
    "CC",
    "LLVM",
    "O",
    "KBUILD_OUTPUT",
    "INSTALL_PATH",
    "TARGETS",
    "SKIP_TARGETS",
    "FORCE_TARGETS",
];

/// A kselftest collection the testbed builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelftestSuite {
    Kvm,
    Vfio,
}

impl SelftestSuite {
    pub const ALL: [SelftestSuite; 2] = [SelftestSuite::Kvm, SelftestSuite::Vfio];

    /// The directory under `tools/testing/selftests` and under the
    /// installed tree, and the collection name in `kselftest-list.txt`.
    pub fn name(self) -> &'static str {
        match self {
            SelftestSuite::Kvm => "kvm",
            SelftestSuite::Vfio => "vfio",
        }
    }
}

impl fmt::Display for SelftestSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SelftestSuite {
    type Err = ImagesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SelftestSuite::ALL
            .into_iter()
            .find(|suite| suite.name() == s)
            .ok_or_else(|| ImagesError::UnknownSelftestSuite(s.to_string()))
    }
}

/// Where the selftests' sources come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SelftestSource {
    /// The Debian `linux-source-X.Y` package for a kernel of this upstream
    /// version: that exact version if the archive has it, else the newest
    /// upload of its X.Y line, else the nearest newer line (with a note).
    Debian { version: KernelVersion },
    /// A Linux git tree at a revision, or (`None`) its HEAD plus the
    /// uncommitted changes to tracked files, as `git:` kernel specs. The
    /// tree is only read (`git archive`).
    Tree { path: PathBuf, rev: Option<String> },
}

impl SelftestSource {
    /// The source matching a kernel resolved from `spec`: a `git:` spec's
    /// own tree and revision; otherwise the Debian sources of the kernel's
    /// upstream version (from its Debian version, else from its release).
    pub fn for_kernel(spec: &KernelSpec, kernel: &Kernel) -> Result<SelftestSource, ImagesError> {
        if let KernelSpec::Git { tree, rev } = spec {
            return Ok(SelftestSource::Tree {
                path: tree.clone(),
                rev: rev.clone(),
            });
        }
        kernel_upstream_version(kernel)
            .map(|version| SelftestSource::Debian { version })
            .ok_or_else(|| ImagesError::BadKernelSpec {
                spec: spec.to_string(),
                why: format!(
                    "cannot tell the upstream version of kernel {} for its selftests",
                    kernel.release
                ),
            })
    }
}

impl fmt::Display for SelftestSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelftestSource::Debian { version } => write!(f, "linux-source for {version}"),
            SelftestSource::Tree {
                path,
                rev: Some(rev),
            } => write!(f, "git:{}@{rev}", path.display()),
            SelftestSource::Tree { path, rev: None } => write!(f, "git:{}", path.display()),
        }
    }
}

/// The upstream version of a resolved kernel: from the Debian version that
/// ends a Debian kernel's description (`debian linux-image-6.1.0-47-amd64
/// 6.1.170-3` is 6.1.170, which its release `6.1.0-47-amd64` does not
/// say), else the leading `X.Y[.Z]` of its release.
pub fn kernel_upstream_version(kernel: &Kernel) -> Option<KernelVersion> {
    if kernel.description.starts_with("debian ") {
        if let Some(v) = kernel
            .description
            .split_whitespace()
            .last()
            .and_then(|debver| KernelVersion::parse(crate::debver::upstream(debver)))
        {
            return Some(v);
        }
    }
    let end = kernel
        .release
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(kernel.release.len());
    let numbers: Vec<&str> = kernel.release[..end]
        .trim_end_matches('.')
        .splitn(4, '.')
        .take(3)
        .collect();
    KernelVersion::parse(&numbers.join("."))
}

/// An installed, verified selftest tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelftestBuild {
    /// The installed kselftest tree in the cache entry (`INSTALL_PATH`
    /// layout: `run_kselftest.sh`, `kselftest-list.txt`, `kselftest/`,
    /// `kvm/`, `vfio/`). Read-only: copy what a guest needs.
    pub root: PathBuf,
    /// e.g. `linux-source-7.2 7.2.13-1` or `git /src/linux@v7.2 (0123456789ab)`.
    pub source: String,
    /// Why this source when it is not the kernel's own line.
    pub note: Option<String>,
    /// One per requested suite, in [`SelftestSuite`] order.
    pub suites: Vec<SuiteBuild>,
}

/// One suite of a [`SelftestBuild`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteBuild {
    pub suite: SelftestSuite,
    /// Test names as in `kselftest-list.txt` (after `kvm:`), e.g.
    /// `xapic_ipi_test`, `irqfd_test`, `nx_huge_pages_test.sh`; each is a
    /// file in `root/<suite>/` (the install flattens `x86/`).
    pub tests: Vec<String>,
    /// Why there are no tests: the source has no such suite, or its build
    /// failed (first error and where the whole log is).
    pub missing: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EntryMeta {
    format: u32,
    /// The source as the first builder described it (informational).
    source: String,
    suites: Vec<SuiteBuild>,
}

const ENTRY_META: &str = "selftests.json";
const ENTRY_TREE: &str = "kselftest";
const ENTRY_LOG: &str = "build.log";

/// The entry key: format, source identity, suites, make variables.
fn entry_key(source: &SourceId, suites: &[SelftestSuite]) -> String {
    let mut h = Sha256::new();
    h.update(format!("irqbypass-testbed selftests v{SELFTESTS_FORMAT_VERSION}\0").as_bytes());
    h.update(source.key_bytes());
    let names: Vec<&str> = suites.iter().map(|s| s.name()).collect();
    h.update(format!("\0suites {}\0", names.join(",")).as_bytes());
    h.update(format!("make {}\0strip --strip-debug\0", MAKE_VARS.join(" ")).as_bytes());
    hex(&h.finalize())
}

/// Sorted, without repeats; none asked for means all.
fn normalize(suites: &[SelftestSuite]) -> Vec<SelftestSuite> {
    let mut v = if suites.is_empty() {
        SelftestSuite::ALL.to_vec()
    } else {
        suites.to_vec()
    };
    v.sort();
    v.dedup();
    v
}

fn load_entry(dir: &Path) -> Result<Option<EntryMeta>, ImagesError> {
    let Ok(text) = fs::read(dir.join(ENTRY_META)) else {
        return Ok(None);
    };
    let bad = |why: String| ImagesError::BadCacheEntry {
        path: dir.to_path_buf(),
        why,
    };
    let meta: EntryMeta = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let root = dir.join(ENTRY_TREE);
    for s in meta.suites.iter().filter(|s| !s.tests.is_empty()) {
        if !root.join(s.suite.name()).is_dir() || !root.join("kselftest-list.txt").is_file() {
            return Err(bad(format!("{} tests missing", s.suite)));
        }
    }
    Ok(Some(meta))
}

fn to_build(dir: &Path, meta: EntryMeta, source: String, note: Option<String>) -> SelftestBuild {
    SelftestBuild {
        root: dir.join(ENTRY_TREE),
        source,
        note,
        suites: meta.suites,
    }
}

/// Build (or find in the cache) the selftest `suites` (empty: all) of `source`.
pub fn build_selftests(
    cache: &Cache,
    source: &SelftestSource,
    suites: &[SelftestSuite],
    progress: &mut dyn FnMut(Progress),
) -> Result<SelftestBuild, ImagesError> {
    build_inner(cache, source, suites, true, progress)
}

fn build_inner(
    cache: &Cache,
    source: &SelftestSource,
    suites: &[SelftestSuite],
    preflight: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<SelftestBuild, ImagesError> {
    let suites = normalize(suites);
    let resolved = source::resolve(cache, source, progress)?;
    let description = resolved.id.describe();
    progress(Progress::SelftestsFrom {
        source: description.clone(),
        note: resolved.note.clone(),
    });
    let key = entry_key(&resolved.id, &suites);
    let final_dir = cache.root().join("selftests").join(&key);
    let names: Vec<&str> = suites.iter().map(|s| s.name()).collect();
    let hit = format!("{} selftests from {description}", names.join(" and "));
    if let Ok(Some(meta)) = load_entry(&final_dir) {
        progress(Progress::CacheHit { what: hit });
        return Ok(to_build(&final_dir, meta, description, resolved.note));
    }
    let _lock = cache.lock(&format!("selftests-{key}"))?;
    match load_entry(&final_dir) {
        Ok(Some(meta)) => {
            progress(Progress::CacheHit { what: hit });
            return Ok(to_build(&final_dir, meta, description, resolved.note));
        }
        Ok(None) if !final_dir.exists() => {}
        // damaged by hand (entries are published atomically): rebuild it
        _ => fs::remove_dir_all(&final_dir).ctx("remove damaged entry", &final_dir)?,
    }
    if preflight {
        check_tools(&resolved.id, &suites)?;
    }
    let work = cache.work_dir("selftests")?;
    let work_path = std::path::absolute(work.path()).ctx("resolve", work.path())?;
    let entry = work_path.join("entry");
    fs::create_dir_all(&entry).ctx("create directory", &entry)?;
    let log = entry.join(ENTRY_LOG);
    fs::write(
        &log,
        format!("selftests {} from {description}\n", names.join(" ")),
    )
    .ctx("write", &log)?;
    let final_log = final_dir.join(ENTRY_LOG);
    let built = (|| {
        let src = work_path.join("src");
        source::unpack(cache, &resolved.id, &work_path, &src, progress)?;
        build_tree(
            &src,
            &entry.join(ENTRY_TREE),
            &suites,
            &log,
            &final_log,
            progress,
        )
    })();
    let suite_builds = match built {
        Ok(s) => s,
        Err(e) => return Err(keep_log(cache, &key, &log, e)),
    };
    let meta = EntryMeta {
        format: SELFTESTS_FORMAT_VERSION,
        source: description.clone(),
        suites: suite_builds,
    };
    fs::write(
        entry.join(ENTRY_META),
        serde_json::to_vec_pretty(&meta).expect("meta serializes"),
    )
    .ctx("write", &entry)?;
    publish(&entry, &final_dir)?;
    drop(work);
    let meta = load_entry(&final_dir)?.ok_or_else(|| ImagesError::BadCacheEntry {
        path: final_dir.clone(),
        why: "entry vanished".into(),
    })?;
    Ok(to_build(&final_dir, meta, description, resolved.note))
}

/// What the build needs from the machine, checked before anything is
/// downloaded, so that a missing package is an error to fix rather than a
/// suite recorded as missing.
fn check_tools(source: &SourceId, suites: &[SelftestSuite]) -> Result<(), ImagesError> {
    let missing = |what: &str, package: &str| ImagesError::MissingBuildTool {
        what: what.into(),
        package: package.into(),
    };
    let runs = |prog: &str, arg: &str| {
        Command::new(prog)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut tools = vec![
        ("make", "make"),
        ("gcc", "gcc"),
        ("rsync", "rsync"),
        ("strip", "binutils"),
    ];
    match source {
        SourceId::Debian(_) => {
            tools.extend([("dpkg-deb", "dpkg"), ("tar", "tar"), ("xz", "xz-utils")])
        }
        _ => tools.extend([("git", "git"), ("tar", "tar")]),
    }
    for (prog, package) in tools {
        if !runs(prog, "--version") {
            return Err(missing(prog, package));
        }
    }
    // static libraries: gcc prints the bare name when it has no such file
    let mut libs = vec![("libc.a", "libc6-dev")];
    if suites.contains(&SelftestSuite::Vfio) {
        libs.push(("libuuid.a", "uuid-dev"));
    }
    for (lib, package) in libs {
        let out = Command::new("gcc")
            .arg(format!("-print-file-name={lib}"))
            .output();
        let found =
            out.is_ok_and(|o| Path::new(String::from_utf8_lossy(&o.stdout).trim()).is_absolute());
        if !found {
            return Err(missing(&format!("{lib} for static linking"), package));
        }
    }
    Ok(())
}

/// `make` with `args` in `dir`, logged; true when it succeeded.
fn make(
    dir: &Path,
    args: &[String],
    log: &Path,
    line: &mut dyn FnMut(&str),
) -> Result<bool, ImagesError> {
    let mut c = Command::new("make");
    c.arg("-C").arg(dir).arg(format!("-j{}", jobs())).args(args);
    for var in CLEARED_ENV {
        c.env_remove(var);
    }
    c.env("LC_ALL", "C");
    run_logged(&mut c, log, line)
}

fn fail(step: &str, log: &Path) -> ImagesError {
    let text = fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains(": error:") || l.contains("*** "))
        .map(|i| i.saturating_sub(2))
        .unwrap_or(lines.len().saturating_sub(30));
    let tail = lines[start..(start + 30).min(lines.len())].join("\n");
    ImagesError::SelftestBuildFailed {
        step: step.into(),
        log: log.to_path_buf(),
        tail,
    }
}

/// Headers, each suite, install, strip, verify; returns one [`SuiteBuild`]
/// per suite. `final_log` is where the log will live (for the reasons).
fn build_tree(
    src: &Path,
    install: &Path,
    suites: &[SelftestSuite],
    log: &Path,
    final_log: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<SuiteBuild>, ImagesError> {
    let selftests = src.join("tools/testing/selftests");
    let mut results: Vec<SuiteBuild> = suites
        .iter()
        .map(|&suite| {
            let present = selftests.join(suite.name()).join("Makefile").is_file();
            SuiteBuild {
                suite,
                tests: Vec::new(),
                missing: (!present)
                    .then(|| format!("this source has no tools/testing/selftests/{suite}")),
            }
        })
        .collect();
    fs::create_dir_all(install).ctx("create directory", install)?;
    if results.iter().all(|r| r.missing.is_some()) {
        return Ok(results);
    }
    progress(Progress::InstallingKernelHeaders);
    if !make(src, &["headers".to_string()], log, &mut |_| {})? {
        return Err(fail("make headers", log));
    }
    let vars: Vec<String> = MAKE_VARS.iter().map(|s| s.to_string()).collect();
    for r in results.iter_mut().filter(|r| r.missing.is_none()) {
        let suite = r.suite;
        let before = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let mut compiled = 0u64;
        progress(Progress::BuildingSelftests { suite, compiled });
        let mut args = vec![format!("TARGETS={suite}")];
        args.extend(vars.iter().cloned());
        let ok = make(&selftests, &args, log, &mut |line| {
            if is_compile_line(line) {
                compiled += 1;
                if compiled.is_multiple_of(20) {
                    progress(Progress::BuildingSelftests { suite, compiled });
                }
            }
        })?;
        if !ok {
            let text = fs::read(log)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let section = text.get(before as usize..).unwrap_or(&text);
            // paths relative to the source tree: the work directory is gone
            let error = first_error(section)
                .map(|e| e.replace(&format!("{}/", src.display()), ""))
                .unwrap_or_else(|| "make failed".into());
            r.missing = Some(format!(
                "the {suite} selftests of this source do not build: {error} (whole log: {})",
                final_log.display()
            ));
        }
    }
    let built: Vec<&str> = results
        .iter()
        .filter(|r| r.missing.is_none())
        .map(|r| r.suite.name())
        .collect();
    if built.is_empty() {
        return Ok(results);
    }
    progress(Progress::InstallingSelftests);
    let mut args = vec![
        format!("TARGETS={}", built.join(" ")),
        "FORCE_TARGETS=1".into(),
    ];
    args.extend(vars);
    args.push(format!("INSTALL_PATH={}", install.display()));
    args.push("install".into());
    if !make(&selftests, &args, log, &mut |_| {})? {
        return Err(fail("install", log));
    }
    strip_debug(install, log)?;
    let list_path = install.join("kselftest-list.txt");
    let list = fs::read_to_string(&list_path).ctx("read", &list_path)?;
    let listed = parse_kselftest_list(&list);
    for r in results.iter_mut().filter(|r| r.missing.is_none()) {
        r.tests = listed
            .iter()
            .filter(|(c, _)| c == r.suite.name())
            .map(|(_, t)| t.clone())
            .collect();
        if r.tests.is_empty() {
            r.missing = Some(format!(
                "the {} build lists no tests for this architecture",
                r.suite
            ));
        }
        for t in &r.tests {
            check_test(&install.join(r.suite.name()).join(t))?;
        }
    }
    Ok(results)
}

/// A listed test must be installed, executable, and a static ELF or a script.
fn check_test(path: &Path) -> Result<(), ImagesError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| ImagesError::BadSelftest {
        path: path.to_path_buf(),
        why,
    };
    let meta = fs::metadata(path)
        .map_err(|_| bad("listed in kselftest-list.txt but not installed".into()))?;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not executable".into()));
    }
    match exec_kind(path).ctx("read", path)? {
        ExecKind::StaticElf | ExecKind::Script => Ok(()),
        ExecKind::DynamicElf(interp) => Err(bad(format!("dynamically linked (needs {interp})"))),
        ExecKind::Other(why) => Err(bad(why)),
    }
}

/// `strip --strip-debug` every ELF file of the installed tree: the debug
/// info is a third of its size and nothing in L1 reads it. Best effort:
/// a file strip does not understand keeps its debug info.
fn strip_debug(dir: &Path, log: &Path) -> Result<(), ImagesError> {
    let mut elves = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).ctx("read", &d)?.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && matches!(
                    exec_kind(&p),
                    Ok(ExecKind::StaticElf | ExecKind::DynamicElf(_))
                )
            {
                elves.push(p);
            }
        }
    }
    elves.sort();
    for chunk in elves.chunks(200) {
        let mut c = Command::new("strip");
        c.arg("--strip-debug").args(chunk);
        run_logged(&mut c, log, &mut |_| {})?;
    }
    Ok(())
}

/// Keep the log of a failed build (the work directory goes) and name it.
fn keep_log(cache: &Cache, key: &str, log: &Path, e: ImagesError) -> ImagesError {
    let kept = cache
        .root()
        .join("logs")
        .join(format!("selftests-{key}.log"));
    let moved = log.is_file()
        && fs::create_dir_all(kept.parent().expect("has parent")).is_ok()
        && fs::copy(log, &kept).is_ok();
    match e {
        ImagesError::SelftestBuildFailed { step, tail, .. } if moved => {
            ImagesError::SelftestBuildFailed {
                step,
                log: kept,
                tail,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
