//! Resolving kernel specs to a bzImage plus modules directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use xshell::cmd;

use crate::apt::{cmd_err, last_lines, select_kernel, shell, Apt, DebianKernel};
use crate::cache::{publish, write_atomic, Cache};
use crate::spec::{KernelSpec, VersionReq};
use crate::{ImagesError, IoContext, Progress};

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    pub bzimage: PathBuf,
    /// `.../lib/modules/<release>`
    pub modules_dir: PathBuf,
    /// What `uname -r` prints in the guest.
    pub release: String,
    /// e.g. `debian linux-binary-7.2.13+deb14-amd64 7.2.13-1` or `path /boot/vmlinuz-x`.
    pub description: String,
}

/// The kernel release string from a bzImage header: the 16-bit field at
/// 0x20E plus 0x200 is the offset of the NUL-terminated version string.
pub fn bzimage_release(path: &Path) -> Result<String, ImagesError> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |why: &str| ImagesError::BadBzImage {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let mut f = fs::File::open(path).ctx("open", path)?;
    let mut hdr = [0u8; 0x210];
    f.read_exact(&mut hdr).map_err(|_| bad("too short"))?;
    if &hdr[0x202..0x206] != b"HdrS" {
        return Err(bad("no HdrS signature"));
    }
    let off = u16::from_le_bytes([hdr[0x20E], hdr[0x20F]]) as u64 + 0x200;
    f.seek(SeekFrom::Start(off)).ctx("seek", path)?;
    let mut buf = [0u8; 256];
    let n = f.read(&mut buf).ctx("read", path)?;
    let s = &buf[..n];
    let end = s
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(s.len());
    let rel = std::str::from_utf8(&s[..end]).map_err(|_| bad("version string is not utf-8"))?;
    if rel.is_empty() || !rel.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad("no kernel version string"));
    }
    Ok(rel.to_string())
}

/// All Debian amd64 kernels available through the private apt state,
/// sorted by version (refreshing the package lists if they are stale).
pub fn list_debian_kernels(
    cache: &Cache,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<DebianKernel>, ImagesError> {
    let _lock = cache.lock("apt")?;
    let apt = Apt::prepare(cache)?;
    refresh_if_stale(&apt, progress)?;
    apt.kernels()
}

/// Update the lists when missing or older than a day; a failed refresh with
/// lists present is reported and tolerated (offline runs).
pub(crate) fn refresh_if_stale(
    apt: &Apt,
    progress: &mut dyn FnMut(Progress),
) -> Result<bool, ImagesError> {
    if !apt.lists_stale() {
        return Ok(false);
    }
    match apt.update(progress) {
        Ok(()) => Ok(true),
        Err(e) if apt.has_lists() => {
            progress(Progress::UpdateFailed {
                error: e.to_string(),
            });
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Resolve a spec to a kernel, downloading and unpacking Debian packages
/// into the cache when needed.
pub fn resolve_kernel(
    cache: &Cache,
    spec: &KernelSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<Kernel, ImagesError> {
    match spec {
        KernelSpec::Path { bzimage, modules } => resolve_path(bzimage, modules.as_deref()),
        KernelSpec::Debian(req) => resolve_debian(cache, &spec.to_string(), req, progress),
        KernelSpec::Git { tree, rev } => {
            crate::kbuild::resolve_git(cache, tree, rev.as_deref(), progress)
        }
    }
}

fn resolve_path(bzimage: &Path, modules: Option<&Path>) -> Result<Kernel, ImagesError> {
    let release = bzimage_release(bzimage)?;
    let modules_dir = match modules {
        Some(m) => m.to_path_buf(),
        None => Path::new("/lib/modules").join(&release),
    };
    if !modules_dir.is_dir() {
        return Err(ImagesError::NoModulesDir { path: modules_dir });
    }
    Ok(Kernel {
        bzimage: bzimage.to_path_buf(),
        modules_dir,
        release,
        description: format!("path {}", bzimage.display()),
    })
}

const RESOLUTION_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct Resolution {
    /// Seconds since the epoch when the spec was resolved.
    time: u64,
    kernel: DebianKernel,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_resolution(cache: &Cache, spec: &str) -> Option<Resolution> {
    let text = fs::read(cache.resolution_file(spec)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn resolve_debian(
    cache: &Cache,
    spec: &str,
    req: &VersionReq,
    progress: &mut dyn FnMut(Progress),
) -> Result<Kernel, ImagesError> {
    let remembered = read_resolution(cache, spec);
    if let Some(r) = &remembered {
        let fresh = now_secs().saturating_sub(r.time) < RESOLUTION_MAX_AGE.as_secs();
        if fresh {
            if let Ok(Some(k)) = load_entry(cache, &r.kernel) {
                progress(Progress::CacheHit {
                    what: format!("kernel {}", r.kernel.version),
                });
                return Ok(k);
            }
        }
    }
    let chosen = {
        let _lock = cache.lock("apt")?;
        let apt = Apt::prepare(cache)?;
        let lookup = (|| -> Result<DebianKernel, ImagesError> {
            let refreshed = refresh_if_stale(&apt, progress)?;
            let kernels = apt.kernels()?;
            match select_kernel(&kernels, req) {
                Ok(k) => Ok(k.clone()),
                Err(_) if !refreshed => {
                    apt.update(progress)?;
                    let kernels = apt.kernels()?;
                    select_kernel(&kernels, req).cloned().map_err(|nearest| {
                        ImagesError::UnknownKernelVersion {
                            spec: spec.to_string(),
                            nearest,
                        }
                    })
                }
                Err(nearest) => Err(ImagesError::UnknownKernelVersion {
                    spec: spec.to_string(),
                    nearest,
                }),
            }
        })();
        match lookup {
            Ok(k) => k,
            Err(e) => {
                // offline with a stale resolution whose entry exists: use it
                if let Some(r) = &remembered {
                    if !matches!(e, ImagesError::UnknownKernelVersion { .. }) {
                        if let Ok(Some(k)) = load_entry(cache, &r.kernel) {
                            progress(Progress::UpdateFailed {
                                error: e.to_string(),
                            });
                            progress(Progress::CacheHit {
                                what: format!("kernel {}", r.kernel.version),
                            });
                            return Ok(k);
                        }
                    }
                }
                return Err(e);
            }
        }
    };
    progress(Progress::Resolved {
        spec: spec.to_string(),
        version: chosen.version.to_string(),
        package: chosen.image_package.name.clone(),
    });
    let kernel = match load_entry(cache, &chosen).ok().flatten() {
        Some(k) => {
            progress(Progress::CacheHit {
                what: format!("kernel {}", chosen.version),
            });
            k
        }
        None => build_debian_entry(cache, &chosen, progress)?,
    };
    let res = Resolution {
        time: now_secs(),
        kernel: chosen,
    };
    let json = serde_json::to_vec_pretty(&res).expect("resolution serializes");
    write_atomic(&cache.resolution_file(spec), &json)?;
    Ok(kernel)
}

#[derive(Debug, Serialize, Deserialize)]
struct EntryMeta {
    release: String,
    description: String,
}

const ENTRY_META: &str = "kernel.json";

/// The kernel stored under `kernels/<key>`, if that entry is complete.
fn load_entry(cache: &Cache, k: &DebianKernel) -> Result<Option<Kernel>, ImagesError> {
    load_entry_dir(&cache.kernel_entry(&k.key()))
}

fn load_entry_dir(dir: &Path) -> Result<Option<Kernel>, ImagesError> {
    let meta_path = dir.join(ENTRY_META);
    let Ok(text) = fs::read(&meta_path) else {
        return Ok(None);
    };
    let meta: EntryMeta =
        serde_json::from_slice(&text).map_err(|e| ImagesError::BadCacheEntry {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })?;
    let k = Kernel {
        bzimage: dir.join("bzImage"),
        modules_dir: dir.join("lib/modules").join(&meta.release),
        release: meta.release,
        description: meta.description,
    };
    if !k.bzimage.is_file() || !k.modules_dir.is_dir() {
        return Err(ImagesError::BadCacheEntry {
            path: dir.to_path_buf(),
            why: "bzImage or modules missing".into(),
        });
    }
    Ok(Some(k))
}

fn build_debian_entry(
    cache: &Cache,
    k: &DebianKernel,
    progress: &mut dyn FnMut(Progress),
) -> Result<Kernel, ImagesError> {
    build_kernel_entry(
        cache,
        &k.key(),
        |work, progress| {
            let dl = work.join("dl");
            fs::create_dir_all(&dl).ctx("create directory", &dl)?;
            let mut debs = Vec::new();
            {
                let _apt = cache.lock("apt")?;
                let apt = Apt::prepare(cache)?;
                for p in &k.packages {
                    debs.push((p.clone(), apt.download(p, &dl, progress)?));
                }
            }
            let root = work.join("root");
            fs::create_dir_all(&root).ctx("create directory", &root)?;
            for (p, deb) in &debs {
                progress(Progress::Unpacking {
                    package: p.name.clone(),
                });
                let sh = shell()?;
                let out = cmd!(sh, "dpkg-deb -x {deb} {root}")
                    .quiet()
                    .ignore_status()
                    .output()
                    .map_err(cmd_err("dpkg-deb"))?;
                if !out.status.success() {
                    return Err(ImagesError::Command {
                        cmd: format!("dpkg-deb -x {}", deb.display()),
                        detail: last_lines(&out.stderr, &out.stdout),
                    });
                }
                fs::remove_file(deb).ctx("remove", deb)?;
            }
            let with_vmlinuz = |name: &str| format!("debian {} {}", name, k.debian_version);
            // the package holding the bzImage names the kernel
            let binary = k
                .packages
                .iter()
                .find(|p| !p.name.starts_with("linux-modules-"))
                .unwrap_or(&k.image_package);
            Ok((root, with_vmlinuz(&binary.name)))
        },
        progress,
    )
}

/// Build `kernels/<key>`: `fetch` fills a work directory with an unpacked
/// package tree (returns its root and a description); the bzImage and
/// modules are moved into an entry layout which is renamed into place. On
/// any error (or a kill) nothing appears under `kernels/`.
pub(crate) fn build_kernel_entry(
    cache: &Cache,
    key: &str,
    fetch: impl FnOnce(&Path, &mut dyn FnMut(Progress)) -> Result<(PathBuf, String), ImagesError>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Kernel, ImagesError> {
    let _lock = cache.lock(&format!("kernel-{key}"))?;
    let final_dir = cache.kernel_entry(key);
    match load_entry_dir(&final_dir) {
        Ok(Some(k)) => return Ok(k),
        Ok(None) if !final_dir.exists() => {}
        // damaged by hand (entries are published atomically): rebuild it
        _ => fs::remove_dir_all(&final_dir).ctx("remove damaged entry", &final_dir)?,
    }
    let work = cache.work_dir("kernel")?;
    let (root, description) = fetch(work.path(), progress)?;
    let entry = work.path().join("entry");
    let (bz, mods, release) = locate_kernel_files(&root, &description)?;
    let entry_mods = entry.join("lib/modules").join(&release);
    fs::create_dir_all(entry_mods.parent().expect("has parent")).ctx("create directory", &entry)?;
    fs::rename(&bz, entry.join("bzImage")).ctx("move", &bz)?;
    fs::rename(&mods, &entry_mods).ctx("move", &mods)?;
    // a vmlinuz inside the modules dir was moved out already; drop leftovers
    let _ = fs::remove_file(entry_mods.join("vmlinuz"));
    let meta = EntryMeta {
        release: release.clone(),
        description,
    };
    fs::write(
        entry.join(ENTRY_META),
        serde_json::to_vec_pretty(&meta).expect("meta serializes"),
    )
    .ctx("write", &entry)?;
    publish(&entry, &final_dir)?;
    drop(work);
    load_entry_dir(&final_dir)?.ok_or_else(|| ImagesError::BadCacheEntry {
        path: final_dir,
        why: "entry vanished".into(),
    })
}

/// Find `<root>/{usr/,}lib/modules/<release>` and the bzImage
/// (`boot/vmlinuz-<release>` or `<modules>/vmlinuz`).
fn locate_kernel_files(root: &Path, what: &str) -> Result<(PathBuf, PathBuf, String), ImagesError> {
    let layout = |why: String| ImagesError::PackageLayout {
        package: what.to_string(),
        why,
    };
    let mut mod_dirs = Vec::new();
    for base in ["usr/lib/modules", "lib/modules"] {
        if let Ok(rd) = fs::read_dir(root.join(base)) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    mod_dirs.push(e.path());
                }
            }
        }
    }
    mod_dirs.sort();
    let [mods] = mod_dirs.as_slice() else {
        return Err(layout(format!(
            "expected one modules directory, found {}",
            mod_dirs.len()
        )));
    };
    let release = mods
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| layout("bad modules directory name".into()))?
        .to_string();
    let candidates = [
        mods.join("vmlinuz"),
        root.join("boot").join(format!("vmlinuz-{release}")),
    ];
    let bz = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| layout(format!("no vmlinuz for {release}")))?;
    let header_release = bzimage_release(&bz)?;
    if header_release != release {
        return Err(layout(format!(
            "bzImage says {header_release}, modules directory says {release}"
        )));
    }
    Ok((bz, mods.clone(), release))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB_TREE: &str = "/tmp/kdl/x";

    fn fake_bzimage(path: &Path, release: &str) {
        let mut v = vec![0u8; 0x400];
        v[0x202..0x206].copy_from_slice(b"HdrS");
        let off: u16 = 0x300 - 0x200;
        v[0x20E..0x210].copy_from_slice(&off.to_le_bytes());
        let s = format!("{release} (someone@example) #1 SMP");
        v[0x300..0x300 + s.len()].copy_from_slice(s.as_bytes());
        fs::write(path, v).unwrap();
    }

    #[test]
    fn reads_release_from_header() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("bz");
        fake_bzimage(&p, "7.2.0-test");
        assert_eq!(bzimage_release(&p).unwrap(), "7.2.0-test");
        fs::write(&p, b"nope").unwrap();
        assert!(bzimage_release(&p)
            .unwrap_err()
            .to_string()
            .starts_with("bad bzImage"));
        let real = Path::new(DEB_TREE).join("usr/lib/modules/7.2.13+deb14-amd64/vmlinuz");
        if real.exists() {
            assert_eq!(bzimage_release(&real).unwrap(), "7.2.13+deb14-amd64");
        }
    }

    #[test]
    fn path_specs() {
        let t = tempfile::tempdir().unwrap();
        let bz = t.path().join("bzImage");
        fake_bzimage(&bz, "7.2.0-x");
        let mods = t.path().join("lib/modules/7.2.0-x");
        fs::create_dir_all(&mods).unwrap();
        let spec: KernelSpec = format!("path:{},modules={}", bz.display(), mods.display())
            .parse()
            .unwrap();
        let cache = Cache::new(t.path().join("cache"));
        let k = resolve_kernel(&cache, &spec, &mut |_| {}).unwrap();
        assert_eq!(k.release, "7.2.0-x");
        assert_eq!(k.modules_dir, mods);
        assert_eq!(k.bzimage, bz);
        let spec: KernelSpec = format!("path:{}", bz.display()).parse().unwrap();
        let e = resolve_kernel(&cache, &spec, &mut |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "modules directory /lib/modules/7.2.0-x does not exist"
        );
    }

    #[test]
    fn failed_build_leaves_no_entry() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::new(t.path());
        // the fetch writes part of a tree, then "unpacking" fails
        let e = build_kernel_entry(
            &cache,
            "abc",
            |work, _| {
                let m = work.join("root/usr/lib/modules/7.2.0-x");
                fs::create_dir_all(&m).unwrap();
                fake_bzimage(&m.join("vmlinuz"), "7.2.0-x");
                Err(ImagesError::Command {
                    cmd: "dpkg-deb -x".into(),
                    detail: "killed".into(),
                })
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("dpkg-deb"));
        assert!(!cache.kernel_entry("abc").exists());
        let left: Vec<_> = fs::read_dir(t.path().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "work dir removed");

        // a layout problem after unpacking also leaves nothing
        let e = build_kernel_entry(
            &cache,
            "abc",
            |work, _| {
                let m = work.join("root/usr/lib/modules/7.2.0-x");
                fs::create_dir_all(&m).unwrap();
                fake_bzimage(&m.join("vmlinuz"), "7.2.0-other");
                Ok((work.join("root"), "test".into()))
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("bzImage says 7.2.0-other"), "{e}");
        assert!(!cache.kernel_entry("abc").exists());

        // and a good build publishes the entry
        let k = build_kernel_entry(
            &cache,
            "abc",
            |work, _| {
                let m = work.join("root/usr/lib/modules/7.2.0-x");
                fs::create_dir_all(m.join("kernel")).unwrap();
                fake_bzimage(&m.join("vmlinuz"), "7.2.0-x");
                Ok((work.join("root"), "test kernel".into()))
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(k.release, "7.2.0-x");
        assert_eq!(k.description, "test kernel");
        assert_eq!(k.bzimage, cache.kernel_entry("abc").join("bzImage"));
        assert!(k.modules_dir.join("kernel").is_dir());
        assert!(!k.modules_dir.join("vmlinuz").exists());
    }
}
