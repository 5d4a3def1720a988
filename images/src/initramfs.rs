//! The initramfs: busybox, the guest agent, `/init` and a module closure,
//! written as a deterministic uncompressed newc cpio into the cache
//! (`initramfs/<sha256>.cpio`, keyed by the archive bytes and the format
//! version). Uncompressed because gzip did not boot measurably faster.
//!
//! ```text
//! /init                              0755 busybox sh: mount proc, sysfs, devtmpfs,
//!                                    tracefs, debugfs; run the agent; poweroff -f
//! /bin/busybox, /bin/sh -> busybox
//! /bin/testbed-agent                 0755
//! /dev/console                       char 5,1
//! /etc/testbed/modules.order         load order, paths relative to /lib/modules/<release>/
//! /lib/modules/<release>/kernel/...  decompressed .ko files of the closure
//! /proc /sys /dev /tmp /run /root    empty directories
//! (any further files a caller adds, e.g. /selftests/kvm/x86/...)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::apt::hex;
use crate::cache::{write_atomic, Cache};
use crate::cpio::CpioWriter;
use crate::kernel::Kernel;
use crate::modules::{module_closure, ModuleIndex};
use crate::{ImagesError, IoContext, Progress};

/// Bumped whenever the layout or the init script changes.
pub const INITRAMFS_FORMAT_VERSION: u32 = 1;

/// What goes into an initramfs.
#[derive(Debug, Clone, Copy)]
pub struct InitramfsSpec<'a> {
    pub kernel: &'a Kernel,
    /// Root module names (`-` and `_` are equivalent); their dependency
    /// closure is included.
    pub modules: &'a [&'a str],
    /// Groups of further roots, each included only when the kernel has
    /// every module of the group (e.g. a vDPA device's modules, which
    /// Debian's kernels lack): a missing one is no error.
    pub optional: &'a [&'a [&'a str]],
    /// Static binary installed as `/bin/testbed-agent`.
    pub agent: &'a Path,
    /// Static busybox (default `/bin/busybox` from busybox-static).
    pub busybox: &'a Path,
    /// Further files: (absolute path in the guest, file on the host),
    /// installed with the host file's permission bits (e.g. selftest
    /// binaries under `/selftests/`).
    pub files: &'a [(String, PathBuf)],
}

/// Path of the module load order inside the initramfs, one path per line
/// relative to `/lib/modules/<release>/`, dependencies first.
pub const MODULES_ORDER_PATH: &str = "/etc/testbed/modules.order";

const INIT: &str = r#"#!/bin/busybox sh
# irqbypass-testbed init: mount the pseudo filesystems, run the agent,
# power off when it exits so that QEMU exits too.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
$bb mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
$bb mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
export PATH=/bin
/bin/testbed-agent
echo "testbed-init: testbed-agent exited with status $?, powering off" > /dev/console
$bb poweroff -f
"#;

enum Node {
    Dir,
    File { perm: u32, data: Vec<u8> },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    fn dirs_for(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            self.nodes.entry(acc.clone()).or_insert(Node::Dir);
        }
    }
    fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/');
        self.dirs_for(path);
        self.nodes.insert(path.to_string(), node);
    }
    fn write(&self) -> std::io::Result<Vec<u8>> {
        let mut w = CpioWriter::new(Vec::new());
        for (name, node) in &self.nodes {
            match node {
                Node::Dir => w.dir(name, 0o755)?,
                Node::File { perm, data } => w.file(name, *perm, data)?,
                Node::Symlink(t) => w.symlink(name, t)?,
                Node::CharDev { major, minor } => w.char_dev(name, 0o600, *major, *minor)?,
            }
        }
        w.finish()
    }
}

/// Build (or reuse) the initramfs for `spec`; returns the cached cpio path.
pub fn build_initramfs(
    cache: &Cache,
    spec: &InitramfsSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, ImagesError> {
    let k = spec.kernel;
    let index = ModuleIndex::scan(&k.modules_dir)?;
    let mut roots: Vec<&str> = spec.modules.to_vec();
    for group in spec.optional {
        if group.iter().all(|m| index.has(m)) {
            roots.extend_from_slice(group);
        }
    }
    let closure = module_closure(&index, &roots)?;
    progress(Progress::BuildingInitramfs {
        modules: closure.len(),
    });

    let mut t = Tree::default();
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "etc/testbed",
        "bin",
        "root",
    ] {
        t.add(d, Node::Dir);
    }
    t.add(&format!("lib/modules/{}", k.release), Node::Dir);
    t.add("dev/console", Node::CharDev { major: 5, minor: 1 });
    let busybox = fs::read(spec.busybox).ctx("read", spec.busybox)?;
    t.add(
        "bin/busybox",
        Node::File {
            perm: 0o755,
            data: busybox,
        },
    );
    t.add("bin/sh", Node::Symlink("busybox".into()));
    let agent = fs::read(spec.agent).ctx("read", spec.agent)?;
    t.add(
        "bin/testbed-agent",
        Node::File {
            perm: 0o755,
            data: agent,
        },
    );
    t.add(
        "init",
        Node::File {
            perm: 0o755,
            data: INIT.as_bytes().to_vec(),
        },
    );
    for (dest, src) in spec.files {
        use std::os::unix::fs::PermissionsExt;
        let data = fs::read(src).ctx("read", src)?;
        let perm = fs::metadata(src).ctx("stat", src)?.permissions().mode() & 0o7777;
        t.add(dest, Node::File { perm, data });
    }
    let mut order = String::new();
    for m in closure {
        order.push_str(&m.target);
        order.push('\n');
        t.add(
            &format!("lib/modules/{}/{}", k.release, m.target),
            Node::File {
                perm: 0o644,
                data: m.data,
            },
        );
    }
    t.add(
        MODULES_ORDER_PATH,
        Node::File {
            perm: 0o644,
            data: order.into_bytes(),
        },
    );
    let bytes = t.write().map_err(|e| ImagesError::io("write cpio", e))?;

    // the archive holds every input byte; key it together with the format
    let mut h = Sha256::new();
    h.update(format!("irqbypass-testbed initramfs v{INITRAMFS_FORMAT_VERSION}\0").as_bytes());
    h.update(&bytes);
    let key = hex(&h.finalize());
    let path = cache.initramfs_entry(&key);
    if path.is_file() {
        progress(Progress::CacheHit {
            what: "initramfs".into(),
        });
        return Ok(path);
    }
    let _lock = cache.lock(&format!("initramfs-{key}"))?;
    if !path.is_file() {
        write_atomic(&path, &bytes)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{parse_newc, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};

    #[test]
    fn layout_with_fake_modules() {
        let t = tempfile::tempdir().unwrap();
        let mods = t.path().join("lib/modules/7.2.0-x");
        fs::create_dir_all(&mods).unwrap();
        fs::write(
            mods.join("modules.builtin"),
            "kernel/virt/lib/irqbypass.ko\n",
        )
        .unwrap();
        let bb = t.path().join("busybox");
        let agent = t.path().join("agent");
        fs::write(&bb, b"BUSYBOX").unwrap();
        fs::write(&agent, b"AGENT").unwrap();
        let kernel = Kernel {
            bzimage: t.path().join("bz"),
            modules_dir: mods.clone(),
            release: "7.2.0-x".into(),
            description: "test".into(),
        };
        let cache = Cache::new(t.path().join("cache"));
        let roots = ["irqbypass"]; // built in: skipped
        let spec = InitramfsSpec {
            kernel: &kernel,
            modules: &roots,
            optional: &[],
            agent: &agent,
            busybox: &bb,
            files: &[],
        };
        let mut events = Vec::new();
        let p = build_initramfs(&cache, &spec, &mut |e| events.push(e)).unwrap();
        let bytes = fs::read(&p).unwrap();
        let entries = parse_newc(&bytes).unwrap();
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(get("bin/busybox").data, b"BUSYBOX");
        assert_eq!(get("bin/testbed-agent").data, b"AGENT");
        assert_eq!(get("bin/testbed-agent").mode, S_IFREG | 0o755);
        assert_eq!(get("init").mode, S_IFREG | 0o755);
        assert!(String::from_utf8_lossy(&get("init").data).contains("poweroff -f"));
        assert_eq!(get("bin/sh").mode & 0o170000, S_IFLNK);
        assert_eq!(get("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        for d in [
            "proc",
            "sys",
            "dev",
            "tmp",
            "etc",
            "etc/testbed",
            "lib/modules/7.2.0-x",
        ] {
            assert_eq!(get(d).mode & 0o170000, S_IFDIR, "{d}");
        }
        assert_eq!(get("etc/testbed/modules.order").data, b"");
        // sorted, parents before children
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        // same inputs: same file, cache hit
        events.clear();
        let p2 = build_initramfs(&cache, &spec, &mut |e| events.push(e)).unwrap();
        assert_eq!(p, p2);
        assert!(events.contains(&Progress::CacheHit {
            what: "initramfs".into()
        }));
        // further files keep their mode and make another archive
        use std::os::unix::fs::PermissionsExt;
        let test = t.path().join("xapic_ipi_test");
        fs::write(&test, b"ELF").unwrap();
        fs::set_permissions(&test, fs::Permissions::from_mode(0o755)).unwrap();
        let files = [("/selftests/kvm/x86/xapic_ipi_test".to_string(), test)];
        let with_files = InitramfsSpec {
            files: &files,
            ..spec
        };
        let p3 = build_initramfs(&cache, &with_files, &mut |_| {}).unwrap();
        assert_ne!(p3, p);
        let bytes = fs::read(&p3).unwrap();
        let entries = parse_newc(&bytes).unwrap();
        let e = entries
            .iter()
            .find(|e| e.name == "selftests/kvm/x86/xapic_ipi_test")
            .unwrap();
        assert_eq!((e.mode, e.data.as_slice()), (S_IFREG | 0o755, &b"ELF"[..]));
        assert!(entries
            .iter()
            .any(|e| e.name == "selftests/kvm/x86" && e.mode & 0o170000 == S_IFDIR));
        // a missing root module is named
        let roots = ["irqbypass", "no-such"];
        let spec = InitramfsSpec {
            kernel: &kernel,
            modules: &roots,
            optional: &[],
            agent: &agent,
            busybox: &bb,
            files: &[],
        };
        let e = build_initramfs(&cache, &spec, &mut |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("module no_such not found in {}", mods.display())
        );
        // an optional group the kernel lacks part of is left out, no error
        let roots = ["irqbypass"];
        let missing: &[&str] = &["irqbypass", "no-such"];
        let spec = InitramfsSpec {
            kernel: &kernel,
            modules: &roots,
            optional: &[missing],
            agent: &agent,
            busybox: &bb,
            files: &[],
        };
        let p3 = build_initramfs(&cache, &spec, &mut |_| {}).unwrap();
        assert_eq!(p3, p, "the same archive: nothing of the group went in");
        let index = ModuleIndex::scan(&mods).unwrap();
        assert!(index.has("irqbypass") && !index.has("no-such"));
    }
}
