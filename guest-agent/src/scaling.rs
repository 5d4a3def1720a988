//! `testbed scaling` in L1: time KVM_IRQFD registration for a series of
//! irqfd counts (see `wire::ScalingJob`).
//!
//! Every irqfd gets its own eventfd and an MSI route in its VM; nothing
//! produces on those eventfds, so where KVM registers an irqbypass consumer
//! per irqfd (device posting on), each consumer waits for a producer that
//! never comes: the "many VMs whose irqfds can never be bypassed" case of
//! the upstream irqbypass discussion. The kprobes are on only for the probe
//! pass that checks that the consumers do register, and off while timing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use wire::{AgentMessage, ConsumerProbe, ScalingDone, ScalingJob, ScalingPoint, HEARTBEAT_SECS};

use crate::kvm::MSI_ADDR_APIC0;
use crate::sys::errno_str;
use crate::trace::{KEvent, Tracer, GROUP};

/// First GSI routed (0..23 stay the IOAPIC's).
const FIRST_GSI: u32 = 24;
/// File descriptors beyond the eventfds and VMs (the agent's own, modules).
const SPARE_FDS: u64 = 1024;

/// VMs and eventfds of one measurement; dropping it closes them.
struct Layout {
    vms: Vec<VmFd>,
    eventfds: Vec<EventFd>,
}

/// Calls `send(Progress)` at most every second, from loops that may run long.
struct Heartbeat<'a> {
    send: &'a mut dyn FnMut(AgentMessage),
    last: Instant,
    index: usize,
}

impl Heartbeat<'_> {
    fn tick(&mut self) {
        if self.last.elapsed() >= Duration::from_secs(HEARTBEAT_SECS) / 2 {
            crate::watchdog::alive();
            (self.send)(AgentMessage::Progress { index: self.index });
            self.last = Instant::now();
        }
    }
}

/// The GSI routing of a VM with `count` irqfds: one MSI route each.
fn routes(count: u32) -> Result<KvmIrqRouting, String> {
    let mut table =
        KvmIrqRouting::new(count as usize).map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))?;
    for (i, slot) in table.as_mut_slice().iter_mut().enumerate() {
        let mut e = kvm_irq_routing_entry {
            gsi: FIRST_GSI + i as u32,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = MSI_ADDR_APIC0;
        e.u.msi.data = 0x40 + (i as u32 % 0xb0);
        *slot = e;
    }
    Ok(table)
}

/// How many VMs hold `n` irqfds at `per_vm` each.
pub fn vms_for(n: u32, per_vm: u32) -> u32 {
    n.div_ceil(per_vm.max(1))
}

/// Creates the VMs (irqchip, routes) and `n` eventfds, untimed.
fn build(kvm: &Kvm, n: u32, per_vm: u32, hb: &mut Heartbeat) -> Result<Layout, String> {
    let mut layout = Layout {
        vms: Vec::new(),
        eventfds: Vec::with_capacity(n as usize),
    };
    let mut left = n;
    while left > 0 {
        let count = left.min(per_vm);
        let vm = kvm
            .create_vm()
            .map_err(|e| errno_str("KVM_CREATE_VM", e.errno()))?;
        vm.create_irq_chip()
            .map_err(|e| errno_str("KVM_CREATE_IRQCHIP", e.errno()))?;
        vm.set_gsi_routing(&routes(count)?)
            .map_err(|e| errno_str("KVM_SET_GSI_ROUTING", e.errno()))?;
        layout.vms.push(vm);
        left -= count;
        hb.tick();
    }
    for _ in 0..n {
        layout
            .eventfds
            .push(EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?);
    }
    Ok(layout)
}

/// Registers every irqfd, VM after VM; returns each KVM_IRQFD's time.
fn register(layout: &Layout, per_vm: u32, hb: &mut Heartbeat) -> Result<Vec<u64>, String> {
    let mut times = Vec::with_capacity(layout.eventfds.len());
    for (i, efd) in layout.eventfds.iter().enumerate() {
        let vm = &layout.vms[i / per_vm as usize];
        let gsi = FIRST_GSI + (i as u32 % per_vm);
        let t = Instant::now();
        let r = vm.register_irqfd(efd, gsi);
        let ns = t.elapsed().as_nanos() as u64;
        r.map_err(|e| errno_str(&format!("KVM_IRQFD #{i}"), e.errno()))?;
        times.push(ns);
        if i % 64 == 63 {
            hb.tick();
        }
    }
    Ok(times)
}

/// Closes the VMs (KVM deassigns their irqfds, and irqbypass drops their
/// consumers), then the eventfds; returns the time it took.
fn teardown(layout: Layout, hb: &mut Heartbeat) -> u64 {
    let Layout { vms, eventfds } = layout;
    let mut ns = 0u64;
    for vm in vms {
        let t = Instant::now();
        drop(vm);
        ns += t.elapsed().as_nanos() as u64;
        hb.tick();
    }
    let t = Instant::now();
    drop(eventfds);
    ns + t.elapsed().as_nanos() as u64
}

/// Median, median of the last tenth, max of per-call times (`times` in
/// call order).
pub fn summarize(times: &[u64]) -> (u64, u64, u64) {
    if times.is_empty() {
        return (0, 0, 0);
    }
    let tenth = (times.len() / 10).max(1);
    let mut last = times[times.len() - tenth..].to_vec();
    last.sort_unstable();
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    (
        sorted[sorted.len() / 2],
        last[last.len() / 2],
        *sorted.last().expect("not empty"),
    )
}

/// Sum over chunks of `chunk` consecutive calls of the chunk's median
/// times its length (see `wire::ScalingPoint::chunked_total_ns`).
pub fn chunked_total(times: &[u64], chunk: usize) -> u64 {
    times
        .chunks(chunk.max(1))
        .map(|c| {
            let mut s = c.to_vec();
            s.sort_unstable();
            s[s.len() / 2] * s.len() as u64
        })
        .sum()
}

/// Raises RLIMIT_NOFILE (soft and hard) to at least `want`.
fn raise_nofile(want: u64) -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(crate::sys::last_err("getrlimit(RLIMIT_NOFILE)"));
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let new = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    // SAFETY: plain setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(crate::sys::last_err(&format!(
            "setrlimit(RLIMIT_NOFILE, {want})"
        )));
    }
    Ok(want)
}

/// Turns the agent's kprobe group on or off in its trace buffer.
fn set_probes(tracer: &Tracer, on: bool) -> std::io::Result<()> {
    let path: PathBuf = tracer.dir.join("events").join(GROUP).join("enable");
    crate::sys::write_attr(path, if on { "1" } else { "0" })
}

/// Registers `job.probe_irqfds` irqfds with the kprobes on and counts what
/// irqbypass did.
fn probe(
    kvm: &Kvm,
    job: &ScalingJob,
    tracer: Option<&mut Tracer>,
    hb: &mut Heartbeat,
) -> ConsumerProbe {
    let mut p = ConsumerProbe {
        irqfds: job.probe_irqfds,
        ..Default::default()
    };
    let Some(tracer) = tracer else {
        p.error = Some("the agent has no tracer".into());
        return p;
    };
    tracer.mark();
    let result = build(kvm, job.probe_irqfds, job.per_vm, hb)
        .and_then(|layout| register(&layout, job.per_vm, hb).map(|_| layout));
    match result {
        Ok(layout) => {
            teardown(layout, hb);
        }
        Err(e) => p.error = Some(e),
    }
    for line in tracer.drain_lines() {
        match crate::trace::parse_line(&line).map(|r| r.event) {
            Some(KEvent::ConsReg { .. }) => p.register_calls += 1,
            Some(KEvent::ConsRegRet { ret: 0 }) => p.registered += 1,
            Some(KEvent::Connect { .. }) => p.connections += 1,
            Some(KEvent::Lost { count }) => {
                p.error
                    .get_or_insert_with(|| format!("the trace buffer lost {count} events"));
            }
            _ => {}
        }
    }
    p
}

/// Runs the job; sends points and heartbeats through `send`, returns the
/// end (the caller adds the kernel warnings).
pub fn run(
    job: &ScalingJob,
    mut tracer: Option<&mut Tracer>,
    send: &mut dyn FnMut(AgentMessage),
) -> ScalingDone {
    let mut done = ScalingDone {
        probe: ConsumerProbe::default(),
        nofile: 0,
        error: None,
        kernel_warnings: Vec::new(),
    };
    let mut hb = Heartbeat {
        send,
        last: Instant::now(),
        index: 0,
    };
    let largest = job
        .series
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(job.probe_irqfds);
    let vms = u64::from(vms_for(largest, job.per_vm));
    match raise_nofile(u64::from(largest) + vms + SPARE_FDS) {
        Ok(n) => done.nofile = n,
        Err(e) => {
            done.error = Some(e);
            return done;
        }
    }
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            done.error = Some(errno_str("open /dev/kvm", e.errno()));
            return done;
        }
    };
    done.probe = probe(&kvm, job, tracer.as_deref_mut(), &mut hb);
    crate::say!(
        "scaling probe: {} irqfds, {} consumer registrations, {} returned 0, {} connections{}",
        done.probe.irqfds,
        done.probe.register_calls,
        done.probe.registered,
        done.probe.connections,
        done.probe
            .error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    if let Some(t) = tracer.as_deref() {
        if let Err(e) = set_probes(t, false) {
            done.error = Some(format!("turning the kprobes off: {e}"));
            return done;
        }
    }
    'series: for repeat in 0..job.repeats {
        for (i, &n) in job.series.iter().enumerate() {
            hb.index = i;
            let layout = match build(&kvm, n, job.per_vm, &mut hb) {
                Ok(l) => l,
                Err(e) => {
                    done.error = Some(format!("N={n}: {e}"));
                    break 'series;
                }
            };
            let times = match register(&layout, job.per_vm, &mut hb) {
                Ok(t) => t,
                Err(e) => {
                    done.error = Some(format!("N={n}: {e}"));
                    teardown(layout, &mut hb);
                    break 'series;
                }
            };
            let vms = layout.vms.len() as u32;
            let teardown_ns = teardown(layout, &mut hb);
            let (median_ns, last_tenth_median_ns, max_ns) = summarize(&times);
            let point = ScalingPoint {
                n,
                vms,
                repeat,
                total_ns: times.iter().sum(),
                chunked_total_ns: chunked_total(&times, wire::CHUNK_CALLS),
                median_ns,
                last_tenth_median_ns,
                max_ns,
                teardown_ns,
            };
            crate::say!(
                "scaling N={n} vms={vms} repeat={repeat}: total {} us, median {} ns, last tenth {} ns",
                point.total_ns / 1000,
                median_ns,
                last_tenth_median_ns
            );
            (hb.send)(AgentMessage::ScalingPoint(point));
            hb.last = Instant::now();
        }
    }
    if let Some(t) = tracer.as_deref() {
        if let Err(e) = set_probes(t, true) {
            crate::say!("turning the kprobes back on: {e}");
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let times: Vec<u64> = (1..=100).collect();
        assert_eq!(summarize(&times), (51, 96, 100));
        assert_eq!(summarize(&[7]), (7, 7, 7));
        assert_eq!(summarize(&[]), (0, 0, 0));
    }

    #[test]
    fn chunked_totals_ignore_spikes_and_follow_trends() {
        let mut flat = vec![10u64; 64];
        flat[5] = 1_000_000;
        assert_eq!(chunked_total(&flat, 16), 640);
        let rising: Vec<u64> = (0..64).collect();
        // chunk medians 8, 24, 40, 56
        assert_eq!(chunked_total(&rising, 16), 16 * (8 + 24 + 40 + 56));
        assert_eq!(chunked_total(&[3, 4, 5], 16), 12);
    }

    #[test]
    fn vm_counts() {
        assert_eq!(vms_for(64, 64), 1);
        assert_eq!(vms_for(65, 64), 2);
        assert_eq!(vms_for(16384, 4072), 5);
    }

    #[test]
    fn routes_stay_below_the_route_limit() {
        let t = routes(wire::MAX_IRQFDS_PER_VM).unwrap();
        let last = t.as_slice().last().unwrap();
        assert!(last.gsi < 4096, "{}", last.gsi);
    }
}
