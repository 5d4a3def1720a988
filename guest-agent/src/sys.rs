//! Small system helpers: error strings, sysfs files, the console log.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

/// `WHAT: <strerror> (os error N)`, the form every failing syscall takes in a step error.
pub fn errstr(what: &str, err: &io::Error) -> String {
    format!("{what}: {err}")
}

/// The last OS error as a step error string.
pub fn last_err(what: &str) -> String {
    errstr(what, &io::Error::last_os_error())
}

/// A step error from an errno-carrying error of the rust-vmm crates.
pub fn errno_str(what: &str, errno: i32) -> String {
    errstr(what, &io::Error::from_raw_os_error(errno))
}

/// Symbolic errno name for the common cases (module loading reports these).
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::ENXIO => "ENXIO",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// Write a sysfs/tracefs attribute in one write(2), as the kernel expects.
pub fn write_attr(path: impl AsRef<Path>, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path.as_ref())?;
    f.write_all(value.as_bytes())
}

/// Append a line to a tracefs control file such as `kprobe_events`.
pub fn append_attr(path: impl AsRef<Path>, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().append(true).open(path.as_ref())?;
    f.write_all(value.as_bytes())
}

/// Read a small text file, trimmed.
pub fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A kernel boolean parameter: `Y`/`N`/`1`/`0`.
pub fn parse_bool_param(s: &str) -> Option<bool> {
    match s.trim() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

static CONSOLE: Mutex<Option<File>> = Mutex::new(None);

/// Progress for the host's console log.
///
/// Goes through `/dev/kmsg`: printk reaches ttyS0 by polling, so this works
/// even where the guest's IO-APIC interrupts do not (QEMU's amd-iommu with
/// intremap under TCG), where a tty write to /dev/console would block forever.
pub fn log(msg: &str) {
    let mut guard = match CONSOLE.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if guard.is_none() {
        *guard = OpenOptions::new().write(true).open("/dev/kmsg").ok();
    }
    let line = format!("<4>testbed-agent: {msg}\n");
    match guard.as_mut() {
        Some(f) => {
            let _ = f.write_all(line.as_bytes());
        }
        None => {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Macro front end for [`log`].
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => { $crate::sys::log(&format!($($t)*)) };
}
