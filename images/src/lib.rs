//! Kernels and initramfs images for the irqbypass testbed.
//!
//! - [`resolve_kernel`] turns a [`KernelSpec`] (`debian:7.2`, `debian:6.12.107`,
//!   `path:/boot/vmlinuz-x[,modules=DIR]`) into a [`Kernel`]: a bzImage plus its
//!   modules directory. Debian kernels are fetched with `apt-get download`
//!   through a private apt state kept in the [`Cache`] (the system's apt state
//!   is never touched) and unpacked with `dpkg-deb -x`; nothing is installed.
//! - [`build_initramfs`] writes a newc cpio with busybox, the guest agent, an
//!   `/init` script and the dependency closure of the requested modules.
//!
//! - `git:TREE[@REV]` specs are built (tinyconfig + `kernel-config/`
//!   fragments, out of tree, incrementally) by the `kbuild` module.
//! - [`build_qemu`] builds `qemu-system-x86_64` from the pinned Debian
//!   source (or a user's checkout) plus the project's patch series.
//! - [`build_selftests`] builds the upstream KVM and VFIO selftests
//!   statically from a Debian `linux-source-X.Y` package or a kernel tree.
//!
//! Everything lands in a content-addressed [`Cache`]; entries are built in a
//! temporary directory inside the cache and renamed into place, so an
//! interrupted run never leaves a half entry behind.

mod apt;
mod cache;
pub mod cpio;
mod debver;
mod initramfs;
mod kbuild;
mod kernel;
mod l1state;
mod linux_source;
mod modules;
mod pvh;
mod qemu;
mod selftests;
mod spec;
mod vmm;

use std::path::PathBuf;

pub use apt::{archive_uri_from_deb822, archive_uri_from_one_line, DebPackage, DebianKernel};
pub use cache::Cache;
pub use debver::compare_debian_versions;
pub use initramfs::{build_initramfs, InitramfsSpec, INITRAMFS_FORMAT_VERSION};
pub use kbuild::{
    linux_worktree, missing_values, resolve_rev, CONFIG_FRAGMENTS, KBUILD_FORMAT_VERSION,
};
pub use kernel::{bzimage_release, list_debian_kernels, resolve_kernel, Kernel};
pub use l1state::{
    discard_l1_state, find_l1_state, l1_state_slot, L1State, L1StateSlot, L1StateWriter,
    L1_STATE_FILE, L1_STATE_META,
};
pub use linux_source::{debian_linux_tree, DebianTree, TreeFrom, TreeOrigin};
pub use modules::{module_closure, read_modinfo, ModuleIndex, ModuleInfo};
pub use pvh::pvh_kernel;
pub use qemu::{
    build_qemu, default_configure_args, ensure_venv, entry_dir as qemu_entry_dir, list_patches,
    ninja, prepare_check_tree, system_data_dirs, CheckTree, QemuBuild, QemuBuildSpec, QemuSource,
    PINNED_DEBIAN_VERSION, PINNED_ORIG_SHA256, QEMU_BINARY, QEMU_FORMAT_VERSION,
    QEMU_TREE_FORMAT_VERSION, RUNTIME_FILES,
};
pub use selftests::{
    build_selftests, kernel_upstream_version, SelftestBuild, SelftestSource, SelftestSuite,
    SuiteBuild, SELFTESTS_FORMAT_VERSION,
};
pub use spec::{KernelSpec, KernelVersion, VersionReq};
pub use vmm::{
    dyn_info, library_closure, vmm_files, DynInfo, GUEST_FIRMWARE_DIR, GUEST_LIB_DIR,
    GUEST_VMM_BINARY, VMM_FIRMWARE,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("bad kernel spec {spec:?}: {why}")]
    BadKernelSpec { spec: String, why: String },
    #[error("no debian kernel matches {spec}; nearest available: {}", nearest_list(.nearest))]
    UnknownKernelVersion { spec: String, nearest: Vec<String> },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("cannot find a debian archive in the apt sources: {0}")]
    NoArchive(String),
    #[error("bad bzImage {path}: {why}")]
    BadBzImage { path: PathBuf, why: String },
    #[error("modules directory {path} does not exist")]
    NoModulesDir { path: PathBuf },
    #[error("module {name} not found in {modules_dir}")]
    ModuleNotFound { name: String, modules_dir: PathBuf },
    #[error("module {name} (needed by {needed_by}) not found in {modules_dir}")]
    DependencyNotFound {
        name: String,
        needed_by: String,
        modules_dir: PathBuf,
    },
    #[error("bad module {path}: {why}")]
    BadModule { path: PathBuf, why: String },
    #[error("module dependency cycle through {0}")]
    DependencyCycle(String),
    #[error("checksum mismatch for {file}: expected {expected}, got {actual}")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("unexpected layout of {package}: {why}")]
    PackageLayout { package: String, why: String },
    #[error("bad cache entry {path}: {why}")]
    BadCacheEntry { path: PathBuf, why: String },
    #[error("patch {} does not apply:\n{output}", .patch.display())]
    PatchFailed { patch: PathBuf, output: String },
    #[error("qemu {step} failed (whole log: {}):\n{tail}", .log.display())]
    QemuBuild {
        step: String,
        log: PathBuf,
        tail: String,
    },
    #[error("bad QEMU tree {}: {why}", .path.display())]
    BadQemuTree { path: PathBuf, why: String },
    #[error("bad kernel tree {}: {why}", .path.display())]
    BadKernelTree { path: PathBuf, why: String },
    #[error("kernel {step} failed (whole log: {}):\n{tail}", .log.display())]
    KernelBuild {
        step: String,
        log: PathBuf,
        tail: String,
    },
    #[error("kernel config lacks what the fragments ask for: {missing} (log: {})", .log.display())]
    KernelConfig { missing: String, log: PathBuf },
    #[error("bad ELF file {}: {why}", .path.display())]
    BadElf { path: PathBuf, why: String },
    #[error("shared library {name} (needed by {}) not found", .needed_by.display())]
    LibraryNotFound { name: String, needed_by: PathBuf },
    #[error("QEMU firmware {files} not found in {dirs}: install seabios and qemu-system-data (cargo xtask setup)")]
    MissingFirmware { files: String, dirs: String },
    #[error("unknown selftest suite {0:?}: expected kvm or vfio")]
    UnknownSelftestSuite(String),
    #[error("no linux-source package for {version} or a newer kernel line; the archive has {}", nearest_list(.available))]
    NoSelftestSource {
        version: String,
        available: Vec<String>,
    },
    #[error("selftests {step} failed (whole log: {}):\n{tail}", .log.display())]
    SelftestBuildFailed {
        step: String,
        log: PathBuf,
        tail: String,
    },
    #[error("built selftest {} is unusable: {why}", .path.display())]
    BadSelftest { path: PathBuf, why: String },
    #[error("building selftests needs {what}: install {package} (cargo xtask setup)")]
    MissingBuildTool { what: String, package: String },
}

fn nearest_list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

impl ImagesError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImagesError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Attach a path-naming context to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: &str, path: &std::path::Path) -> Result<T, ImagesError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: &str, path: &std::path::Path) -> Result<T, ImagesError> {
        self.map_err(|e| ImagesError::io(format!("{what} {}", path.display()), e))
    }
}

/// Small progress events; a CLI turns them into progress bars or log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Running `apt-get update` on the private apt state.
    UpdatingPackageLists,
    /// Refreshing the package lists failed; stale lists or a stale
    /// resolution are used instead.
    UpdateFailed { error: String },
    /// A spec was resolved to a Debian kernel.
    Resolved {
        spec: String,
        version: String,
        package: String,
    },
    /// A package download is under way: `done` of `total` bytes.
    Downloading {
        package: String,
        done: u64,
        total: u64,
    },
    /// Unpacking a package with `dpkg-deb -x`.
    Unpacking { package: String },
    /// Computing the module closure and writing the cpio.
    BuildingInitramfs { modules: usize },
    /// Creating the python venv (meson, pycotap) the QEMU build uses.
    PreparingPythonVenv,
    /// `apt-get source --download-only qemu=<version>`.
    FetchingQemuSource { version: String },
    /// Applying the QEMU patch series.
    ApplyingPatches { count: usize },
    /// Running QEMU's configure.
    ConfiguringQemu,
    /// Syncing the patched source into the QEMU build tree `dir`.
    UpdatingQemuTree { dir: PathBuf },
    /// ninja is at `step` of `total`.
    BuildingQemu { step: u64, total: u64 },
    /// A cache entry was reused (`what` is e.g. `kernel 7.2.13` or `initramfs`).
    CacheHit { what: String },
    /// `apt-get source --download-only linux=<version>`.
    FetchingKernelSource { version: String },
    /// Committing patch `index` of `total` of Debian's series.
    ApplyingKernelPatch {
        index: usize,
        total: usize,
        name: String,
    },
    /// Checking a commit out in the testbed's worktree of a kernel tree.
    CheckingOut { rev: String },
    /// Merging the config fragments onto tinyconfig.
    ConfiguringKernel,
    /// The kernel build has compiled `objects` files so far.
    BuildingKernel { objects: u64 },
    /// `make modules_install` of the built kernel.
    InstallingModules { release: String },
    /// Decompressing the kernel out of its bzImage for PVH boot (once per kernel).
    ExtractingVmlinux { release: String },
    /// Selftests come from `source`; `note` says why when it is not the
    /// kernel's own line.
    SelftestsFrom {
        source: String,
        note: Option<String>,
    },
    /// `make headers` in the selftests' kernel source.
    InstallingKernelHeaders,
    /// Building one selftest suite: `compiled` source files so far.
    BuildingSelftests { suite: SelftestSuite, compiled: u64 },
    /// `make install` of the selftest suites that built.
    InstallingSelftests,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::UpdatingPackageLists => write!(f, "updating package lists"),
            Progress::UpdateFailed { error } => {
                write!(f, "package list update failed, using stale lists: {error}")
            }
            Progress::Resolved {
                spec,
                version,
                package,
            } => write!(f, "{spec} is {version} ({package})"),
            Progress::Downloading {
                package,
                done,
                total,
            } => {
                write!(
                    f,
                    "downloading {package}: {} of {} MB",
                    done / 1_000_000,
                    total / 1_000_000
                )
            }
            Progress::Unpacking { package } => write!(f, "unpacking {package}"),
            Progress::BuildingInitramfs { modules } => {
                write!(f, "building initramfs ({modules} modules)")
            }
            Progress::PreparingPythonVenv => write!(
                f,
                "creating the python venv for the qemu build (meson, pycotap)"
            ),
            Progress::FetchingQemuSource { version } => {
                write!(f, "downloading qemu source {version}")
            }
            Progress::ApplyingPatches { count } => write!(f, "applying {count} qemu patches"),
            Progress::ConfiguringQemu => {
                write!(f, "configuring qemu (a first full build takes about 8 minutes on 2 cores, then it is cached)")
            }
            Progress::UpdatingQemuTree { dir } => {
                write!(f, "updating the qemu build tree {}", dir.display())
            }
            Progress::BuildingQemu { step, total } => {
                write!(f, "building qemu: step {step}/{total}")
            }
            Progress::CacheHit { what } => write!(f, "cached: {what}"),
            Progress::FetchingKernelSource { version } => {
                write!(f, "fetching the linux {version} source")
            }
            Progress::ApplyingKernelPatch { index, total, name } => {
                write!(f, "patch {index}/{total}: {name}")
            }
            Progress::CheckingOut { rev } => write!(f, "checking out {rev}"),
            Progress::ConfiguringKernel => {
                write!(f, "configuring the kernel (tinyconfig + kernel-config/)")
            }
            Progress::BuildingKernel { objects } => {
                write!(f, "building the kernel: {objects} files compiled")
            }
            Progress::InstallingModules { release } => {
                write!(f, "installing the modules of {release}")
            }
            Progress::ExtractingVmlinux { release } => {
                write!(f, "extracting the uncompressed kernel of {release}")
            }
            Progress::SelftestsFrom { source, note: None } => write!(f, "selftests from {source}"),
            Progress::SelftestsFrom {
                source,
                note: Some(note),
            } => write!(f, "selftests from {source} ({note})"),
            Progress::InstallingKernelHeaders => write!(f, "make headers (for the selftests)"),
            Progress::BuildingSelftests { suite, compiled } => {
                write!(
                    f,
                    "building the {suite} selftests: {compiled} files compiled"
                )
            }
            Progress::InstallingSelftests => write!(f, "installing the selftests"),
        }
    }
}

impl ImagesError {
    /// The user asked for something that does not exist or cannot be parsed
    /// (exit 2), as opposed to a fetch or build that failed (exit 125).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ImagesError::BadKernelSpec { .. }
                | ImagesError::UnknownKernelVersion { .. }
                | ImagesError::NoModulesDir { .. }
                | ImagesError::BadBzImage { .. }
                | ImagesError::BadQemuTree { .. }
                | ImagesError::BadKernelTree { .. }
                | ImagesError::UnknownSelftestSuite(_)
        )
    }
}
