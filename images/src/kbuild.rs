//! Kernels built from a git tree (`git:TREE[@REV]`).
//!
//! The config is x86_64 `tinyconfig` plus the fragments checked in under
//! `kernel-config/` (embedded here), merged with the kernel's own
//! `scripts/kconfig/merge_config.sh`; every value a fragment asks for must
//! survive into the final `.config`, or the build fails and says which.
//! The build is out of tree (`O=`) in a directory kept per source directory
//! and config, so successive builds of nearby commits (a bisect) rebuild
//! incrementally; `ccache gcc` is the compiler when ccache is installed.
//! The bzImage and the installed modules become an ordinary kernel entry
//! (`kernels/<key>`, keyed by commit or HEAD + diff and the fragments), so a
//! commit is built once.
//!
//! `git:TREE@REV` checks `REV` out in a worktree the testbed owns
//! (`linux-trees/<hash>` in the cache, `git worktree add --detach`); the
//! user's checkout is never touched. `git:TREE` builds the checkout as it
//! is, uncommitted changes to tracked files included.
//!
//! Layout under the cache root:
//!
//! ```text
//! linux-trees/<hash>/      detached worktrees of users' trees (git:TREE@REV)
//! kbuild/<hash>/           O= build directories, per source directory and config
//! logs/kbuild-<hash>.log   the log of the last build in that directory
//! ```

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::apt::hex;
use crate::cache::Cache;
use crate::kernel::{build_kernel_entry, Kernel};
use crate::{ImagesError, IoContext, Progress};

/// Bump when the build procedure or the entry layout changes.
pub const KBUILD_FORMAT_VERSION: u32 = 1;

/// The checked-in config fragments, merged in this order onto tinyconfig.
pub const CONFIG_FRAGMENTS: &[(&str, &str)] = &[
    (
        "base.config",
        include_str!("../../kernel-config/base.config"),
    ),
    ("kvm.config", include_str!("../../kernel-config/kvm.config")),
    (
        "vfio.config",
        include_str!("../../kernel-config/vfio.config"),
    ),
    (
        "iommu.config",
        include_str!("../../kernel-config/iommu.config"),
    ),
    (
        "trace.config",
        include_str!("../../kernel-config/trace.config"),
    ),
    (
        "vdpa.config",
        include_str!("../../kernel-config/vdpa.config"),
    ),
    (
        "pcie-hotplug.config",
        include_str!("../../kernel-config/pcie-hotplug.config"),
    ),
    (
        "nested.config",
        include_str!("../../kernel-config/nested.config"),
    ),
];

/// Fragments for options that only newer trees have, merged after
/// [`CONFIG_FRAGMENTS`]. Their values are checked like the others where the
/// final `.config` names the symbol at all; a tree whose Kconfig lacks the
/// symbol (a `.config` without a line for it) builds without it.
pub const IF_PRESENT_FRAGMENTS: &[(&str, &str)] = &[(
    "posted-msi.config",
    include_str!("../../kernel-config/posted-msi.config"),
)];

/// tinyconfig, as `make tinyconfig` builds it: allnoconfig plus these.
const BASE_FRAGMENTS: &[&str] = &["kernel/configs/tiny.config", "arch/x86/configs/tiny.config"];

fn bad_tree(path: &Path, why: impl Into<String>) -> ImagesError {
    ImagesError::BadKernelTree {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir);
    c
}

fn git_out(dir: &Path, args: &[&str]) -> Result<std::process::Output, ImagesError> {
    git(dir)
        .args(args)
        .output()
        .map_err(|e| ImagesError::io("run git (install git)", e))
}

fn git_ok(dir: &Path, args: &[&str]) -> Result<String, ImagesError> {
    let out = git_out(dir, args)?;
    if !out.status.success() {
        return Err(ImagesError::Command {
            cmd: format!("git -C {} {}", dir.display(), args.join(" ")),
            detail: crate::apt::last_lines(&out.stderr, &out.stdout),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A short stable name for a path or key.
fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update(b"\0");
    }
    hex(&h.finalize())[..16].to_string()
}

fn fragments_bytes() -> Vec<u8> {
    let mut v = Vec::new();
    for (name, text) in CONFIG_FRAGMENTS.iter().chain(IF_PRESENT_FRAGMENTS) {
        v.extend_from_slice(format!("{name} {}\0", text.len()).as_bytes());
        v.extend_from_slice(text.as_bytes());
    }
    v
}

/// What gets built: identifies the kernel entry.
#[derive(Debug, Clone)]
enum Source {
    Commit(String),
    Checkout { head: String, diff: Vec<u8> },
}

impl Source {
    fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("irqbypass-testbed kbuild v{KBUILD_FORMAT_VERSION}\0").as_bytes());
        match self {
            Source::Commit(sha) => h.update(format!("commit {sha}\0").as_bytes()),
            Source::Checkout { head, diff } => {
                h.update(format!("checkout {head}\0").as_bytes());
                h.update(Sha256::digest(diff));
            }
        }
        h.update(fragments_bytes());
        hex(&h.finalize())
    }
}

/// Check that `tree` is the top of a kernel git tree; returns its canonical path.
fn kernel_tree(tree: &Path) -> Result<PathBuf, ImagesError> {
    let canonical = fs::canonicalize(tree).map_err(|e| bad_tree(tree, e.to_string()))?;
    if !canonical.join("Kconfig").is_file()
        || !canonical.join("scripts/kconfig/merge_config.sh").is_file()
    {
        return Err(bad_tree(
            tree,
            "not a Linux source tree (no Kconfig or scripts/kconfig/merge_config.sh)",
        ));
    }
    let out = git_out(&canonical, &["rev-parse", "--verify", "-q", "HEAD"])?;
    if !out.status.success() {
        return Err(bad_tree(tree, "not a git checkout with a commit"));
    }
    Ok(canonical)
}

/// The commit `rev` names in `tree`; unknown revisions are bad input.
pub fn resolve_rev(tree: &Path, rev: &str) -> Result<String, ImagesError> {
    let spec = format!("{rev}^{{commit}}");
    let out = git_out(
        tree,
        &["rev-parse", "--verify", "-q", "--end-of-options", &spec],
    )?;
    if !out.status.success() {
        return Err(bad_tree(tree, format!("unknown revision {rev}")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Build (or find in the cache) the kernel of `git:tree[@rev]`.
pub(crate) fn resolve_git(
    cache: &Cache,
    tree: &Path,
    rev: Option<&str>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Kernel, ImagesError> {
    let tree = kernel_tree(tree)?;
    match rev {
        Some(rev) => {
            let sha = resolve_rev(&tree, rev)?;
            let source = Source::Commit(sha.clone());
            let description = format!("git {}@{rev} ({})", tree.display(), &sha[..12]);
            let key = source.key();
            // a commit is built once: no checkout at all when it is cached
            build_kernel_entry(
                cache,
                &key,
                |work, progress| {
                    let _tree_lock = cache.lock(&format!(
                        "linux-tree-{}",
                        short_hash(&[tree.as_os_str().as_encoded_bytes()])
                    ))?;
                    let worktree = checkout_worktree(cache, &tree, &sha, progress)?;
                    build(cache, &worktree, work, &description, progress)
                },
                progress,
            )
        }
        None => {
            if tree.join(".config").exists() || tree.join("include/config").exists() {
                return Err(bad_tree(
                    &tree,
                    "it has an in-tree build (make O= needs a clean tree: make mrproper)",
                ));
            }
            let head = git_ok(&tree, &["rev-parse", "HEAD"])?;
            let out = git_out(
                &tree,
                &["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"],
            )?;
            if !out.status.success() {
                return Err(bad_tree(&tree, "git diff HEAD failed"));
            }
            let dirty = !out.stdout.is_empty();
            let source = Source::Checkout {
                head: head.clone(),
                diff: out.stdout,
            };
            let description = format!(
                "git {} ({}{})",
                tree.display(),
                &head[..12],
                if dirty { "+dirty" } else { "" }
            );
            build_kernel_entry(
                cache,
                &source.key(),
                |work, progress| build(cache, &tree, work, &description, progress),
                progress,
            )
        }
    }
}

/// The testbed's worktree of `tree`, checked out (detached, forced) at `sha`.
fn checkout_worktree(
    cache: &Cache,
    tree: &Path,
    sha: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, ImagesError> {
    let worktree = linux_worktree(cache, tree)?;
    progress(Progress::CheckingOut {
        rev: sha[..12].to_string(),
    });
    if worktree.join(".git").exists() {
        git_ok(&worktree, &["checkout", "-q", "--detach", "--force", sha])?;
    } else {
        // a worktree directory removed by hand is still registered: forget it
        let _ = git_ok(tree, &["worktree", "prune"]);
        let wt = worktree.display().to_string();
        git_ok(
            tree,
            &["worktree", "add", "-q", "--detach", "--force", &wt, sha],
        )?;
    }
    Ok(worktree)
}

/// Where the testbed keeps its worktree of `tree`.
pub fn linux_worktree(cache: &Cache, tree: &Path) -> Result<PathBuf, ImagesError> {
    let canonical = fs::canonicalize(tree).unwrap_or_else(|_| tree.to_path_buf());
    let dir = cache.dir("linux-trees")?;
    Ok(dir.join(short_hash(&[canonical.as_os_str().as_encoded_bytes()])))
}

/// The `O=` directory kept for `source` and the current fragments, and its log.
fn build_dir(cache: &Cache, source: &Path) -> Result<(PathBuf, PathBuf), ImagesError> {
    let name = short_hash(&[
        source.as_os_str().as_encoded_bytes(),
        &fragments_bytes(),
        format!("v{KBUILD_FORMAT_VERSION}").as_bytes(),
    ]);
    let dir = cache.dir("kbuild")?.join(&name);
    fs::create_dir_all(&dir).ctx("create directory", &dir)?;
    let log = cache.dir("logs")?.join(format!("kbuild-{name}.log"));
    Ok((dir, log))
}

pub(crate) fn jobs() -> usize {
    std::env::var("TESTBED_BUILD_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
}

fn have_ccache() -> bool {
    Command::new("ccache")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Configure and build `source` in its kept `O=` directory, install the
/// modules into `work/root`; returns the root and the description.
fn build(
    cache: &Cache,
    source: &Path,
    work: &Path,
    description: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<(PathBuf, String), ImagesError> {
    let (out_dir, log) = build_dir(cache, source)?;
    let _lock = cache.lock(&format!(
        "kbuild-{}",
        out_dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ))?;
    fs::write(&log, format!("building {description}\n")).ctx("write", &log)?;
    let fail = |step: &str| ImagesError::KernelBuild {
        step: step.into(),
        log: log.clone(),
        tail: log_tail(&log, 30),
    };

    // the fragments, written where merge_config.sh can read them
    let frag_dir = work.join("fragments");
    fs::create_dir_all(&frag_dir).ctx("create directory", &frag_dir)?;
    let mut merge: Vec<String> = Vec::new();
    for base in BASE_FRAGMENTS {
        if !source.join(base).is_file() {
            return Err(fail(&format!("configure ({base} missing)")));
        }
        merge.push(base.to_string());
    }
    for (name, text) in CONFIG_FRAGMENTS.iter().chain(IF_PRESENT_FRAGMENTS) {
        let p = frag_dir.join(name);
        fs::write(&p, text).ctx("write", &p)?;
        merge.push(p.display().to_string());
    }
    progress(Progress::ConfiguringKernel);
    let out = out_dir.display().to_string();
    let mut args = vec!["-n".to_string(), "-O".to_string(), out.clone()];
    args.extend(merge);
    if !run_logged(
        Command::new("scripts/kconfig/merge_config.sh")
            .args(&args)
            .current_dir(source)
            .env("ARCH", "x86_64"),
        &log,
        &mut |_| {},
    )? {
        return Err(fail("configure"));
    }
    let config =
        fs::read_to_string(out_dir.join(".config")).ctx("read", &out_dir.join(".config"))?;
    let missing = missing_values(&config);
    if !missing.is_empty() {
        return Err(ImagesError::KernelConfig {
            missing: missing.join(", "),
            log: log.clone(),
        });
    }

    let make = |targets: &[&str],
                extra: &[String],
                progress: &mut dyn FnMut(Progress)|
     -> Result<bool, ImagesError> {
        let mut c = Command::new("make");
        c.current_dir(source)
            .arg(format!("O={out}"))
            .arg("ARCH=x86_64")
            .arg(format!("-j{}", jobs()));
        if have_ccache() {
            c.arg("CC=ccache gcc");
        }
        c.args(extra).args(targets);
        let mut objects = 0u64;
        run_logged(&mut c, &log, &mut |line| {
            if is_compile_line(line) {
                objects += 1;
                if objects % 50 == 1 {
                    progress(Progress::BuildingKernel { objects });
                }
            }
        })
    };
    if !make(&["bzImage", "modules"], &[], progress)? {
        return Err(fail("build"));
    }
    let release_out = Command::new("make")
        .current_dir(source)
        .args([
            format!("O={out}"),
            "ARCH=x86_64".into(),
            "-s".into(),
            "kernelrelease".into(),
        ])
        .output()
        .map_err(|e| ImagesError::io("run make kernelrelease", e))?;
    let release = String::from_utf8_lossy(&release_out.stdout)
        .trim()
        .to_string();
    if !release_out.status.success() || release.is_empty() {
        return Err(fail("make kernelrelease"));
    }
    progress(Progress::InstallingModules {
        release: release.clone(),
    });
    let root = work.join("root");
    fs::create_dir_all(root.join("boot")).ctx("create directory", &root)?;
    let install = [
        format!("INSTALL_MOD_PATH={}", root.display()),
        "INSTALL_MOD_STRIP=1".to_string(),
    ];
    if !make(&["modules_install"], &install, progress)? {
        return Err(fail("modules_install"));
    }
    let mods = root.join("lib/modules").join(&release);
    // links back into the build and source trees: not part of the entry
    for link in ["build", "source"] {
        let _ = fs::remove_file(mods.join(link));
    }
    let bz = out_dir.join("arch/x86/boot/bzImage");
    let dst = root.join("boot").join(format!("vmlinuz-{release}"));
    fs::copy(&bz, &dst).ctx("copy", &bz)?;
    Ok((root, description.to_string()))
}

/// Kbuild's quiet lines for compiled objects (`  CC      kernel/fork.o`).
fn is_compile_line(line: &str) -> bool {
    let t = line.trim_start();
    line.starts_with("  ")
        && (t.starts_with("CC ") || t.starts_with("AS ") || t.starts_with("CC [M] "))
}

/// Values the fragments ask for that are not in the final `.config`
/// (those of [`IF_PRESENT_FRAGMENTS`] only where it has a line for them).
pub fn missing_values(config: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let fragments = CONFIG_FRAGMENTS
        .iter()
        .map(|f| (f, false))
        .chain(IF_PRESENT_FRAGMENTS.iter().map(|f| (f, true)));
    for ((_, text), if_present) in fragments {
        for line in text.lines().map(str::trim) {
            let (symbol, wanted) = if let Some(sym) = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                (sym, None)
            } else if line.starts_with("CONFIG_") {
                match line.split_once('=') {
                    Some((s, v)) => (s, Some(v)),
                    None => continue,
                }
            } else {
                continue;
            };
            let actual = config.lines().find_map(|l| {
                if l == format!("# {symbol} is not set") {
                    Some(None)
                } else {
                    l.strip_prefix(symbol)
                        .and_then(|r| r.strip_prefix('='))
                        .map(Some)
                }
            });
            let ok = match (wanted, actual) {
                (_, None) if if_present => true,
                (None, None | Some(None)) => true,
                (Some(w), Some(Some(a))) => w == a,
                _ => false,
            };
            if !ok {
                missing.push(match wanted {
                    Some(w) => format!("{symbol}={w}"),
                    None => format!("{symbol} unset"),
                });
            }
        }
    }
    missing
}

/// Runs `cmd` with stdout and stderr appended to `log`, handing each stdout
/// line to `line`; true when it succeeded.
pub(crate) fn run_logged(
    cmd: &mut Command,
    log: &Path,
    line: &mut dyn FnMut(&str),
) -> Result<bool, ImagesError> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ctx("open", log)?;
    let _ = writeln!(f, "$ {cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(f.try_clone().ctx("open", log)?);
    // the build stops (and stops its compilers) when the testbed dies
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ImagesError::io(format!("run {cmd:?}"), e))?;
    let stdout = child.stdout.take().expect("piped");
    for l in BufReader::new(stdout).lines() {
        let Ok(l) = l else { break };
        let _ = writeln!(f, "{l}");
        line(&l);
    }
    let status = child
        .wait()
        .map_err(|e| ImagesError::io("wait for the kernel build", e))?;
    Ok(status.success())
}

fn log_tail(log: &Path, n: usize) -> String {
    let text = fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    // from the first compiler error, if any, else the end
    let start = lines
        .iter()
        .position(|l| l.contains(": error:") || l.contains("*** "))
        .map(|i| i.saturating_sub(2))
        .unwrap_or(lines.len().saturating_sub(n));
    let end = (start + n).min(lines.len());
    lines[start..end].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_ask_for_vfio_noiommu_and_the_testbed_modules() {
        let all: String = CONFIG_FRAGMENTS.iter().map(|(_, t)| *t).collect();
        for want in [
            "CONFIG_VFIO_NOIOMMU=y",
            "CONFIG_KVM_AMD=m",
            "CONFIG_VFIO_PCI=m",
            "CONFIG_IRQ_REMAP=y",
            "CONFIG_KPROBE_EVENTS=y",
            "CONFIG_VHOST_VDPA=m",
            "CONFIG_VDPA_SIM_NET=m",
            "CONFIG_VP_VDPA=m",
            "CONFIG_PVH=y",
            "CONFIG_PCI_IOV=y",
            "CONFIG_IOMMUFD=y",
            "CONFIG_VFIO_DEVICE_CDEV=y",
            "CONFIG_VFIO_CONTAINER=y",
            "# CONFIG_IOMMUFD_VFIO_CONTAINER is not set",
        ] {
            assert!(all.lines().any(|l| l == want), "{want}");
        }
    }

    #[test]
    fn missing_values_names_what_did_not_survive() {
        let mut config: String = CONFIG_FRAGMENTS
            .iter()
            .flat_map(|(_, t)| t.lines())
            .filter(|l| l.starts_with("CONFIG_") || l.ends_with(" is not set"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(missing_values(&config), Vec::<String>::new());
        config = config.replace(
            "CONFIG_VFIO_NOIOMMU=y\n",
            "# CONFIG_VFIO_NOIOMMU is not set\n",
        );
        config = config.replace("CONFIG_KVM_AMD=m\n", "CONFIG_KVM_AMD=y\n");
        config = config.replace("CONFIG_VP_VDPA=m\n", "");
        let mut got = missing_values(&config);
        got.sort();
        assert_eq!(
            got,
            [
                "CONFIG_KVM_AMD=m",
                "CONFIG_VFIO_NOIOMMU=y",
                "CONFIG_VP_VDPA=m"
            ]
        );
        // a symbol that is a prefix of another is not confused with it
        let config = config.replace("CONFIG_VFIO=m\n", "CONFIG_VFIO_X=m\n");
        assert!(missing_values(&config).contains(&"CONFIG_VFIO=m".to_string()));
    }

    #[test]
    fn if_present_values_are_checked_only_where_the_tree_has_them() {
        let required: String = CONFIG_FRAGMENTS
            .iter()
            .flat_map(|(_, t)| t.lines())
            .filter(|l| l.starts_with("CONFIG_") || l.ends_with(" is not set"))
            .map(|l| format!("{l}\n"))
            .collect();
        // a tree without the symbol (Linux before 6.10): nothing missing
        assert!(!required.contains("X86_POSTED_MSI"));
        assert_eq!(missing_values(&required), Vec::<String>::new());
        // a tree that has it and sets it as asked
        let with = format!("{required}CONFIG_X86_POSTED_MSI=y\n");
        assert_eq!(missing_values(&with), Vec::<String>::new());
        // a tree that has it but could not set it
        let without = format!("{required}# CONFIG_X86_POSTED_MSI is not set\n");
        assert_eq!(missing_values(&without), ["CONFIG_X86_POSTED_MSI=y"]);
    }

    #[test]
    fn compile_lines() {
        assert!(is_compile_line("  CC      kernel/fork.o"));
        assert!(is_compile_line("  CC [M]  arch/x86/kvm/svm/svm.o"));
        assert!(is_compile_line("  AS      arch/x86/entry/entry_64.o"));
        assert!(!is_compile_line("  LD      vmlinux"));
        assert!(!is_compile_line("CC kernel/fork.o: error"));
    }

    /// A git tree that passes for a kernel tree, whose merge_config.sh
    /// records the commit it ran on and fails; returns the commits.
    fn fake_kernel_tree(dir: &Path) -> Vec<String> {
        let g = |args: &[&str]| {
            let out = git(dir).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        g(&["init", "-q", "-b", "main"]);
        g(&["config", "user.name", "t"]);
        g(&["config", "user.email", "t@localhost"]);
        fs::create_dir_all(dir.join("scripts/kconfig")).unwrap();
        fs::create_dir_all(dir.join("kernel/configs")).unwrap();
        fs::create_dir_all(dir.join("arch/x86/configs")).unwrap();
        fs::write(dir.join("kernel/configs/tiny.config"), "").unwrap();
        fs::write(dir.join("arch/x86/configs/tiny.config"), "").unwrap();
        let script = dir.join("scripts/kconfig/merge_config.sh");
        let mut shas = Vec::new();
        for i in 0..3 {
            fs::write(dir.join("Kconfig"), format!("# version {i}\n")).unwrap();
            fs::write(
                &script,
                "#!/bin/sh\necho \"configuring $(cat Kconfig)\"\nexit 1\n",
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
            g(&["add", "-A"]);
            g(&["commit", "-q", "-m", &format!("v{i}")]);
            shas.push(g(&["rev-parse", "HEAD"]));
        }
        shas
    }

    #[test]
    fn a_revision_is_built_in_the_testbeds_worktree_and_a_failure_leaves_no_entry() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("linux");
        fs::create_dir_all(&tree).unwrap();
        let shas = fake_kernel_tree(&tree);
        let cache = Cache::new(t.path().join("cache"));
        let e = resolve_git(&cache, &tree, Some("HEAD~1"), &mut |_| {}).unwrap_err();
        // a failed build is not bad input (exit 125), names its step and keeps the log
        assert!(!e.is_bad_input(), "{e}");
        let ImagesError::KernelBuild { step, log, tail } = &e else {
            panic!("{e}")
        };
        assert_eq!(step, "configure");
        assert!(tail.contains("configuring # version 1"), "{tail}");
        assert!(log.is_file());
        // built from HEAD~1 in the worktree; the user's checkout is untouched
        let worktree = linux_worktree(&cache, &tree).unwrap();
        assert_eq!(git_ok(&worktree, &["rev-parse", "HEAD"]).unwrap(), shas[1]);
        assert_eq!(git_ok(&tree, &["rev-parse", "HEAD"]).unwrap(), shas[2]);
        assert_eq!(
            git_ok(&tree, &["symbolic-ref", "HEAD"]).unwrap(),
            "refs/heads/main"
        );
        // nothing half-built became an entry
        let entries = fs::read_dir(t.path().join("cache/kernels"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(entries, 0);
        // the same worktree moves to the next revision asked for
        let e = resolve_git(&cache, &tree, Some(&shas[0]), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("configuring # version 0"), "{e}");
        assert_eq!(git_ok(&worktree, &["rev-parse", "HEAD"]).unwrap(), shas[0]);
        // an unknown revision is bad input
        let e = resolve_git(&cache, &tree, Some("nope"), &mut |_| {}).unwrap_err();
        assert!(
            e.is_bad_input() && e.to_string().ends_with("unknown revision nope"),
            "{e}"
        );
        // the checkout itself is built in place, as it is
        let e = resolve_git(&cache, &tree, None, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("configuring # version 2"), "{e}");
    }

    #[test]
    fn bad_trees_are_bad_input() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::new(t.path().join("cache"));
        let e = resolve_git(&cache, t.path(), Some("HEAD"), &mut |_| {}).unwrap_err();
        assert!(e.is_bad_input(), "{e}");
        assert!(e.to_string().contains("not a Linux source tree"), "{e}");
        let e = resolve_git(&cache, &t.path().join("nope"), None, &mut |_| {}).unwrap_err();
        assert!(e.is_bad_input(), "{e}");
    }
}
