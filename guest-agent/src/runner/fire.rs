//! Raising interrupts (`fire`, `signal`, `unmask`) and accounting for each
//! one: L1's host IRQ line, KVM's injections, delivery in running L2s, the
//! eventfd's counter where no irqfd holds the vector.

use std::os::unix::io::AsRawFd;
use std::thread::sleep;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use wire::{AgentMessage, VectorCount};

use super::devices::write_ops;
use super::{parse_vector, JobState, Runner, Vector};
use crate::interrupts::{find_line, normalize_chip, vfio_irq_name};
use crate::say;
use crate::sys::errstr;
use crate::vdpa::VdpaDevice;
use crate::vfio::VfioDevice;

/// How long one raised interrupt may take to be accounted.
const FIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a `fire`, `signal` or `unmask` step's interrupts come from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The device raises its MSI (`fire`).
    Device,
    /// The agent writes the vector's eventfd (`signal`).
    Eventfd,
    /// The device sends the raise it held pending while masked (`unmask`).
    Unmask,
}

/// What a `fire`, `unmask` or its acknowledgement acts on.
#[derive(Clone, Copy)]
enum Target<'a> {
    Vfio(&'a VfioDevice),
    Vdpa(&'a VdpaDevice),
}

impl Runner {
    pub(super) fn fire(
        &mut self,
        st: &mut JobState,
        vector: &str,
        count: u32,
        source: Source,
        index: usize,
        send: &mut dyn FnMut(AgentMessage),
    ) -> Result<VectorCount, String> {
        let (device, kind, idx) = parse_vector(vector)?;
        if source == Source::Device && kind != "intx" && Self::rerouted(st, vector) {
            return self.fire_rerouted(st, vector, count, index, send);
        }
        let spec = st.model(device)?;
        // a masked vector's raises stay in the device: nothing to wait for
        let masked = source == Source::Device && st.masked.contains(vector);
        let evfd = st
            .vectors
            .get(vector)
            .ok_or_else(|| format!("vector {vector} has no eventfd (no enable-msi?)"))?
            .eventfd
            .try_clone()
            .map_err(|e| errstr("dup eventfd", &e))?;
        // routes fed by this vector through an attached irqfd
        let mut routes = Vec::new();
        // an INTx vector's IOAPIC pins (= GSIs)
        let mut pins = Vec::new();
        for (_, vm) in &st.vms {
            if vm.irqfds.contains_key(vector) {
                routes.extend(
                    vm.routes()
                        .iter()
                        .filter(|r| r.source == vector)
                        .map(|r| r.vector),
                );
                pins.extend(
                    vm.routes()
                        .iter()
                        .filter(|r| r.source == vector)
                        .filter_map(|r| r.pin),
                );
            }
        }
        let intx = kind == "intx";
        let held = !routes.is_empty();
        // A device interrupt of a connected vector is posted by the IOMMU
        // straight into the vCPU's vAPIC: no host IRQ, no KVM injection. The
        // device raises it synchronously with the MMIO write, so without a
        // running L2 to take it there is nothing to wait for.
        let posted = held && source != Source::Eventfd && self.connected.contains(vector);
        // running L2s of VMs holding the vector: (vm, memory, route vector, count before)
        let mut l2s = Vec::new();
        for (name, vm) in &st.vms {
            if !vm.irqfds.contains_key(vector) {
                continue;
            }
            let Some(l2) = vm.running_l2() else { continue };
            if let Some(r) = vm.routes().iter().find(|r| r.source == vector) {
                l2s.push((
                    name.clone(),
                    l2.mem.clone(),
                    r.vector,
                    l2.mem.count(r.vector),
                    l2.eois(),
                ));
            }
        }
        // delivered in each L2; for a level interrupt only once the handler
        // is done (device acked, EOI written: the line is re-armed by then)
        let delivered =
            |l2s: &[(String, std::sync::Arc<crate::l2::GuestMem>, u8, u32, u32)]| -> Vec<u64> {
                l2s.iter()
                    .map(|(_, m, v, base, eois)| {
                        let d = crate::l2::delta(*base, m.count(*v));
                        if intx {
                            d.min(crate::l2::delta(
                                *eois,
                                m.read_u32(crate::l2::layout::CTL_EOIS),
                            ))
                        } else {
                            d
                        }
                    })
                    .collect()
            };
        let fire_t0 = Instant::now();
        let dev = match source {
            Source::Device | Source::Unmask if matches!(spec.attach, wire::Attach::Vdpa(_)) => {
                Some(Target::Vdpa(st.vdpa(device)?))
            }
            Source::Device | Source::Unmask => Some(Target::Vfio(st.device(device)?)),
            Source::Eventfd => None,
        };
        let irq_name = dev.and_then(|d| match d {
            Target::Vfio(d) if intx => Some(format!("vfio-intx({})", d.bdf)),
            Target::Vfio(d) => Some(vfio_irq_name(kind, idx, &d.bdf)),
            Target::Vdpa(d) => d.irq_name(idx),
        });
        let host_line = || {
            let name = irq_name.as_deref()?;
            std::fs::read_to_string("/proc/interrupts")
                .ok()
                .and_then(|t| find_line(&t, name))
        };
        let raise = |dev: Option<Target>| match (dev, source) {
            (Some(Target::Vfio(d)), Source::Unmask) => write_ops(d, spec.unmask, idx),
            (Some(Target::Vfio(d)), _) => write_ops(d, spec.fire, idx),
            (Some(Target::Vdpa(d)), _) => d.fire(idx),
            (None, _) => evfd.write(1).map_err(|e| errstr("write eventfd", &e)),
        };
        // a vDPA buffer is acknowledged by the device completing it, which
        // also frees its descriptor for the next fire
        // a level interrupt is acknowledged by the L2's handler, before its
        // EOI; where nobody takes it the line stays asserted
        let ack = |dev: Option<Target>| match dev {
            Some(Target::Vfio(_)) if intx => Ok(()),
            Some(Target::Vfio(d)) => write_ops(d, spec.ack, idx),
            Some(Target::Vdpa(d)) => d.wait_completed(idx),
            None => Ok(()),
        };
        let base = host_line().map(|l| l.count).unwrap_or(0);
        let mut signalled = 0u64;
        if !held {
            // start from an empty counter
            signalled_read(&evfd);
        }
        if masked {
            for _ in 0..count {
                raise(dev)?;
            }
        } else if source == Source::Unmask && count == 0 {
            // nothing pending: the unmask must send nothing
            raise(dev)?;
        }
        let count_sent = if masked { 0 } else { count };
        for i in 0..u64::from(count_sent) {
            if !held && source == Source::Eventfd {
                // our own write is what the eventfd will count
                raise(dev)?;
                signalled += signalled_read(&evfd);
                continue;
            }
            raise(dev)?;
            if posted && l2s.is_empty() {
                ack(dev)?;
                continue;
            }
            let t0 = Instant::now();
            loop {
                if !l2s.is_empty() {
                    // delivered in every running L2 (which implies L1 saw it
                    // and KVM injected it); the trace is read once per interrupt
                    if delivered(&l2s).iter().all(|d| *d > i) {
                        self.poll_trace();
                        break;
                    }
                } else if held {
                    self.poll_trace();
                    let host = host_line()
                        .map(|l| l.count)
                        .unwrap_or(0)
                        .saturating_sub(base);
                    if host > i || self.injected_for(intx, &routes, &pins) > i {
                        break;
                    }
                } else {
                    signalled += signalled_read(&evfd);
                    if signalled > i {
                        break;
                    }
                }
                self.heartbeat(index, send);
                if t0.elapsed() > FIRE_TIMEOUT {
                    say!(
                        "fire {vector}: interrupt {} not accounted after {FIRE_TIMEOUT:?}",
                        i + 1
                    );
                    let dead = st.vms.iter().find_map(|(n, vm)| {
                        vm.running_l2()
                            .and_then(|l| l.error())
                            .map(|e| format!("{n}: {e}"))
                    });
                    if let Some(e) = dead {
                        let _ = ack(dev);
                        return Err(e);
                    }
                    break;
                }
                if !l2s.is_empty() {
                    sleep(Duration::from_micros(50));
                } else if held {
                    sleep(Duration::from_micros(500));
                } else {
                    poll_in(&evfd, 10);
                }
            }
            ack(dev)?;
        }
        let fired_in = fire_t0.elapsed();
        // let the irqfd slow path (workqueue) and the L2s catch up
        if count_sent == 0 {
            // nothing should arrive; give a wrong one the time to show up
            sleep(Duration::from_millis(20));
            self.poll_trace();
            if !held {
                signalled += signalled_read(&evfd);
            }
        } else if held {
            let t0 = Instant::now();
            loop {
                self.poll_trace();
                let all_in = delivered(&l2s).iter().all(|d| *d >= u64::from(count));
                // every VM holding the vector injects each interrupt
                let want = u64::from(count) * routes.len() as u64;
                if ((posted || self.injected_for(intx, &routes, &pins) >= want) && all_in)
                    || t0.elapsed() > Duration::from_millis(300)
                {
                    break;
                }
                sleep(Duration::from_millis(1));
            }
        } else if source != Source::Eventfd {
            signalled += signalled_read(&evfd);
        }
        let line = host_line();
        let delivered = (!l2s.is_empty()).then(|| delivered(&l2s).iter().sum::<u64>());
        if let Some(d) = delivered {
            let names: Vec<&str> = l2s.iter().map(|(n, ..)| n.as_str()).collect();
            say!(
                "fire {vector}: {count} raised in {} us ({} us each), delivered in L2 ({}) {d}",
                fired_in.as_micros(),
                fired_in.as_micros() / u128::from(count.max(1)),
                names.join(", ")
            );
        }
        // an L2 that died while the step ran is this step's failure
        for (name, vm) in &st.vms {
            if let Some(e) = vm.running_l2().and_then(|l| l.error()) {
                return Err(format!("{name}: {e}"));
            }
        }
        Ok(VectorCount {
            vector: vector.to_string(),
            raised: u64::from(count),
            signalled: (!held).then_some(signalled),
            host_irq: line
                .as_ref()
                .map(|l| l.count.saturating_sub(base))
                .unwrap_or(0),
            host_chip: line.map(|l| normalize_chip(&l.chip)),
            injected: self.injected_for(intx, &routes, &pins),
            resampled: intx.then(|| self.level_counts(&pins).0),
            unmasked: intx.then(|| self.level_counts(&pins).1),
            eoi_trapped: intx.then(|| self.eoi_trapped(&routes)),
            route: None,
            delivered,
        })
    }
}

pub(super) fn new_vector() -> Result<Vector, String> {
    EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)
        .map(|eventfd| Vector { eventfd })
        .map_err(|e| errstr("eventfd", &e))
}

/// Read (and so reset) an eventfd's counter without blocking; 0 if not signalled.
fn signalled_read(fd: &EventFd) -> u64 {
    fd.read().unwrap_or(0)
}

fn poll_in(fd: &EventFd, ms: i32) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
}
