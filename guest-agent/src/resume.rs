//! Resuming from a saved state ([`wire::HostMessage::Resumed`]): the guest
//! wakes up in a new QEMU exactly where it was saved, right after the
//! agent's Ready. Its clocks stood still meanwhile (TCG saves the virtual
//! clock), so only the wall clock is behind: it is stepped to the host's.
//! A device model without migration state (QEMU's edu has none) comes back
//! in its reset state, BARs unassigned: the agent writes back the header
//! fields it read before the save, as the kernel's own PCI resume does.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::platform::KernelLog;
use crate::say;

const PCI_DEVICES: &str = "/sys/bus/pci/devices";
/// Command register, BARs, expansion ROM, interrupt line: what firmware and
/// the kernel programmed. Everything else in a header is read-only or
/// state a driver sets up (none is bound to the scenario devices yet).
const HEADER_LEN: usize = 64;

/// The type 0 header fields written back, as (offset, length), the command
/// register last so that the BARs are in place before decoding starts.
const RESTORED: [(usize, usize); 9] = [
    (0x10, 4),
    (0x14, 4),
    (0x18, 4),
    (0x1c, 4),
    (0x20, 4),
    (0x24, 4),
    (0x30, 4),
    (0x3c, 1),
    (0x04, 2),
];

/// PCI config headers read before the save, by sysfs path.
pub struct PciHeaders(Vec<(PathBuf, Vec<u8>)>);

impl PciHeaders {
    pub fn read() -> PciHeaders {
        let mut out = Vec::new();
        if let Ok(dir) = fs::read_dir(PCI_DEVICES) {
            for ent in dir.flatten() {
                let path = ent.path();
                if let Some(h) = header(&path) {
                    out.push((path, h));
                }
            }
        }
        out.sort();
        PciHeaders(out)
    }

    /// Write back the fields of every type 0 function whose header changed;
    /// the functions' names.
    fn restore(&self) -> Vec<String> {
        let mut restored = Vec::new();
        for (path, saved) in &self.0 {
            let Some(now) = header(path) else { continue };
            // type 0 (endpoint) headers only: a bridge's windows sit at other offsets
            if saved[0x0e] & 0x7f != 0 || !differs(saved, &now) {
                continue;
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match write_back(&path.join("config"), saved) {
                Ok(()) => restored.push(name),
                Err(e) => say!("restoring the PCI header of {name}: {e}"),
            }
        }
        restored
    }
}

fn header(dev: &Path) -> Option<Vec<u8>> {
    let f = fs::File::open(dev.join("config")).ok()?;
    let mut h = vec![0u8; HEADER_LEN];
    f.read_exact_at(&mut h, 0).ok()?;
    Some(h)
}

fn differs(saved: &[u8], now: &[u8]) -> bool {
    RESTORED
        .iter()
        .any(|&(off, len)| saved[off..off + len] != now[off..off + len])
}

fn write_back(config: &Path, saved: &[u8]) -> std::io::Result<()> {
    let f = fs::OpenOptions::new().write(true).open(config)?;
    for &(off, len) in &RESTORED {
        f.write_all_at(&saved[off..off + len], off as u64)?;
    }
    Ok(())
}

fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn set_realtime(ns: u64) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as _,
        tv_nsec: (ns % 1_000_000_000) as _,
    };
    // SAFETY: clock_settime reads one timespec we own.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Everything the agent does on `Resumed`: step the wall clock, put back
/// PCI headers, and collect what the kernel said since the save.
pub fn resume(
    unix_time_ns: u64,
    headers: &PciHeaders,
    kernel_log: Option<&mut KernelLog>,
) -> wire::Resume {
    let step = (unix_time_ns as i128 - realtime_ns()) / 1_000_000;
    if let Err(e) = set_realtime(unix_time_ns) {
        say!("setting the wall clock: {e}");
    }
    let pci_restored = headers.restore();
    let clocksource =
        fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
    let noise = kernel_log
        .map(|k| {
            k.read_new()
                .into_iter()
                .filter(|m| !m.starts_with("testbed-agent:") && wire::resume_noise(m))
                .collect()
        })
        .unwrap_or_default();
    let resume = wire::Resume {
        clock_step_ms: step as i64,
        clocksource,
        pci_restored,
        noise,
    };
    say!(
        "resumed: wall clock stepped {} ms, clocksource {}, PCI headers restored: {:?}",
        resume.clock_step_ms,
        resume.clocksource,
        resume.pci_restored
    );
    resume
}
