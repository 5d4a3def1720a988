//! Kernel module index, `.modinfo` parsing and dependency closure, without
//! depmod or modules.dep (Debian packages ship none).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection};

use crate::{ImagesError, IoContext};

const SUFFIXES: &[&str] = &[".ko.xz", ".ko.zst", ".ko.gz", ".ko"];

/// Canonical module name: `-` and `_` are equivalent, `_` is canonical.
pub(crate) fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Module files of a modules directory, indexed by canonical name.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    pub dir: PathBuf,
    /// canonical name -> path relative to `dir` (with compression suffix)
    pub files: BTreeMap<String, String>,
    /// canonical names of built-in modules (from `modules.builtin`, if present)
    pub builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Whether the kernel has the module, as a file or built in.
    pub fn has(&self, name: &str) -> bool {
        let name = canonical(name);
        self.files.contains_key(&name) || self.builtin.contains(&name)
    }
}

fn strip_suffix(rel: &str) -> Option<(&str, &str)> {
    SUFFIXES
        .iter()
        .find_map(|s| rel.strip_suffix(s).map(|stem| (stem, *s)))
}

impl ModuleIndex {
    /// Walk the file names under `dir` (no file is opened).
    pub fn scan(dir: &Path) -> Result<ModuleIndex, ImagesError> {
        if !dir.is_dir() {
            return Err(ImagesError::NoModulesDir {
                path: dir.to_path_buf(),
            });
        }
        let mut all: Vec<String> = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let abs = dir.join(&rel);
            for e in fs::read_dir(&abs).ctx("read", &abs)? {
                let e = e.ctx("read", &abs)?;
                let ft = e.file_type().ctx("stat", &e.path())?;
                let r = rel.join(e.file_name());
                if ft.is_dir() {
                    stack.push(r);
                } else if let Some(s) = r.to_str() {
                    if strip_suffix(s).is_some() {
                        all.push(s.to_string());
                    }
                }
            }
        }
        // deterministic choice among duplicates: updates/ first, then path order
        all.sort_by_key(|p| (!p.starts_with("updates/"), p.clone()));
        let mut files = BTreeMap::new();
        for rel in all {
            let (stem, _) = strip_suffix(&rel).expect("filtered");
            let base = stem.rsplit('/').next().unwrap_or(stem);
            files.entry(canonical(base)).or_insert(rel);
        }
        let mut builtin = BTreeSet::new();
        if let Ok(text) = fs::read_to_string(dir.join("modules.builtin")) {
            for line in text.lines() {
                let line = line.trim();
                let base = line.rsplit('/').next().unwrap_or(line);
                if let Some(stem) = base.strip_suffix(".ko") {
                    builtin.insert(canonical(stem));
                }
            }
        }
        Ok(ModuleIndex {
            dir: dir.to_path_buf(),
            files,
            builtin,
        })
    }
}

/// Read a module file and decompress it (by suffix).
pub(crate) fn read_module(path: &Path) -> Result<Vec<u8>, ImagesError> {
    let raw = fs::read(path).ctx("read", path)?;
    let name = path.to_string_lossy();
    if name.ends_with(".ko.xz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| ImagesError::BadModule {
                path: path.to_path_buf(),
                why: format!("xz: {e}"),
            })?;
        Ok(out)
    } else if name.ends_with(".ko.zst") || name.ends_with(".ko.gz") {
        let tool = if name.ends_with(".zst") {
            "zstd"
        } else {
            "gzip"
        };
        let sh = crate::apt::shell()?;
        let out = xshell::cmd!(sh, "{tool} -dc {path}")
            .quiet()
            .ignore_status()
            .output()
            .map_err(|e| ImagesError::BadModule {
                path: path.to_path_buf(),
                why: format!("{tool}: {e}"),
            })?;
        if !out.status.success() {
            return Err(ImagesError::BadModule {
                path: path.to_path_buf(),
                why: format!("{tool} -dc failed"),
            });
        }
        Ok(out.stdout)
    } else {
        Ok(raw)
    }
}

/// What the `.modinfo` section says about a module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleInfo {
    /// `name=` (canonical), when present.
    pub name: Option<String>,
    /// `depends=`, canonical names.
    pub depends: Vec<String>,
    /// `vermagic=`, when present.
    pub vermagic: Option<String>,
}

/// Parse the `.modinfo` section of an (uncompressed) ELF module.
pub fn read_modinfo(elf: &[u8], path: &Path) -> Result<ModuleInfo, ImagesError> {
    let bad = |why: String| ImagesError::BadModule {
        path: path.to_path_buf(),
        why,
    };
    let file = ElfFile64::<Endianness>::parse(elf).map_err(|e| bad(format!("elf: {e}")))?;
    let sec = file
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("no .modinfo section".into()))?;
    let data = sec.data().map_err(|e| bad(format!(".modinfo: {e}")))?;
    let mut info = ModuleInfo::default();
    for item in data.split(|&b| b == 0) {
        let Ok(s) = std::str::from_utf8(item) else {
            continue;
        };
        if let Some(v) = s.strip_prefix("depends=") {
            info.depends = v
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(canonical)
                .collect();
        } else if let Some(v) = s.strip_prefix("name=") {
            info.name = Some(canonical(v));
        } else if let Some(v) = s.strip_prefix("vermagic=") {
            info.vermagic = Some(v.to_string());
        }
    }
    Ok(info)
}

/// One module of a closure: its relative paths and decompressed bytes.
#[derive(Debug, Clone)]
pub struct ClosureModule {
    pub name: String,
    /// path relative to the modules dir, as stored (with compression suffix)
    pub source: String,
    /// path relative to the modules dir without the compression suffix
    pub target: String,
    pub depends: Vec<String>,
    pub data: Vec<u8>,
}

/// The dependency closure of `roots`, in load order (dependencies first,
/// deterministic). Built-in roots and dependencies are skipped.
pub fn module_closure(
    index: &ModuleIndex,
    roots: &[&str],
) -> Result<Vec<ClosureModule>, ImagesError> {
    let mut mods: BTreeMap<String, ClosureModule> = BTreeMap::new();
    let mut queue: Vec<(String, Option<String>)> = Vec::new();
    let mut root_names: Vec<String> = roots.iter().map(|r| canonical(r)).collect();
    root_names.sort();
    root_names.dedup();
    for r in &root_names {
        queue.push((r.clone(), None));
    }
    while let Some((name, needed_by)) = queue.pop() {
        if mods.contains_key(&name) {
            continue;
        }
        let Some(rel) = index.files.get(&name) else {
            if index.builtin.contains(&name) {
                continue;
            }
            return Err(match needed_by {
                None => ImagesError::ModuleNotFound {
                    name,
                    modules_dir: index.dir.clone(),
                },
                Some(by) => ImagesError::DependencyNotFound {
                    name,
                    needed_by: by,
                    modules_dir: index.dir.clone(),
                },
            });
        };
        let path = index.dir.join(rel);
        let data = read_module(&path)?;
        let info = read_modinfo(&data, &path)?;
        let (stem, _) = strip_suffix(rel).expect("indexed");
        for d in &info.depends {
            queue.push((d.clone(), Some(name.clone())));
        }
        mods.insert(
            name.clone(),
            ClosureModule {
                name,
                source: rel.clone(),
                target: format!("{stem}.ko"),
                depends: info.depends,
                data,
            },
        );
    }
    let deps: BTreeMap<String, Vec<String>> = mods
        .iter()
        .map(|(n, m)| (n.clone(), m.depends.clone()))
        .collect();
    let order = topo_order(&deps)?;
    Ok(order
        .into_iter()
        .map(|n| mods.remove(&n).expect("in closure"))
        .collect())
}

/// Dependencies before dependents; ties broken by name. Names not in the
/// map (built-in dependencies) are ignored.
pub(crate) fn topo_order(deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, ImagesError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        n: &str,
        deps: &BTreeMap<String, Vec<String>>,
        marks: &mut BTreeMap<String, Mark>,
        out: &mut Vec<String>,
    ) -> Result<(), ImagesError> {
        match marks.get(n) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => return Err(ImagesError::DependencyCycle(n.to_string())),
            None => {}
        }
        marks.insert(n.to_string(), Mark::Visiting);
        let mut ds: Vec<&String> = deps[n].iter().filter(|d| deps.contains_key(*d)).collect();
        ds.sort();
        for d in ds {
            visit(d, deps, marks, out)?;
        }
        marks.insert(n.to_string(), Mark::Done);
        out.push(n.to_string());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    for n in deps.keys() {
        visit(n, deps, &mut marks, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODS: &str = "/tmp/kdl/x/usr/lib/modules/7.2.13+deb14-amd64";

    fn real() -> Option<ModuleIndex> {
        if !Path::new(MODS).is_dir() {
            println!("skipped: {MODS} not present");
            return None;
        }
        Some(ModuleIndex::scan(Path::new(MODS)).unwrap())
    }

    #[test]
    fn topological_order() {
        let m = |v: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
            v.iter()
                .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
                .collect()
        };
        let deps = m(&[
            ("kvm_amd", &["kvm", "ccp"]),
            ("kvm", &["irqbypass"]),
            ("irqbypass", &[]),
            ("vfio_pci", &["vfio_pci_core", "vfio"]),
            ("vfio_pci_core", &["vfio", "irqbypass"]),
            ("vfio", &["iommufd"]), // iommufd built in: not in the map
        ]);
        let order = topo_order(&deps).unwrap();
        assert_eq!(
            order,
            [
                "irqbypass",
                "kvm",
                "kvm_amd",
                "vfio",
                "vfio_pci_core",
                "vfio_pci"
            ]
        );
        let cyc = m(&[("a", &["b"]), ("b", &["a"])]);
        assert!(matches!(
            topo_order(&cyc),
            Err(ImagesError::DependencyCycle(_))
        ));
    }

    #[test]
    fn index_prefers_updates_and_canonicalizes() {
        let t = tempfile::tempdir().unwrap();
        for p in [
            "kernel/a/foo-bar.ko.xz",
            "updates/foo_bar.ko",
            "kernel/b/baz.ko.zst",
            "kernel/b/notes.txt",
        ] {
            let p = t.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"").unwrap();
        }
        fs::write(
            t.path().join("modules.builtin"),
            "kernel/drivers/x/built-in.ko\n",
        )
        .unwrap();
        let idx = ModuleIndex::scan(t.path()).unwrap();
        assert_eq!(idx.files["foo_bar"], "updates/foo_bar.ko");
        assert_eq!(idx.files["baz"], "kernel/b/baz.ko.zst");
        assert_eq!(idx.files.len(), 2);
        assert!(idx.builtin.contains("built_in"));
        // built-in roots are skipped, missing ones named
        assert!(module_closure(&idx, &["built-in"]).unwrap().is_empty());
        let e = module_closure(&idx, &["nope-mod"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("module nope_mod not found in {}", t.path().display())
        );
    }

    #[test]
    fn modinfo_of_real_module() {
        let Some(idx) = real() else { return };
        let rel = &idx.files["kvm_amd"];
        let data = read_module(&idx.dir.join(rel)).unwrap();
        let info = read_modinfo(&data, Path::new(rel)).unwrap();
        assert_eq!(info.name.as_deref(), Some("kvm_amd"));
        assert!(info.depends.contains(&"kvm".to_string()), "{info:?}");
        assert!(info.vermagic.unwrap().starts_with("7.2.13+deb14-amd64 "));
    }

    #[test]
    fn closure_of_real_modules() {
        let Some(idx) = real() else { return };
        let c = module_closure(
            &idx,
            &[
                "kvm-amd",
                "vfio_pci",
                "vfio_iommu_type1",
                "irqbypass",
                "pvpanic-mmio",
            ],
        )
        .unwrap();
        let names: Vec<&str> = c.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n} in {names:?}"))
        };
        assert!(
            pos("irqbypass") < pos("kvm") || !c[pos("kvm")].depends.contains(&"irqbypass".into())
        );
        assert!(pos("kvm") < pos("kvm_amd"));
        assert!(pos("vfio") < pos("vfio_pci"));
        assert!(pos("pvpanic") < pos("pvpanic_mmio"));
        assert!(c
            .iter()
            .all(|m| m.target.ends_with(".ko") && !m.target.ends_with(".xz.ko")));
        let e = module_closure(&idx, &["no_such_module"]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("module no_such_module not found in "));
    }
}
