//! The on-disk cache: content-addressed entries, built in locked temporary
//! directories inside the cache root and renamed into place.
//!
//! Layout under the root:
//!
//! ```text
//! apt/                     private apt state (lists, archives, sources, apt.conf)
//! apt.lock                 flock held around every private apt-get/apt-cache call
//! kernels/<sha256>/        bzImage, lib/modules/<release>/..., kernel.json
//! initramfs/<sha256>.cpio  newc archives
//! resolved/<spec>.json     remembered resolution of a debian: spec, with its time
//! locks/<name>.lock        flock held while building one entry
//! tmp/<name>.<pid>.<n>/    work directories, each flocked by its owner
//! tmp.lock                 shared while creating a work directory, exclusive while cleaning
//! ```

use std::fs::{self, File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ImagesError, IoContext};

/// The cache directory; cheap to construct, directories are created lazily.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// `$TESTBED_CACHE`, else `$XDG_CACHE_HOME/irqbypass-testbed`, else
    /// `~/.cache/irqbypass-testbed`.
    pub fn default_location() -> Cache {
        let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let root = if let Some(d) = nonempty("TESTBED_CACHE") {
            PathBuf::from(d)
        } else if let Some(d) = nonempty("XDG_CACHE_HOME") {
            PathBuf::from(d).join("irqbypass-testbed")
        } else if let Some(h) = nonempty("HOME") {
            PathBuf::from(h).join(".cache/irqbypass-testbed")
        } else {
            PathBuf::from("/tmp/irqbypass-testbed-cache")
        };
        Cache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self, name: &str) -> Result<PathBuf, ImagesError> {
        let d = self.root.join(name);
        fs::create_dir_all(&d).ctx("create directory", &d)?;
        Ok(d)
    }

    /// Take an exclusive lock named `name` (blocks until available).
    pub(crate) fn lock(&self, name: &str) -> Result<FileLock, ImagesError> {
        let path = if name == "apt" || name == "tmp" {
            fs::create_dir_all(&self.root).ctx("create directory", &self.root)?;
            self.root.join(format!("{name}.lock"))
        } else {
            self.dir("locks")?.join(format!("{name}.lock"))
        };
        FileLock::acquire(&path, libc::LOCK_EX)
    }

    /// A fresh work directory inside the cache, flocked for as long as the
    /// returned value lives and removed when it is dropped. Work directories
    /// of dead processes (unlocked) are removed first.
    pub(crate) fn work_dir(&self, tag: &str) -> Result<WorkDir, ImagesError> {
        self.clean_stale_work_dirs()?;
        let tmp = self.dir("tmp")?;
        let _shared = FileLock::acquire(&self.root.join("tmp.lock"), libc::LOCK_SH)?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = tmp.join(format!("{tag}.{}.{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => {
                    let f = File::open(&path).ctx("open", &path)?;
                    flock(&f, libc::LOCK_EX).ctx("lock", &path)?;
                    return Ok(WorkDir { path, _lock: f });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImagesError::io(format!("create {}", path.display()), e)),
            }
        }
    }

    /// Remove work directories nobody holds a lock on (left by a killed run).
    pub fn clean_stale_work_dirs(&self) -> Result<(), ImagesError> {
        let tmp = self.root.join("tmp");
        if !tmp.is_dir() {
            return Ok(());
        }
        let _excl = FileLock::acquire(&self.root.join("tmp.lock"), libc::LOCK_EX)?;
        for ent in fs::read_dir(&tmp).ctx("read", &tmp)? {
            let Ok(ent) = ent else { continue };
            let path = ent.path();
            let stale = match File::open(&path) {
                Ok(f) => try_flock(&f, libc::LOCK_EX),
                Err(_) => true,
            };
            if stale {
                let _ = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        }
        Ok(())
    }

    pub(crate) fn kernel_entry(&self, key: &str) -> PathBuf {
        self.root.join("kernels").join(key)
    }

    pub(crate) fn initramfs_entry(&self, key: &str) -> PathBuf {
        self.root.join("initramfs").join(format!("{key}.cpio"))
    }

    pub(crate) fn resolution_file(&self, spec: &str) -> PathBuf {
        let name: String = spec
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("resolved").join(format!("{name}.json"))
    }
}

/// Atomically publish `src` (inside the cache) at `dst`. If `dst` already
/// exists (built by someone else), `src` is left alone and Ok is returned.
pub(crate) fn publish(src: &Path, dst: &Path) -> Result<(), ImagesError> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).ctx("create directory", parent)?;
    }
    if dst.exists() {
        return Ok(());
    }
    fs::rename(src, dst).ctx("rename into place", dst)?;
    // make the rename durable before anyone relies on it
    if let Some(parent) = dst.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Write `data` to `dst` atomically (temp file in the same directory + rename).
pub(crate) fn write_atomic(dst: &Path, data: &[u8]) -> Result<(), ImagesError> {
    let parent = dst.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).ctx("create directory", parent)?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(
        ".{}.{}.{n}.tmp",
        dst.file_name().and_then(|s| s.to_str()).unwrap_or("f"),
        std::process::id()
    ));
    let res = (|| {
        use std::io::Write;
        let mut f = File::create(&tmp).ctx("create", &tmp)?;
        f.write_all(data).ctx("write", &tmp)?;
        f.sync_all().ctx("sync", &tmp)?;
        fs::rename(&tmp, dst).ctx("rename into place", dst)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// A flock held on a file until dropped.
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path, op: libc::c_int) -> Result<FileLock, ImagesError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .ctx("open lock file", path)?;
        flock(&f, op).ctx("lock", path)?;
        Ok(FileLock { _file: f })
    }
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let r = unsafe { libc::flock(f.as_raw_fd(), op) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn try_flock(f: &File, op: libc::c_int) -> bool {
    flock(f, op | libc::LOCK_NB).is_ok()
}

/// A locked work directory; removed (recursively) on drop.
#[derive(Debug)]
pub(crate) struct WorkDir {
    path: PathBuf,
    _lock: File,
}

impl WorkDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_work_dirs_are_removed_live_ones_kept() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::new(t.path());
        // a work dir left by a killed process: exists, nobody holds its lock
        let stale = t.path().join("tmp/kernel.999999.0");
        fs::create_dir_all(stale.join("lib/modules")).unwrap();
        fs::write(stale.join("bzImage"), b"half").unwrap();
        let live = cache.work_dir("x").unwrap();
        assert!(!stale.exists(), "stale dir removed");
        fs::write(live.path().join("f"), b"1").unwrap();
        cache.clean_stale_work_dirs().unwrap();
        assert!(live.path().join("f").exists(), "live dir kept");
        let p = live.path().to_path_buf();
        drop(live);
        assert!(!p.exists());
    }

    #[test]
    fn default_location_honours_env() {
        // only check the shape; env is process-global so don't mutate it here
        let c = Cache::default_location();
        assert!(c.root().is_absolute() || c.root().starts_with("/tmp"));
    }
}
