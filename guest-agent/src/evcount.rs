//! Counts trace events while a program runs (`wire::ExecJob::count_events`,
//! e.g. KVM's AVIC events around a selftest): a tracefs instance of its
//! own, so the scenario tracer's buffer and events are untouched; the
//! events enabled there just before the program starts, its `trace_pipe`
//! drained while it runs (a busy test fills any buffer) and once more
//! after the events are disabled again.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use wire::EventCounts;

use crate::sys::write_attr;

const INSTANCE: &str = "testbed-count";
/// Per CPU; drained every 200 ms, so only a burst needs the room.
const BUFFER_KB: &str = "4096";

/// Counting in progress.
pub struct Counter {
    /// (`system:event`, its `enable` file) of the events being counted.
    enabled: Vec<(String, PathBuf)>,
    pipe: Option<File>,
    partial: Vec<u8>,
    counts: BTreeMap<String, u64>,
    unavailable: Vec<String>,
    lost: u64,
}

impl Counter {
    /// Starts counting `events` (`system:event`); `None` when there are none.
    /// What cannot be enabled is reported, never an error.
    pub fn start(events: &[String]) -> Option<Counter> {
        if events.is_empty() {
            return None;
        }
        let mut c = Counter {
            enabled: Vec::new(),
            pipe: None,
            partial: Vec::new(),
            counts: BTreeMap::new(),
            unavailable: Vec::new(),
            lost: 0,
        };
        let dir = match instance() {
            Ok(d) => d,
            Err(e) => {
                c.unavailable = events.iter().map(|ev| format!("{ev}: {e}")).collect();
                return Some(c);
            }
        };
        let _ = write_attr(dir.join("buffer_size_kb"), BUFFER_KB);
        // anything a previous program left in the buffer is not this one's
        let _ = write_attr(dir.join("events/enable"), "0");
        let _ = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(dir.join("trace"));
        for ev in events {
            let Some((system, name)) = ev.split_once(':') else {
                c.unavailable.push(format!("{ev}: not system:event"));
                continue;
            };
            let enable = dir.join("events").join(system).join(name).join("enable");
            if !enable.exists() {
                c.unavailable.push(format!("{ev}: not in this kernel"));
                continue;
            }
            match write_attr(&enable, "1") {
                Ok(()) => {
                    c.counts.insert(ev.clone(), 0);
                    c.enabled.push((ev.clone(), enable));
                }
                Err(e) => c.unavailable.push(format!("{ev}: enable: {e}")),
            }
        }
        let _ = write_attr(dir.join("tracing_on"), "1");
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dir.join("trace_pipe"))
        {
            Ok(f) => c.pipe = Some(f),
            Err(e) => {
                // enabled but unreadable: count nothing rather than a wrong 0
                for (ev, enable) in c.enabled.drain(..) {
                    let _ = write_attr(&enable, "0");
                    c.counts.remove(&ev);
                    c.unavailable.push(format!("{ev}: trace_pipe: {e}"));
                }
            }
        }
        Some(c)
    }

    /// Reads and counts what the buffer holds now.
    pub fn poll(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut buf = [0u8; 65536];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // EAGAIN: empty
            }
        }
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            count_line(
                &String::from_utf8_lossy(&line),
                &mut self.counts,
                &mut self.lost,
            );
        }
    }

    /// Stops counting and returns the counts.
    pub fn finish(mut self) -> EventCounts {
        self.disable();
        self.poll();
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            count_line(
                &String::from_utf8_lossy(&rest),
                &mut self.counts,
                &mut self.lost,
            );
        }
        EventCounts {
            counts: std::mem::take(&mut self.counts),
            unavailable: std::mem::take(&mut self.unavailable),
            lost: self.lost,
        }
    }

    fn disable(&mut self) {
        for (_, enable) in self.enabled.drain(..) {
            let _ = write_attr(&enable, "0");
        }
    }
}

impl Drop for Counter {
    /// A program that never started leaves no event enabled.
    fn drop(&mut self) {
        self.disable();
    }
}

/// Adds one trace line to `counts` (keyed `system:event`; an event is
/// matched by its name, which KVM's are unique by) or to `lost`.
fn count_line(line: &str, counts: &mut BTreeMap<String, u64>, lost: &mut u64) {
    if let Some(n) = crate::trace::lost_events(line) {
        *lost += n;
        return;
    }
    let Some(fields) = crate::trace::split_line(line) else {
        return;
    };
    if let Some((_, n)) = counts.iter_mut().find(|(k, _)| {
        k.split_once(':')
            .is_some_and(|(_, name)| name == fields.name)
    }) {
        *n += 1;
    }
}

/// The counting instance's directory, made if needed.
fn instance() -> Result<PathBuf, String> {
    let root = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("instances").is_dir())
        .ok_or_else(|| "no tracefs with instances".to_owned())?;
    let dir = root.join("instances").join(INSTANCE);
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(format!("tracefs instance {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_by_event_name_and_lost_ones_add_up() {
        let mut counts: BTreeMap<String, u64> = [
            ("kvm:kvm_avic_doorbell".to_owned(), 0),
            ("kvm:kvm_avic_incomplete_ipi".to_owned(), 0),
        ]
        .into();
        let mut lost = 0;
        for l in [
            " xapic_ipi_test-140 [001] d..1.  52.123456: kvm_avic_doorbell: apicid 1, vec 0",
            " xapic_ipi_test-141 [000] .....  52.123500: kvm_avic_incomplete_ipi: vcpu 0 icrh:icrl 0x1000000a5 id 1 index 0",
            " xapic_ipi_test-141 [000] .....  52.123600: kvm_avic_incomplete_ipi: vcpu 0 icrh:icrl 0x1000000a5 id 1 index 0",
            " xapic_ipi_test-141 [000] .....  52.123700: kvm_apicv_accept_irq: apicid 1 vec 165 (Fixed|edge)",
            "CPU:1 [LOST 12 EVENTS]",
            "# tracer: nop",
        ] {
            count_line(l, &mut counts, &mut lost);
        }
        assert_eq!(counts["kvm:kvm_avic_doorbell"], 1);
        assert_eq!(counts["kvm:kvm_avic_incomplete_ipi"], 2);
        assert_eq!(counts.len(), 2, "an event not asked for is not added");
        assert_eq!(lost, 12);
    }

    #[test]
    fn nothing_asked_nothing_counted() {
        assert!(Counter::start(&[]).is_none());
    }
}
