//! The KVM vendor module (kvm_amd or kvm_intel): unloaded and loaded again
//! from the initramfs with its boot parameters (`reload-kvm`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::modules;
use crate::sys::errno_name;

/// How long an unload may wait for the module's last user to go (a VM's
/// teardown can finish asynchronously after its fd is closed).
const UNLOAD_WAIT: Duration = Duration::from_secs(5);

/// The vendor module that is loaded.
pub fn vendor() -> Result<&'static str, String> {
    ["kvm_amd", "kvm_intel"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
        .ok_or_else(|| "no KVM vendor module loaded".to_string())
}

/// Every readable parameter of a loaded module.
fn params(module: &str) -> BTreeMap<String, String> {
    let dir = PathBuf::from("/sys/module").join(module).join("parameters");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(v) = std::fs::read_to_string(e.path()) {
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                v.trim().to_string(),
            );
        }
    }
    out
}

/// Unload the vendor module and load it again; returns its name and the
/// parameters it was loaded with.
pub fn reload() -> Result<(String, String), String> {
    let m = vendor()?;
    let before = params(m);
    let t0 = Instant::now();
    loop {
        match modules::unload(m) {
            Ok(()) => break,
            Err(e)
                if (e == libc::EWOULDBLOCK || e == libc::EBUSY) && t0.elapsed() < UNLOAD_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                let refcnt = std::fs::read_to_string(format!("/sys/module/{m}/refcnt"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Err(format!(
                    "unloading {m}: {} (refcnt {refcnt})",
                    errno_name(e)
                ));
            }
        }
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("kernel release: {e}"))?;
    let moddir = Path::new("/lib/modules").join(release.trim());
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let p = modules::load_one(Path::new(crate::MODULES_ORDER), &moddir, &cmdline, m)?;
    let after = params(m);
    let changed: Vec<String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, v)| {
            let now = after.get(k).map_or("gone", String::as_str);
            format!("{k} {v} -> {now}")
        })
        .collect();
    if !changed.is_empty() {
        return Err(format!(
            "{m} reloaded with other parameters: {}",
            changed.join(", ")
        ));
    }
    Ok((m.to_string(), p))
}
