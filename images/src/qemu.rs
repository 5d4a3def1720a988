//! Building QEMU from a pinned source plus the project's patch series.
//!
//! [`build_qemu`] turns a [`QemuBuildSpec`] (a source, a directory of
//! `NNNN-*.patch` files applied in file-name order, configure arguments)
//! into a [`QemuBuild`]: one `qemu-system-x86_64` binary plus the data
//! directories it needs at run time (`-L`). The entry is keyed by the
//! content of everything that goes into it and built like the kernel
//! entries: in a locked work directory, then renamed into place.
//!
//! Layout under the cache root (beside those of `cache.rs`):
//!
//! ```text
//! qemu/<sha256>/           bin/qemu-system-x86_64, qemu.json, build.log
//! qemu-tree/<source-key>/  src/ (patched source), build/ (configured, built
//!                          incrementally), check.log: one per QEMU source,
//!                          shared by every patch series and by qemu-check
//! qemu-src/<sha256>.orig.tar.xz   verified upstream tarballs of Debian sources
//! qemu-venv/               python venv with meson and pycotap (stamp .testbed-ready)
//! logs/qemu-<key>.log      the build log of the last failed build of <key>
//! ```
//!
//! An entry is built in the source's tree: the freshly exported and patched
//! source is synced into `src/` (only files whose content changed are
//! rewritten, so ninja recompiles only what a patch change touched), the
//! binary built there is copied into a work directory with the entry's
//! metadata and renamed into place. The configure arguments do not depend on
//! the patches, so a new patch series never forces a reconfigure.
//!
//! The Debian source is the `+ds` orig tarball only: Debian's own
//! debian/patches are not applied, our patches go on the upstream tree. The
//! `+ds` tarball carries no firmware, so the build skips the edk2 unpack and
//! blob install, and QEMU finds SeaBIOS and its option ROMs in the system's
//! data directories (seabios, qemu-system-data), given with `-L`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apt::{hex, sha256_file, Apt};
use crate::cache::{publish, Cache, FileLock};
use crate::kernel::refresh_if_stale;
use crate::{ImagesError, IoContext, Progress};

/// Bump when the entry layout or the build procedure changes.
pub const QEMU_FORMAT_VERSION: u32 = 1;

/// The pinned source: Debian trixie's `qemu` source package.
pub const PINNED_DEBIAN_VERSION: &str = "1:10.0.13+ds-0+deb13u1";

/// SHA256 of `qemu_10.0.13+ds.orig.tar.xz`, the upstream tree of the pinned
/// version.
pub const PINNED_ORIG_SHA256: &str =
    "6a0888e806c2ffc0c5f0733e974f9aea55491950d3c47c98669c8b236dde59ae";

/// Python packages the QEMU build needs from PyPI (bookworm's meson is too
/// old; pycotap is in QEMU's pythondeps.toml). The versions QEMU 10.0 pins
/// in its own pythondeps.toml.
pub const PYTHON_REQUIREMENTS: &[&str] = &["meson==1.5.0", "pycotap==1.3.1"];

/// The binary the build produces.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// Where the QEMU source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuSource {
    /// The upstream tarball of a Debian `qemu` source package version
    /// (epoch included, e.g. `1:10.0.13+ds-0+deb13u1`), fetched with
    /// `apt-get source --download-only` through the private apt state.
    Debian { version: String },
    /// A user's QEMU git checkout: its HEAD plus the uncommitted changes to
    /// tracked files (`git diff HEAD`); untracked files are ignored, except
    /// downloaded meson subprojects. The checkout itself is never modified.
    Tree(PathBuf),
}

impl QemuSource {
    pub fn pinned() -> QemuSource {
        QemuSource::Debian {
            version: PINNED_DEBIAN_VERSION.to_string(),
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuBuildSpec {
    pub source: QemuSource,
    /// `NNNN-*.patch` files here are applied in file-name order; a missing
    /// directory means no patches.
    pub patches_dir: PathBuf,
    pub configure_args: Vec<String>,
}

impl QemuBuildSpec {
    /// `source` with the patches in `patches_dir` and [`default_configure_args`].
    pub fn new(source: QemuSource, patches_dir: impl Into<PathBuf>) -> QemuBuildSpec {
        QemuBuildSpec {
            source,
            patches_dir: patches_dir.into(),
            configure_args: default_configure_args(),
        }
    }
}

/// Configure arguments: only the x86_64 system emulator; only the features
/// a testbed boot uses (q35, -kernel, serial to a file and a unix socket,
/// QMP, TCG, KVM where the host has it); no docs, no tools, no UI, so the
/// build takes minutes. `--disable-install-blobs`: the `+ds` tarball has no
/// firmware; `--firmwarepath`: the system's firmware directories (as
/// Debian's own build), so qtests run from the build directory find
/// SeaBIOS too, not only boots given `-L`. No debug info: the entry stays
/// small and the build faster. vhost-vdpa and vhost-net: the same binary is
/// the VMM of an L2 in L1, which opens a vDPA device with `-netdev
/// type=vhost-vdpa` (built-kernel/vdpa-sim-l2.toml).
pub fn default_configure_args() -> Vec<String> {
    [
        "--target-list=x86_64-softmmu",
        "--without-default-features",
        "--enable-tcg",
        "--enable-kvm",
        "--enable-vhost-vdpa",
        "--enable-vhost-net",
        "--enable-fdt=system",
        "--disable-install-blobs",
        &format!("--firmwarepath={}", FIRMWARE_DIRS.join(":")),
        "--disable-debug-info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A built QEMU ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuBuild {
    pub binary: PathBuf,
    /// Pass each with `-L`: firmware and option ROMs (SeaBIOS,
    /// linuxboot_dma.bin, kvmvapic.bin) from the system's packages.
    pub data_dirs: Vec<PathBuf>,
    /// e.g. `qemu 10.0.13 +3 patches (key abcd1234abcd)`.
    pub description: String,
}

/// Where Debian's packages put QEMU's firmware: qemu-system-data,
/// seabios, ipxe-qemu (Debian's own `--firmwarepath`).
pub const FIRMWARE_DIRS: &[&str] = &[
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/lib/ipxe/qemu",
];

/// Firmware a q35 `-kernel` boot loads: SeaBIOS, the option ROM that loads
/// the kernel through fw_cfg DMA, and the TCG/KVM vapic ROM.
pub const RUNTIME_FILES: &[&str] = &["bios-256k.bin", "linuxboot_dma.bin", "kvmvapic.bin"];

/// Where Debian's packages put QEMU's firmware (qemu-system-data, seabios,
/// ipxe-qemu); the ones that exist.
pub fn system_data_dirs() -> Vec<PathBuf> {
    FIRMWARE_DIRS
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .collect()
}

fn check_runtime_files(dirs: &[PathBuf]) -> Result<(), ImagesError> {
    let missing: Vec<&str> = RUNTIME_FILES
        .iter()
        .copied()
        .filter(|f| !dirs.iter().any(|d| d.join(f).is_file()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ImagesError::MissingFirmware {
            files: missing.join(", "),
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// The patch files of `dir` (`NNNN-*.patch`, four digits), in file-name
/// order. A missing directory has none.
pub fn list_patches(dir: &Path) -> Result<Vec<PathBuf>, ImagesError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImagesError::io(format!("read {}", dir.display()), e)),
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            is_patch_name(name) && p.is_file()
        })
        .collect();
    out.sort();
    Ok(out)
}

fn is_patch_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() > 4 + 1 + 6
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && name.ends_with(".patch")
}

/// Source identity: what the key covers for the source.
#[derive(Debug, Clone)]
enum SourceId {
    Debian {
        version: String,
        orig_sha256: String,
    },
    Tree {
        path: PathBuf,
        head: String,
        diff: Vec<u8>,
    },
}

impl SourceId {
    fn key_bytes(&self) -> Vec<u8> {
        match self {
            SourceId::Debian { orig_sha256, .. } => {
                format!("orig-sha256 {orig_sha256}").into_bytes()
            }
            SourceId::Tree { head, diff, .. } => {
                let mut v = format!("git {head} diff-sha256 ").into_bytes();
                v.extend_from_slice(hex(&Sha256::digest(diff)).as_bytes());
                v
            }
        }
    }
}

/// The content key of a build: format version, source identity, every
/// patch's bytes in order, configure arguments.
fn build_key(source: &SourceId, patches: &[Vec<u8>], configure_args: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(format!("irqbypass-testbed qemu v{QEMU_FORMAT_VERSION}\0").as_bytes());
    h.update(source.key_bytes());
    h.update(format!("\0patches {}\0", patches.len()).as_bytes());
    for p in patches {
        h.update(format!("{}\0", p.len()).as_bytes());
        h.update(p);
    }
    h.update(format!("args {}\0", configure_args.len()).as_bytes());
    for a in configure_args {
        h.update(a.as_bytes());
        h.update(b"\0");
    }
    hex(&h.finalize())
}

#[derive(Debug, Serialize, Deserialize)]
struct EntryMeta {
    /// `10.0.13`
    version: String,
    description: String,
    /// First line of `qemu-system-x86_64 --version`.
    version_line: String,
}

const ENTRY_META: &str = "qemu.json";

fn load_entry(dir: &Path) -> Result<Option<QemuBuild>, ImagesError> {
    let Ok(text) = fs::read(dir.join(ENTRY_META)) else {
        return Ok(None);
    };
    let meta: EntryMeta =
        serde_json::from_slice(&text).map_err(|e| ImagesError::BadCacheEntry {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })?;
    let binary = dir.join("bin").join(QEMU_BINARY);
    if !binary.is_file() {
        return Err(ImagesError::BadCacheEntry {
            path: dir.to_path_buf(),
            why: "binary missing".into(),
        });
    }
    let data_dirs = system_data_dirs();
    check_runtime_files(&data_dirs)?;
    Ok(Some(QemuBuild {
        binary,
        data_dirs,
        description: meta.description,
    }))
}

/// Build (or find in the cache) the QEMU `spec` describes.
/// The cache directory that holds (or would hold) the build of `spec`,
/// named by its key; nothing is built.
pub fn entry_dir(
    cache: &Cache,
    spec: &QemuBuildSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, ImagesError> {
    let (_, _, key) = identify(cache, spec, progress)?;
    Ok(cache.root().join("qemu").join(key))
}

/// The patch files of `spec`, its source's identity and the build key.
fn identify(
    cache: &Cache,
    spec: &QemuBuildSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Vec<PathBuf>, SourceId, String), ImagesError> {
    let patch_files = list_patches(&spec.patches_dir)?;
    let patches = patch_files
        .iter()
        .map(|p| fs::read(p).ctx("read", p))
        .collect::<Result<Vec<_>, _>>()?;
    let source = source_identity(cache, &spec.source, progress)?;
    let key = build_key(&source, &patches, &spec.configure_args);
    Ok((patch_files, source, key))
}

pub fn build_qemu(
    cache: &Cache,
    spec: &QemuBuildSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<QemuBuild, ImagesError> {
    let (patch_files, source, key) = identify(cache, spec, progress)?;
    let short = &key[..12];
    let final_dir = cache.root().join("qemu").join(&key);
    let hit_what = |d: &str| d.to_string();
    if let Ok(Some(b)) = load_entry(&final_dir) {
        progress(Progress::CacheHit {
            what: hit_what(&b.description),
        });
        return Ok(b);
    }
    let _lock = cache.lock(&format!("qemu-{key}"))?;
    match load_entry(&final_dir) {
        Ok(Some(b)) => {
            progress(Progress::CacheHit {
                what: hit_what(&b.description),
            });
            return Ok(b);
        }
        Err(e @ ImagesError::MissingFirmware { .. }) => return Err(e),
        Ok(None) if !final_dir.exists() => {}
        _ => fs::remove_dir_all(&final_dir).ctx("remove damaged entry", &final_dir)?,
    }
    check_runtime_files(&system_data_dirs())?;
    let python = ensure_venv(cache, progress)?;
    let work = cache.work_dir("qemu")?;
    let fresh = work.path().join("src");
    let log_path = work.path().join("build.log");
    let entry = work.path().join("entry");
    let bin_dir = entry.join("bin");
    let result = (|| -> Result<String, ImagesError> {
        let tree = open_tree(
            cache,
            &source,
            &patch_files,
            &fresh,
            &spec.configure_args,
            &python,
            &log_path,
            progress,
        )?;
        ninja(&tree.build, &[QEMU_BINARY], &log_path, progress)?;
        // copied while the tree is locked: the tree keeps its binary, so the
        // next build links only when something changed
        fs::create_dir_all(&bin_dir).ctx("create directory", &bin_dir)?;
        let built = tree.build.join(QEMU_BINARY);
        fs::copy(&built, bin_dir.join(QEMU_BINARY)).ctx("copy", &built)?;
        Ok(tree.version)
    })();
    let version = match result {
        Ok(v) => v,
        Err(e) => return Err(keep_log(cache, &key, &log_path, e)),
    };
    let version_line = run_version(&bin_dir.join(QEMU_BINARY))?;
    let description = match &source {
        SourceId::Debian { .. } => {
            format!("{version} +{} patches (key {short})", patch_files.len())
        }
        SourceId::Tree { path, head, diff } => format!(
            "{version} tree {}@{}{} +{} patches (key {short})",
            path.display(),
            &head[..head.len().min(12)],
            if diff.is_empty() { "" } else { "+dirty" },
            patch_files.len()
        ),
    };
    let _ = fs::copy(&log_path, entry.join("build.log"));
    let meta = EntryMeta {
        version,
        description: format!("qemu {description}"),
        version_line,
    };
    fs::write(
        entry.join(ENTRY_META),
        serde_json::to_vec_pretty(&meta).expect("meta serializes"),
    )
    .ctx("write", &entry)?;
    publish(&entry, &final_dir)?;
    drop(work);
    load_entry(&final_dir)?.ok_or_else(|| ImagesError::BadCacheEntry {
        path: final_dir,
        why: "entry vanished".into(),
    })
}

/// Move the log of a failed build out of the work directory (which is
/// removed) and name it in the error.
fn keep_log(cache: &Cache, key: &str, log: &Path, e: ImagesError) -> ImagesError {
    let kept = cache.root().join("logs").join(format!("qemu-{key}.log"));
    let moved = log.is_file()
        && fs::create_dir_all(kept.parent().expect("has parent")).is_ok()
        && fs::copy(log, &kept).is_ok();
    match e {
        ImagesError::QemuBuild { step, tail, .. } if moved => ImagesError::QemuBuild {
            step,
            log: kept,
            tail,
        },
        other => other,
    }
}

fn run_version(binary: &Path) -> Result<String, ImagesError> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| ImagesError::io(format!("run {} --version", binary.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").to_string();
    if !out.status.success() || !line.contains("QEMU emulator version") {
        return Err(ImagesError::Command {
            cmd: format!("{} --version", binary.display()),
            detail: crate::apt::last_lines(&out.stderr, &out.stdout),
        });
    }
    Ok(line)
}

fn source_identity(
    cache: &Cache,
    source: &QemuSource,
    progress: &mut dyn FnMut(Progress),
) -> Result<SourceId, ImagesError> {
    match source {
        QemuSource::Debian { version } => {
            let orig_sha256 = if version == PINNED_DEBIAN_VERSION {
                PINNED_ORIG_SHA256.to_string()
            } else {
                // unknown ahead of time: fetch (once; remembered per version)
                let remembered = version_file(cache, version);
                match fs::read_to_string(&remembered) {
                    Ok(s) if orig_tarball(cache, s.trim()).is_file() => s.trim().to_string(),
                    _ => {
                        let sha = fetch_orig_tarball(cache, version, None, progress)?;
                        crate::cache::write_atomic(&remembered, sha.as_bytes())?;
                        sha
                    }
                }
            };
            Ok(SourceId::Debian {
                version: version.clone(),
                orig_sha256,
            })
        }
        QemuSource::Tree(path) => tree_identity(path),
    }
}

fn version_file(cache: &Cache, version: &str) -> PathBuf {
    let name: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    cache.root().join("qemu-src").join(format!("{name}.sha256"))
}

fn orig_tarball(cache: &Cache, sha256: &str) -> PathBuf {
    cache
        .root()
        .join("qemu-src")
        .join(format!("{sha256}.orig.tar.xz"))
}

fn bad_tree(path: &Path, why: impl Into<String>) -> ImagesError {
    ImagesError::BadQemuTree {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir);
    c
}

fn tree_identity(path: &Path) -> Result<SourceId, ImagesError> {
    if !path.join("configure").is_file() || !path.join("VERSION").is_file() {
        return Err(bad_tree(
            path,
            "not a QEMU source tree (no configure or VERSION)",
        ));
    }
    let out = git(path)
        .args(["rev-parse", "--verify", "HEAD"])
        .output()
        .map_err(|e| ImagesError::io("run git", e))?;
    if !out.status.success() {
        return Err(bad_tree(
            path,
            format!(
                "not a git checkout: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = git(path)
        .args(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"])
        .output()
        .map_err(|e| ImagesError::io("run git diff", e))?;
    if !out.status.success() {
        return Err(bad_tree(
            path,
            format!(
                "git diff failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(SourceId::Tree {
        path,
        head,
        diff: out.stdout,
    })
}

/// The verified upstream tarball of Debian source `version` in the cache,
/// fetched through the private apt state if needed; returns its sha256.
fn fetch_orig_tarball(
    cache: &Cache,
    version: &str,
    expected: Option<&str>,
    progress: &mut dyn FnMut(Progress),
) -> Result<String, ImagesError> {
    if let Some(sha) = expected {
        if orig_tarball(cache, sha).is_file() {
            return Ok(sha.to_string());
        }
    }
    let _lock = cache.lock("qemu-src")?;
    if let Some(sha) = expected {
        if orig_tarball(cache, sha).is_file() {
            return Ok(sha.to_string());
        }
    }
    let work = cache.work_dir("qemu-src")?;
    {
        let _apt = cache.lock("apt")?;
        let apt = Apt::prepare(cache)?;
        let mut updated = if apt.has_source_lists() {
            refresh_if_stale(&apt, progress)?
        } else {
            apt.update(progress)?;
            true
        };
        progress(Progress::FetchingQemuSource {
            version: version.to_string(),
        });
        loop {
            match apt.download_source("qemu", version, work.path()) {
                Ok(()) => break,
                Err(_) if !updated => {
                    apt.update(progress)?;
                    updated = true;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let orig = fs::read_dir(work.path())
        .ctx("read", work.path())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".orig.tar."))
        })
        .ok_or_else(|| ImagesError::Command {
            cmd: format!("apt-get source qemu={version}"),
            detail: "no orig tarball downloaded".into(),
        })?;
    let actual = sha256_file(&orig)?;
    if let Some(sha) = expected {
        if !actual.eq_ignore_ascii_case(sha) {
            return Err(ImagesError::Checksum {
                file: orig.display().to_string(),
                expected: sha.to_string(),
                actual,
            });
        }
    }
    publish(&orig, &orig_tarball(cache, &actual))?;
    Ok(actual)
}

/// Fill `dest` (must not exist) with the patched source; returns the QEMU
/// version from its VERSION file.
fn prepare_source(
    cache: &Cache,
    source: &SourceId,
    patches: &[PathBuf],
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<String, ImagesError> {
    fs::create_dir_all(dest).ctx("create directory", dest)?;
    match source {
        SourceId::Debian {
            version,
            orig_sha256,
        } => {
            let sha = fetch_orig_tarball(cache, version, Some(orig_sha256), progress)?;
            progress(Progress::Unpacking {
                package: format!("qemu {version}"),
            });
            let tarball = orig_tarball(cache, &sha);
            run_checked(
                Command::new("tar")
                    .arg("-xf")
                    .arg(&tarball)
                    .arg("-C")
                    .arg(dest)
                    .arg("--strip-components=1"),
                &format!("tar -xf {}", tarball.display()),
            )?;
        }
        SourceId::Tree { path, diff, .. } => {
            progress(Progress::Unpacking {
                package: format!("qemu tree {}", path.display()),
            });
            let tar = dest.with_extension("tar");
            run_checked(
                git(path)
                    .args(["archive", "--format=tar", "-o"])
                    .arg(&tar)
                    .arg("HEAD"),
                &format!("git -C {} archive HEAD", path.display()),
            )?;
            run_checked(
                Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dest),
                &format!("tar -xf {}", tar.display()),
            )?;
            let _ = fs::remove_file(&tar);
            if !diff.is_empty() {
                let diff_file = dest.with_extension("dirty.diff");
                fs::write(&diff_file, diff).ctx("write", &diff_file)?;
                git_apply(dest, &diff_file).map_err(|output| {
                    bad_tree(
                        path,
                        format!("its uncommitted changes do not apply to HEAD: {output}"),
                    )
                })?;
                let _ = fs::remove_file(&diff_file);
            }
            copy_downloaded_subprojects(path, dest)?;
        }
    }
    if !patches.is_empty() {
        progress(Progress::ApplyingPatches {
            count: patches.len(),
        });
    }
    for p in patches {
        git_apply(dest, p).map_err(|output| ImagesError::PatchFailed {
            patch: p.clone(),
            output,
        })?;
    }
    skip_edk2_unpack(dest)?;
    let version_path = dest.join("VERSION");
    let version = fs::read_to_string(&version_path)
        .ctx("read", &version_path)?
        .trim()
        .to_string();
    Ok(version)
}

/// meson subprojects a checkout downloaded (untracked, so not in `git
/// archive`): copy them so the build needs no network.
fn copy_downloaded_subprojects(tree: &Path, dest: &Path) -> Result<(), ImagesError> {
    let Ok(rd) = fs::read_dir(tree.join("subprojects")) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        let to = dest.join("subprojects").join(e.file_name());
        if p.is_dir() && !to.exists() && e.file_name() != "packagecache" {
            run_checked(
                Command::new("cp").arg("-a").arg(&p).arg(&to),
                &format!("cp -a {}", p.display()),
            )?;
        }
    }
    Ok(())
}

/// `git apply` in `dir` (not a repository; a repository above it, e.g. the
/// project's own when the cache lives inside it, is never consulted).
/// Err carries git's output: the file and hunk that failed.
pub(crate) fn git_apply(dir: &Path, patch: &Path) -> Result<(), String> {
    let ceiling = dir.parent().unwrap_or(dir);
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CEILING_DIRECTORIES", ceiling)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .args(["apply", "--verbose", "--whitespace=nowarn"])
        .arg(patch)
        .output()
        .map_err(|e| format!("cannot run git apply: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(30)..];
    Err(tail.join("\n"))
}

/// The `+ds` tarball has no edk2 blobs, yet QEMU's pc-bios/meson.build
/// unpacks them for x86 targets; skip that (what Debian's
/// skip-unpack-edk2-blobs.patch does) when the blobs are absent.
fn skip_edk2_unpack(src: &Path) -> Result<(), ImagesError> {
    if src.join("pc-bios/edk2-x86_64-code.fd.bz2").exists() {
        return Ok(());
    }
    let p = src.join("pc-bios/meson.build");
    if !p.exists() {
        return Ok(());
    }
    let text = fs::read_to_string(&p).ctx("read", &p)?;
    let new = text.replacen(
        "\nif unpack_edk2_blobs\n",
        "\nif unpack_edk2_blobs and false\n",
        1,
    );
    if new != text {
        fs::write(&p, new).ctx("write", &p)?;
    }
    Ok(())
}

pub(crate) fn run_checked(cmd: &mut Command, what: &str) -> Result<(), ImagesError> {
    let out = cmd
        .output()
        .map_err(|e| ImagesError::io(format!("run {what}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImagesError::Command {
            cmd: what.to_string(),
            detail: crate::apt::last_lines(&out.stderr, &out.stdout),
        })
    }
}

/// The venv's python, with [`PYTHON_REQUIREMENTS`] installed (once).
pub fn ensure_venv(
    cache: &Cache,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, ImagesError> {
    let dir = cache.root().join("qemu-venv");
    let stamp = dir.join(".testbed-ready");
    let want = PYTHON_REQUIREMENTS.join("\n");
    let python = dir.join("bin/python3");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) && python.exists() {
        return Ok(python);
    }
    let _lock = cache.lock("qemu-venv")?;
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) && python.exists() {
        return Ok(python);
    }
    progress(Progress::PreparingPythonVenv);
    if dir.exists() {
        fs::remove_dir_all(&dir).ctx("remove", &dir)?;
    }
    // the system's python (python3-venv), not whatever python3 PATH finds first
    let system = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    run_checked(
        Command::new(system).args(["-m", "venv"]).arg(&dir),
        &format!("{system} -m venv (install python3-venv)"),
    )?;
    run_checked(
        Command::new(dir.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_REQUIREMENTS),
        &format!("pip install {}", PYTHON_REQUIREMENTS.join(" ")),
    )?;
    // a venv is not relocatable, so it is built in place; the stamp comes last
    crate::cache::write_atomic(&stamp, want.as_bytes())?;
    Ok(python)
}

fn open_log(log: &Path) -> Result<fs::File, ImagesError> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ctx("open", log)
}

fn log_tail(log: &Path, n: usize) -> String {
    let text = fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    // from the first failure ninja reports, if any, else the end
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("FAILED: "))
        .unwrap_or(lines.len().saturating_sub(n));
    let end = (start + n).min(lines.len());
    lines[start..end].join("\n")
}

fn configure(
    src: &Path,
    build: &Path,
    python: &Path,
    args: &[String],
    log: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), ImagesError> {
    progress(Progress::ConfiguringQemu);
    let mut f = open_log(log)?;
    let _ = writeln!(
        f,
        "$ {}/configure --python={} {}",
        src.display(),
        python.display(),
        args.join(" ")
    );
    let status = Command::new(src.join("configure"))
        .current_dir(build)
        .arg(format!("--python={}", python.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().ctx("open", log)?)
        .stderr(f)
        .status()
        .map_err(|e| ImagesError::io("run configure", e))?;
    if !status.success() {
        return Err(ImagesError::QemuBuild {
            step: "configure".into(),
            log: log.to_path_buf(),
            tail: log_tail(log, 25),
        });
    }
    Ok(())
}

/// Jobs for ninja: `$TESTBED_BUILD_JOBS`, else the number of CPUs.
fn jobs() -> usize {
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

/// `[N/M] ...` → (N, M)
fn ninja_step(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix('[')?;
    let (nums, _) = rest.split_once(']')?;
    let (n, m) = nums.split_once('/')?;
    Some((n.trim().parse().ok()?, m.trim().parse().ok()?))
}

/// `ninja -C build targets...`, output into the log, progress from its
/// `[N/M]` lines (at most about every 5%).
pub fn ninja(
    build: &Path,
    targets: &[&str],
    log: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), ImagesError> {
    let mut f = open_log(log)?;
    let jobs = jobs();
    let _ = writeln!(
        f,
        "$ ninja -C {} -j{jobs} {}",
        build.display(),
        targets.join(" ")
    );
    let mut cmd = Command::new("ninja");
    cmd.arg("-C")
        .arg(build)
        .arg(format!("-j{jobs}"))
        .args(targets);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(f.try_clone().ctx("open", log)?);
    // ninja stops (and stops its compilers) when the testbed dies
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
        .map_err(|e| ImagesError::io("run ninja (install ninja-build)", e))?;
    let stdout = child.stdout.take().expect("piped");
    let mut last_bucket = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(f, "{line}");
        if let Some((n, m)) = ninja_step(&line) {
            let bucket = n * 20 / m.max(1);
            if last_bucket != Some(bucket) || n == m {
                last_bucket = Some(bucket);
                progress(Progress::BuildingQemu { step: n, total: m });
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| ImagesError::io("wait for ninja", e))?;
    if !status.success() {
        return Err(ImagesError::QemuBuild {
            step: "build".into(),
            log: log.to_path_buf(),
            tail: log_tail(log, 30),
        });
    }
    Ok(())
}

/// Bump when the layout of a `qemu-tree/` directory or the way it is
/// configured changes (an old tree is then left alone, a new one made).
pub const QEMU_TREE_FORMAT_VERSION: u32 = 1;

/// The `--with-pkgversion` of every build: constant, so that a change of
/// patches never changes configure's arguments (which would reconfigure
/// and rebuild everything). The entry's description names its key.
const PKGVERSION: &str = "--with-pkgversion=testbed";

/// Which tree a source builds in: one per Debian source tarball, one per
/// checkout (whatever its HEAD and uncommitted changes, so that editing a
/// checkout rebuilds incrementally too). Patches are not part of it.
fn tree_key(source: &SourceId) -> String {
    let mut h = Sha256::new();
    h.update(format!("irqbypass-testbed qemu-tree v{QEMU_TREE_FORMAT_VERSION}\0").as_bytes());
    match source {
        SourceId::Debian { orig_sha256, .. } => {
            h.update(format!("orig-sha256 {orig_sha256}").as_bytes())
        }
        SourceId::Tree { path, .. } => {
            h.update(b"checkout ");
            h.update(path.as_os_str().as_encoded_bytes());
        }
    }
    hex(&h.finalize())[..16].to_string()
}

/// The configured build tree of one source, locked for as long as it lives.
struct OpenTree {
    dir: PathBuf,
    src: PathBuf,
    build: PathBuf,
    /// QEMU's VERSION.
    version: String,
    _lock: FileLock,
}

/// Lock the tree of `source`, make its `src/` the source plus `patches`
/// (exported into `fresh`, which must not exist, then synced: only changed
/// files are rewritten) and configure its `build/` with `configure_args`
/// when it is new or was configured differently. Configure's output goes
/// to `log`.
#[allow(clippy::too_many_arguments)]
fn open_tree(
    cache: &Cache,
    source: &SourceId,
    patches: &[PathBuf],
    fresh: &Path,
    configure_args: &[String],
    python: &Path,
    log: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<OpenTree, ImagesError> {
    let key = tree_key(source);
    let dir = cache.dir("qemu-tree")?.join(&key);
    let lock = cache.lock(&format!("qemu-tree-{key}"))?;
    let version = prepare_source(cache, source, patches, fresh, progress)?;
    progress(Progress::UpdatingQemuTree { dir: dir.clone() });
    let src = dir.join("src");
    sync_tree(fresh, &src)?;
    let build = dir.join("build");
    let stamp = build.join(".testbed-configure");
    let mut args = configure_args.to_vec();
    args.push(PKGVERSION.into());
    let want = format!("{}\n{}", python.display(), args.join("\n"));
    if fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str())
        || !build.join("build.ninja").exists()
    {
        if build.exists() {
            fs::remove_dir_all(&build).ctx("remove", &build)?;
        }
        fs::create_dir_all(&build).ctx("create directory", &build)?;
        configure(&src, &build, python, &args, log, progress)?;
        fs::write(&stamp, want).ctx("write", &stamp)?;
    }
    Ok(OpenTree {
        dir,
        src,
        build,
        version,
        _lock: lock,
    })
}

/// The build tree `cargo xtask qemu-check` builds and runs QEMU-level tests
/// in: the same tree [`build_qemu`] builds the testbed's QEMU in, locked
/// until this is dropped. `build` holds an up-to-date configure; which
/// targets to build is the caller's choice.
#[derive(Debug)]
pub struct CheckTree {
    pub src: PathBuf,
    pub build: PathBuf,
    /// Inside the build directory: the meson QEMU's configure set up.
    pub meson: PathBuf,
    /// The log of this check (configure, ninja), rewritten each time.
    pub log: PathBuf,
    pub description: String,
    _lock: FileLock,
}

/// Lock the build tree of `spec`'s source and bring it to `spec` (its
/// patches, synced so ninja rebuilds only what changed; configured with the
/// spec's arguments when new or configured differently), exactly as
/// [`build_qemu`] does before it builds, so after a build of the same spec
/// only what the tests add is left to compile.
pub fn prepare_check_tree(
    cache: &Cache,
    spec: &QemuBuildSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<CheckTree, ImagesError> {
    let patch_files = list_patches(&spec.patches_dir)?;
    let source = source_identity(cache, &spec.source, progress)?;
    let python = ensure_venv(cache, progress)?;
    let work = cache.work_dir("qemu-check")?;
    let configure_log = work.path().join("check.log");
    let tree = open_tree(
        cache,
        &source,
        &patch_files,
        &work.path().join("src"),
        &spec.configure_args,
        &python,
        &configure_log,
        progress,
    )?;
    // this check's log: configure's output, if it ran, then the caller's ninja
    let log = tree.dir.join("check.log");
    if configure_log.is_file() {
        fs::rename(&configure_log, &log).ctx("rename", &configure_log)?;
    } else {
        fs::write(&log, "").ctx("write", &log)?;
    }
    drop(work);
    // Run from its build directory, QEMU looks for everything, the
    // firmware path included, under build/qemu-bundle/: link the system's
    // firmware directories there so qtests find SeaBIOS.
    for d in FIRMWARE_DIRS.iter().map(Path::new).filter(|d| d.is_dir()) {
        let link = tree
            .build
            .join("qemu-bundle")
            .join(d.strip_prefix("/").unwrap_or(d));
        if fs::symlink_metadata(&link).is_err() {
            let parent = link.parent().expect("has parent");
            fs::create_dir_all(parent).ctx("create directory", parent)?;
            std::os::unix::fs::symlink(d, &link).ctx("symlink", &link)?;
        }
    }
    Ok(CheckTree {
        meson: tree.build.join("pyvenv/bin/meson"),
        src: tree.src,
        build: tree.build,
        log,
        description: format!("qemu {} +{} patches", tree.version, patch_files.len()),
        _lock: tree._lock,
    })
}

/// Make `dst` hold exactly the files of `src`, rewriting only files whose
/// content (or symlink target, or mode) differs.
fn sync_tree(src: &Path, dst: &Path) -> Result<(), ImagesError> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dst).ctx("create directory", dst)?;
    let mut want = std::collections::BTreeSet::new();
    for e in fs::read_dir(src).ctx("read", src)? {
        let e = e.ctx("read", src)?;
        let name = e.file_name();
        want.insert(name.clone());
        let (from, to) = (e.path(), dst.join(&name));
        let ft = e.file_type().ctx("stat", &from)?;
        let to_meta = fs::symlink_metadata(&to).ok();
        if ft.is_dir() {
            if to_meta.as_ref().is_some_and(|m| !m.is_dir()) {
                fs::remove_file(&to).ctx("remove", &to)?;
            }
            sync_tree(&from, &to)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).ctx("readlink", &from)?;
            if fs::read_link(&to).ok().as_ref() != Some(&target) {
                remove_any(&to)?;
                std::os::unix::fs::symlink(&target, &to).ctx("symlink", &to)?;
            }
        } else {
            let same = match &to_meta {
                Some(m) if m.is_file() => {
                    let fm = e.metadata().ctx("stat", &from)?;
                    m.len() == fm.len()
                        && m.permissions().mode() == fm.permissions().mode()
                        && fs::read(&from).ctx("read", &from)? == fs::read(&to).ctx("read", &to)?
                }
                _ => false,
            };
            if !same {
                remove_any(&to)?;
                fs::copy(&from, &to).ctx("copy", &from)?;
            }
        }
    }
    for e in fs::read_dir(dst).ctx("read", dst)?.flatten() {
        if !want.contains(&e.file_name()) {
            remove_any(&e.path())?;
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<(), ImagesError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).ctx("remove", p),
        Ok(_) => fs::remove_file(p).ctx("remove", p),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_names_and_order() {
        let t = tempfile::tempdir().unwrap();
        for n in [
            "0020-amd-iommu-ga.patch",
            "0001-avic.patch",
            "0002-x.patch.orig",
            "README",
            "qtests.txt",
            "01-short.patch",
        ] {
            fs::write(t.path().join(n), n).unwrap();
        }
        let names: Vec<String> = list_patches(t.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["0001-avic.patch", "0020-amd-iommu-ga.patch"]);
        assert!(default_configure_args().contains(
            &"--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu".to_string()
        ));
        assert!(list_patches(&t.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn key_covers_source_patches_and_args() {
        let src = SourceId::Debian {
            version: PINNED_DEBIAN_VERSION.into(),
            orig_sha256: PINNED_ORIG_SHA256.into(),
        };
        let args = default_configure_args();
        let k0 = build_key(&src, &[], &args);
        assert_eq!(k0, build_key(&src, &[], &args), "deterministic");
        let p1 = b"diff a".to_vec();
        let p2 = b"diff b".to_vec();
        let k12 = build_key(&src, &[p1.clone(), p2.clone()], &args);
        assert_ne!(k0, k12);
        assert_ne!(
            k12,
            build_key(&src, &[p2.clone(), p1.clone()], &args),
            "order matters"
        );
        // concatenation cannot collide with a split
        assert_ne!(build_key(&src, &[b"diff adiff b".to_vec()], &args), k12);
        let mut more = args.clone();
        more.push("--enable-debug-tcg".into());
        assert_ne!(k0, build_key(&src, &[], &more));
        let other = SourceId::Debian {
            version: "x".into(),
            orig_sha256: "00".into(),
        };
        assert_ne!(k0, build_key(&other, &[], &args));
        let t1 = SourceId::Tree {
            path: "/a".into(),
            head: "abc".into(),
            diff: vec![],
        };
        let t2 = SourceId::Tree {
            path: "/b".into(),
            head: "abc".into(),
            diff: vec![],
        };
        let t3 = SourceId::Tree {
            path: "/a".into(),
            head: "abc".into(),
            diff: b"x".to_vec(),
        };
        assert_eq!(
            build_key(&t1, &[], &args),
            build_key(&t2, &[], &args),
            "same commit, other checkout"
        );
        assert_ne!(
            build_key(&t1, &[], &args),
            build_key(&t3, &[], &args),
            "dirty diff counts"
        );
        // entries already in caches stay valid: the key of a given input
        // never changes (bump QEMU_FORMAT_VERSION when it must); the
        // default arguments are part of the input (vhost-vdpa changed it)
        assert_eq!(&build_key(&src, &[p1], &args)[..16], "ab90697840edf846");
    }

    #[test]
    fn ninja_progress_lines() {
        assert_eq!(
            ninja_step("[33/1577] Generating trace/trace-accel_kvm.h"),
            Some((33, 1577))
        );
        assert_eq!(ninja_step("ninja: Entering directory `build'"), None);
        assert_eq!(ninja_step("[x/2] y"), None);
    }

    #[test]
    fn patch_failure_names_file_and_hunk() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f.c"), "one\ntwo\nthree\n").unwrap();
        let good = t.path().join("0001-good.patch");
        fs::write(
            &good,
            "From 0 Mon Sep 17 00:00:00 2001\nSubject: [PATCH] good\n\n---\n f.c | 2 +-\n\ndiff --git a/f.c b/f.c\n--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n-- \n2.39.5\n",
        )
        .unwrap();
        git_apply(&src, &good).unwrap();
        assert_eq!(
            fs::read_to_string(src.join("f.c")).unwrap(),
            "one\nTWO\nthree\n"
        );
        let out = git_apply(&src, &good).unwrap_err();
        assert!(out.contains("f.c"), "{out}");
        let e = ImagesError::PatchFailed {
            patch: good.clone(),
            output: out,
        };
        assert!(
            e.to_string()
                .starts_with(&format!("patch {} does not apply", good.display())),
            "{e}"
        );
    }

    #[test]
    fn sync_rewrites_only_changed_files() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir_all(a.join("d")).unwrap();
        fs::write(a.join("same"), "1").unwrap();
        fs::write(a.join("d/changed"), "old").unwrap();
        fs::write(a.join("gone"), "x").unwrap();
        sync_tree(&a, &b).unwrap();
        let old_time = fs::metadata(b.join("same")).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(a.join("d/changed"), "new").unwrap();
        fs::remove_file(a.join("gone")).unwrap();
        std::os::unix::fs::symlink("same", a.join("link")).unwrap();
        sync_tree(&a, &b).unwrap();
        assert_eq!(
            fs::metadata(b.join("same")).unwrap().modified().unwrap(),
            old_time
        );
        assert_eq!(fs::read_to_string(b.join("d/changed")).unwrap(), "new");
        assert!(!b.join("gone").exists());
        assert_eq!(fs::read_link(b.join("link")).unwrap(), Path::new("same"));
    }

    #[test]
    fn tree_identity_is_head_plus_dirty_diff() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("qemu");
        fs::create_dir_all(&tree).unwrap();
        assert!(matches!(
            tree_identity(&tree),
            Err(ImagesError::BadQemuTree { .. })
        ));
        fs::write(tree.join("configure"), "#!/bin/sh\n").unwrap();
        fs::write(tree.join("VERSION"), "10.1.50\n").unwrap();
        let e = tree_identity(&tree).unwrap_err().to_string();
        assert!(e.contains("not a git checkout"), "{e}");
        let git = |args: &[&str]| git_in(&tree, args);
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "base"]);
        let clean = tree_identity(&tree).unwrap();
        let SourceId::Tree { head, diff, .. } = &clean else {
            panic!()
        };
        assert_eq!(head.len(), 40);
        assert!(diff.is_empty());
        fs::write(tree.join("VERSION"), "10.1.51\n").unwrap();
        fs::write(tree.join("untracked.c"), "x").unwrap();
        let dirty = tree_identity(&tree).unwrap();
        let SourceId::Tree { diff, .. } = &dirty else {
            panic!()
        };
        assert!(String::from_utf8_lossy(diff).contains("+10.1.51"));
        assert!(!String::from_utf8_lossy(diff).contains("untracked"));
        assert_ne!(clean.key_bytes(), dirty.key_bytes());
        // the export is HEAD plus the diff, the checkout untouched
        let dest = t.path().join("work/src");
        let cache = Cache::new(t.path().join("cache"));
        let v = prepare_source(&cache, &dirty, &[], &dest, &mut |_| {}).unwrap();
        assert_eq!(v, "10.1.51");
        assert!(!dest.join("untracked.c").exists());
        assert!(tree.join("untracked.c").exists());
    }

    /// A git checkout that looks like QEMU to `prepare_source`: its
    /// `configure` appends its arguments to `../configure-runs` (the tree
    /// directory) and writes a build.ninja.
    fn fake_checkout(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(dir).unwrap();
        let configure = dir.join("configure");
        fs::write(
            &configure,
            "#!/bin/sh\necho \"$*\" >> ../configure-runs\n: > build.ninja\n",
        )
        .unwrap();
        fs::set_permissions(&configure, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("VERSION"), "10.0.50\n").unwrap();
        fs::write(dir.join("a.c"), "int a;\n").unwrap();
        fs::write(dir.join("b.c"), "int b;\n").unwrap();
        git_in(dir, &["init", "-q"]);
        git_in(dir, &["add", "."]);
        git_in(dir, &["commit", "-q", "-m", "base"]);
    }

    fn git_in(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "git {args:?}");
    }

    fn patch_a(dir: &Path, new_line: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(
            dir.join("0001-a.patch"),
            format!(
                "diff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-int a;\n+{new_line}\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn one_tree_per_source_synced_and_configured_once() {
        let t = tempfile::tempdir().unwrap();
        let checkout = t.path().join("qemu");
        fake_checkout(&checkout);
        let cache = Cache::new(t.path().join("cache"));
        let patches = t.path().join("patches");
        let python = Path::new("/usr/bin/python3");
        let args = default_configure_args();
        let mut n = 0;
        let mut open = |patches_dir: &Path, args: &[String]| {
            n += 1;
            let source = tree_identity(&checkout).unwrap();
            let patch_files = list_patches(patches_dir).unwrap();
            let fresh = t.path().join(format!("fresh{n}"));
            let log = t.path().join(format!("log{n}"));
            open_tree(
                &cache,
                &source,
                &patch_files,
                &fresh,
                args,
                python,
                &log,
                &mut |_| {},
            )
            .unwrap()
        };
        let runs = |tree: &OpenTree| -> Vec<String> {
            fs::read_to_string(tree.dir.join("configure-runs"))
                .unwrap()
                .lines()
                .map(String::from)
                .collect()
        };
        let mtime = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();

        patch_a(&patches, "int a1;");
        let tree = open(&patches, &args);
        assert_eq!(tree.version, "10.0.50");
        assert_eq!(
            fs::read_to_string(tree.src.join("a.c")).unwrap(),
            "int a1;\n"
        );
        assert_eq!(runs(&tree).len(), 1);
        assert!(
            runs(&tree)[0].ends_with(" --with-pkgversion=testbed"),
            "{:?}",
            runs(&tree)
        );
        // the lock is held while the tree is open
        let key = tree_key(&tree_identity(&checkout).unwrap());
        let lock_file = cache.root().join(format!("locks/qemu-tree-{key}.lock"));
        let f = fs::File::open(&lock_file).unwrap();
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a valid, owned file descriptor.
        assert_ne!(
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0,
            "tree not locked"
        );
        let dir = tree.dir.clone();
        let (a_time, b_time) = (mtime(&tree.src.join("a.c")), mtime(&tree.src.join("b.c")));
        let ninja_time = mtime(&tree.build.join("build.ninja"));
        drop(tree);
        std::thread::sleep(std::time::Duration::from_millis(20));

        // another patch series: the same tree, only the patched file
        // rewritten, no configure (its arguments do not name the patches)
        let patches2 = t.path().join("patches2");
        patch_a(&patches2, "int a2;");
        let tree = open(&patches2, &args);
        assert_eq!(tree.dir, dir);
        assert_eq!(
            fs::read_to_string(tree.src.join("a.c")).unwrap(),
            "int a2;\n"
        );
        assert_ne!(mtime(&tree.src.join("a.c")), a_time);
        assert_eq!(
            mtime(&tree.src.join("b.c")),
            b_time,
            "unchanged file rewritten"
        );
        assert_eq!(
            mtime(&tree.build.join("build.ninja")),
            ninja_time,
            "reconfigured"
        );
        assert_eq!(runs(&tree).len(), 1);
        drop(tree);

        // a new commit in the checkout: still its tree, still no configure
        fs::write(checkout.join("b.c"), "int b2;\n").unwrap();
        git_in(&checkout, &["commit", "-q", "-am", "b2"]);
        let tree = open(&patches2, &args);
        assert_eq!(tree.dir, dir);
        assert_eq!(
            fs::read_to_string(tree.src.join("b.c")).unwrap(),
            "int b2;\n"
        );
        assert_eq!(runs(&tree).len(), 1);
        drop(tree);

        // other configure arguments: configured again
        let mut more = args.clone();
        more.push("--enable-debug-tcg".into());
        let tree = open(&patches2, &more);
        assert_eq!(runs(&tree).len(), 2);
        assert!(runs(&tree)[1].contains("--enable-debug-tcg"));
    }

    #[test]
    fn tree_key_is_the_source_not_the_commit() {
        let d = |sha: &str| SourceId::Debian {
            version: "v".into(),
            orig_sha256: sha.into(),
        };
        let t = |path: &str, head: &str, diff: &[u8]| SourceId::Tree {
            path: path.into(),
            head: head.into(),
            diff: diff.to_vec(),
        };
        assert_eq!(tree_key(&d("aa")), tree_key(&d("aa")));
        assert_ne!(tree_key(&d("aa")), tree_key(&d("bb")));
        assert_eq!(tree_key(&t("/q", "1", b"")), tree_key(&t("/q", "2", b"x")));
        assert_ne!(tree_key(&t("/q", "1", b"")), tree_key(&t("/r", "1", b"")));
        assert_ne!(tree_key(&t("/q", "1", b"")), tree_key(&d("aa")));
    }

    #[test]
    fn edk2_unpack_skipped_only_without_blobs() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("pc-bios")).unwrap();
        let mb = t.path().join("pc-bios/meson.build");
        fs::write(&mb, "roms = []\nif unpack_edk2_blobs\n  fds = []\nendif\n").unwrap();
        skip_edk2_unpack(t.path()).unwrap();
        assert_eq!(
            fs::read_to_string(&mb).unwrap(),
            "roms = []\nif unpack_edk2_blobs and false\n  fds = []\nendif\n"
        );
    }
}
