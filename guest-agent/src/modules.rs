//! Kernel module loading with `finit_module`, parameters taken from the
//! kernel command line the way modprobe does (`modname.param=value`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::sys::errno_name;

/// `MODULE_INIT_COMPRESSED_FILE`: the kernel decompresses the image itself.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Split a kernel command line into arguments the way the kernel's `next_arg`
/// does: whitespace separated, double quotes group (and are kept out of the name).
pub fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut have = false;
    for c in cmdline.chars() {
        if c == '"' {
            in_quote = !in_quote;
            cur.push(c);
            have = true;
        } else if c.is_whitespace() && !in_quote {
            if have {
                out.push(std::mem::take(&mut cur));
                have = false;
            }
        } else {
            cur.push(c);
            have = true;
        }
    }
    if have {
        out.push(cur);
    }
    out
}

/// Module name as the kernel knows it: dashes become underscores.
pub fn normalize_mod_name(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/drivers/vfio/pci/vfio-pci.ko.xz` -> (`vfio_pci`, compressed).
pub fn module_name_from_path(path: &str) -> (String, bool) {
    let base = path.rsplit('/').next().unwrap_or(path);
    let (stem, compressed) = if let Some(s) = base.strip_suffix(".ko") {
        (s, false)
    } else if let Some(i) = base.find(".ko.") {
        (&base[..i], true)
    } else {
        (base, false)
    };
    (normalize_mod_name(stem), compressed)
}

/// Module parameters from the command line: module name -> `param=value` list
/// (in command-line order). Arguments without a dot before `=` are not module
/// parameters.
pub fn module_params(cmdline: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for arg in split_cmdline(cmdline) {
        let key_end = arg.find('=').unwrap_or(arg.len());
        let key = &arg[..key_end];
        let Some(dot) = key.find('.') else { continue };
        let module = &key[..dot];
        let rest = &arg[dot + 1..];
        if module.is_empty() || rest.is_empty() || module.contains('"') {
            continue;
        }
        let param_name_end = rest.find('=').unwrap_or(rest.len());
        // kernel-level parameters with a dot that are not modules' are harmless:
        // they are only passed to a module of that exact name.
        map.entry(normalize_mod_name(module))
            .or_default()
            .push(format!(
                "{}{}",
                normalize_mod_name(&rest[..param_name_end]),
                &rest[param_name_end..]
            ));
    }
    map
}

/// The outcome of loading the list.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub loaded: Vec<String>,
    pub failed: Vec<String>,
}

/// Load every module listed in `order_file` (paths relative to `moddir`).
pub fn load_all(order_file: &Path, moddir: &Path, cmdline: &str) -> LoadResult {
    let mut res = LoadResult::default();
    let params = module_params(cmdline);
    let order = match std::fs::read_to_string(order_file) {
        Ok(s) => s,
        Err(e) => {
            res.failed.push(format!("{}: {e}", order_file.display()));
            return res;
        }
    };
    for line in order.lines() {
        let rel = line.trim();
        if rel.is_empty() || rel.starts_with('#') {
            continue;
        }
        let (name, compressed) = module_name_from_path(rel);
        let p = params.get(&name).map(|v| v.join(" ")).unwrap_or_default();
        match finit_module(&moddir.join(rel), &p, compressed) {
            Ok(()) => {
                crate::say!("loaded {name} {p}");
                res.loaded.push(name);
            }
            Err(errno) if errno == libc::EEXIST => res.loaded.push(name),
            Err(errno) => {
                crate::say!("module {name} failed: {}", errno_name(errno));
                res.failed.push(format!("{name}: {}", errno_name(errno)));
            }
        }
    }
    res
}

/// Load the one module `name` of `order_file` again, with the command
/// line's parameters for it; returns them.
pub fn load_one(
    order_file: &Path,
    moddir: &Path,
    cmdline: &str,
    name: &str,
) -> Result<String, String> {
    let order = std::fs::read_to_string(order_file)
        .map_err(|e| format!("{}: {e}", order_file.display()))?;
    let (rel, compressed) = order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| (l, module_name_from_path(l)))
        .find(|(_, (n, _))| n == name)
        .map(|(l, (_, c))| (l, c))
        .ok_or_else(|| format!("{name} is not in {}", order_file.display()))?;
    let p = module_params(cmdline)
        .get(name)
        .map(|v| v.join(" "))
        .unwrap_or_default();
    finit_module(&moddir.join(rel), &p, compressed)
        .map_err(|errno| format!("loading {name}: {}", errno_name(errno)))?;
    Ok(p)
}

/// Unload `name` (delete_module, O_NONBLOCK: fails at once while in use).
pub fn unload(name: &str) -> Result<(), i32> {
    let cname = CString::new(name).map_err(|_| libc::EINVAL)?;
    // SAFETY: delete_module reads the NUL-terminated name.
    let r = unsafe { libc::syscall(libc::SYS_delete_module, cname.as_ptr(), libc::O_NONBLOCK) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    }
}

fn finit_module(path: &Path, params: &str, compressed: bool) -> Result<(), i32> {
    let f = File::open(path).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let cparams = CString::new(params).map_err(|_| libc::EINVAL)?;
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    // SAFETY: finit_module reads the fd and the NUL-terminated parameter string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            cparams.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_from_cmdline() {
        let cl = "console=ttyS0 panic=-1 vfio.enable_unsafe_noiommu_mode=1 kvm-amd.avic=1 \
                  kvm_amd.nested=0 foo.bar=\"a b\" amd_iommu=on initcall.debug";
        let m = module_params(cl);
        assert_eq!(m["vfio"], vec!["enable_unsafe_noiommu_mode=1"]);
        assert_eq!(m["kvm_amd"], vec!["avic=1", "nested=0"]);
        assert_eq!(m["foo"], vec!["bar=\"a b\""]);
        assert_eq!(m["initcall"], vec!["debug"]);
        assert!(!m.contains_key("console"));
        assert!(!m.contains_key("amd_iommu"));
    }

    #[test]
    fn dotted_values_are_not_modules() {
        let m = module_params("root=/dev/vda1.x ip=10.0.0.1 vfio_pci.ids=1234:11e8");
        assert_eq!(m.len(), 1);
        assert_eq!(m["vfio_pci"], vec!["ids=1234:11e8"]);
    }

    #[test]
    fn names_from_paths() {
        assert_eq!(
            module_name_from_path("kernel/drivers/vfio/pci/vfio-pci.ko"),
            ("vfio_pci".to_string(), false)
        );
        assert_eq!(
            module_name_from_path("kernel/arch/x86/kvm/kvm-amd.ko.xz"),
            ("kvm_amd".to_string(), true)
        );
        assert_eq!(
            module_name_from_path("irqbypass.ko"),
            ("irqbypass".to_string(), false)
        );
    }
}
