//! Facts about the L1 guest for `wire::Platform`.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::sys::{parse_bool_param, read_trim};

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates the field.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// (major, minor) of a release string like `7.2.13+deb14-amd64`.
pub fn version_of(release: &str) -> (u32, u32) {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// The kernel log so far, message texts only.
pub fn kernel_log() -> Vec<String> {
    KernelLog::open()
        .map(|mut k| k.read_new())
        .unwrap_or_default()
}

/// A reader of `/dev/kmsg` that remembers its place: each
/// [`KernelLog::read_new`] returns what the kernel logged since the last.
pub struct KernelLog {
    file: std::fs::File,
}

impl KernelLog {
    /// Opens the log at its oldest record.
    pub fn open() -> std::io::Result<KernelLog> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        Ok(KernelLog { file })
    }

    /// Message texts of the records logged since the last call (non-blocking).
    pub fn read_new(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    // "pri,seq,ts,flags;message\n continuation lines"
                    let first = rec.lines().next().unwrap_or("");
                    if let Some((_, msg)) = first.split_once(';') {
                        out.push(msg.to_string());
                    }
                }
                // records overwritten before we read them: the read moves past
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        out
    }

    /// Headlines of the kernel warnings logged since the last call. The
    /// agent's own lines are skipped: it repeats warnings on the console.
    pub fn new_warnings(&mut self) -> Vec<String> {
        self.read_new()
            .into_iter()
            .filter(|m| !m.starts_with("testbed-agent:") && wire::kernel_warning(m))
            .collect()
    }
}

/// Interrupt remapping mode and posting support from kernel log lines.
pub fn remapping_from_log(log: &[String]) -> (Option<String>, bool) {
    let mut mode = None;
    let mut amd = false;
    let mut amd_x2apic = false;
    let mut posting = false;
    for l in log {
        if l.contains("DMAR-IR: Enabled IRQ remapping in x2apic mode") {
            mode = Some("intel x2apic".to_string());
        } else if l.contains("DMAR-IR: Enabled IRQ remapping in xapic mode") {
            mode = Some("intel xapic".to_string());
        } else if l.contains("AMD-Vi: Interrupt remapping enabled") {
            amd = true;
        } else if l.contains("AMD-Vi: X2APIC enabled") {
            amd_x2apic = true;
        } else if l.contains("AMD-Vi: Virtual APIC enabled") {
            posting = true;
        }
    }
    if amd {
        mode = Some(if amd_x2apic { "amd x2apic" } else { "amd" }.to_string());
    }
    (mode, posting)
}

/// What kvm_amd said about AVIC when it loaded: `Some(true)` for
/// "x2AVIC enabled", `Some(false)` for "AVIC enabled" alone (hybrid AVIC),
/// `None` for neither (AVIC off).
pub fn x2avic_from_log(log: &[String]) -> Option<bool> {
    let mut avic = None;
    for l in log.iter().filter_map(|l| l.strip_prefix("kvm_amd: ")) {
        if l.starts_with("x2AVIC enabled") {
            avic = Some(true);
        } else if l.starts_with("AVIC enabled") && avic.is_none() {
            avic = Some(false);
        }
    }
    avic
}

/// Intel: VT-d posted interrupts are capability bit 59 (no log line says so).
pub fn intel_posting_cap() -> bool {
    let Ok(rd) = std::fs::read_dir("/sys/class/iommu") else {
        return false;
    };
    rd.flatten().any(|e| {
        read_trim(e.path().join("intel-iommu/cap"))
            .and_then(|c| u64::from_str_radix(&c, 16).ok())
            .is_some_and(|c| c & (1 << 59) != 0)
    })
}

/// Whether Linux posts L1's device MSIs (see [`wire::Platform::posted_msi`]):
/// it has the option (the `PMN` line), was asked to (`intremap=posted_msi`),
/// and VT-d reported the posting capability, which `posted_msi_supported()`
/// requires.
pub fn posted_msi(
    interrupts: Option<&str>,
    cmdline: Option<&str>,
    vtd_posting: bool,
) -> Option<bool> {
    let has = interrupts?
        .lines()
        .any(|l| l.trim_start().starts_with("PMN:"));
    if !has {
        return None;
    }
    let asked = cmdline.is_some_and(|c| {
        c.split_whitespace().any(|w| {
            w.strip_prefix("intremap=")
                .is_some_and(|v| v.split(',').any(|o| o == "posted_msi"))
        })
    });
    Some(asked && vtd_posting)
}

/// Fill everything but the module lists.
pub fn collect(p: &mut wire::Platform) {
    p.kernel_release = kernel_release();
    let vendor = ["kvm_amd", "kvm_intel"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).join("parameters").exists());
    p.kvm_vendor = vendor.map(str::to_string);
    p.apicv = match vendor {
        Some("kvm_amd") => read_trim("/sys/module/kvm_amd/parameters/avic"),
        Some(_) => read_trim("/sys/module/kvm_intel/parameters/enable_apicv"),
        None => None,
    }
    .and_then(|s| parse_bool_param(&s));
    // 7.x has it per vendor module; some versions in kvm itself
    let mut dpi = read_trim("/sys/module/kvm/parameters/enable_device_posted_irqs");
    if dpi.is_none() {
        if let Some(v) = vendor {
            dpi = read_trim(format!(
                "/sys/module/{v}/parameters/enable_device_posted_irqs"
            ));
        }
    }
    p.device_posted_irqs = dpi.and_then(|s| parse_bool_param(&s));
    let log = kernel_log();
    if vendor == Some("kvm_amd") {
        p.ipiv = read_trim("/sys/module/kvm_amd/parameters/enable_ipiv")
            .and_then(|s| parse_bool_param(&s));
        p.x2avic = x2avic_from_log(&log);
    }
    let (mode, amd_posting) = remapping_from_log(&log);
    let intel = mode.as_deref().is_some_and(|m| m.starts_with("intel"));
    p.irq_posting = amd_posting || (intel && intel_posting_cap());
    p.posted_msi = posted_msi(
        std::fs::read_to_string("/proc/interrupts").ok().as_deref(),
        std::fs::read_to_string("/proc/cmdline").ok().as_deref(),
        intel && p.irq_posting,
    );
    p.irq_remapping = mode;
    p.iommufd = Path::new("/dev/iommu").exists();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn posted_msi_needs_option_request_and_capability() {
        let pmn = "  CPU0\nPMN:   0   Posted MSI notification event\n";
        let cmd = "console=ttyS0 intel_iommu=on intremap=posted_msi";
        assert_eq!(posted_msi(Some(pmn), Some(cmd), true), Some(true));
        assert_eq!(posted_msi(Some(pmn), Some(cmd), false), Some(false));
        assert_eq!(
            posted_msi(Some(pmn), Some("intel_iommu=on"), true),
            Some(false)
        );
        assert_eq!(posted_msi(Some("  CPU0\nNMI: 0\n"), Some(cmd), true), None);
        assert_eq!(posted_msi(None, Some(cmd), true), None);
    }

    #[test]
    fn versions() {
        assert_eq!(version_of("7.2.13+deb14-amd64"), (7, 2));
        assert_eq!(version_of("6.17.0-rc3"), (6, 17));
        assert_eq!(version_of("garbage"), (0, 0));
    }

    #[test]
    fn remapping_modes() {
        assert_eq!(
            remapping_from_log(&v(&[
                "DMAR-IR: IOAPIC id 0 under DRHD base  0xfed90000 IOMMU 0",
                "DMAR-IR: Enabled IRQ remapping in x2apic mode"
            ])),
            (Some("intel x2apic".into()), false)
        );
        assert_eq!(
            remapping_from_log(&v(&[
                "AMD-Vi: Extended features (0x29d7, 0x0): PreF PPR X2APIC GT IA GA HE",
                "AMD-Vi: Interrupt remapping enabled",
                "AMD-Vi: X2APIC enabled"
            ])),
            (Some("amd x2apic".into()), false)
        );
        assert_eq!(
            remapping_from_log(&v(&[
                "AMD-Vi: Interrupt remapping enabled",
                "AMD-Vi: Virtual APIC enabled"
            ])),
            (Some("amd".into()), true)
        );
        assert_eq!(remapping_from_log(&v(&["x2apic enabled"])), (None, false));
    }

    #[test]
    fn avic_lines() {
        // 7.2 and 7.3 wordings of kvm_amd's hardware setup
        assert_eq!(
            x2avic_from_log(&v(&["kvm_amd: AVIC enabled", "kvm_amd: x2AVIC enabled"])),
            Some(true)
        );
        assert_eq!(
            x2avic_from_log(&v(&[
                "kvm_amd: AVIC enabled",
                "kvm_amd: x2AVIC enabled (max 512 vCPUs)"
            ])),
            Some(true)
        );
        let hybrid = v(&[
            "kvm_amd: AVIC enabled",
            "kvm_amd: Nested Virtualization enabled",
        ]);
        assert_eq!(x2avic_from_log(&hybrid), Some(false));
        assert_eq!(
            x2avic_from_log(&v(&[
                "kvm_amd: Nested Virtualization enabled",
                "x2apic enabled"
            ])),
            None
        );
        // another module's AVIC line is not kvm_amd's
        assert_eq!(x2avic_from_log(&v(&["AMD-Vi: Virtual APIC enabled"])), None);
    }
}
