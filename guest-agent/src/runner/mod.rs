//! Executes a job's steps and observes what irqbypass and KVM did.
//!
//! `mod.rs` runs a job (steps, then cleanup) and turns each step into its
//! report; the steps are executed per subsystem: `devices.rs` (VFIO and
//! vDPA devices: bind, MSI, MSI-X, virtqueues, masks, fire), `hotplug.rs`
//! (unplug and replug through the host), `fire.rs` (raising interrupts
//! and accounting for them), `kvm.rs` (VMs, irqfds, the tiny L2),
//! `reroute.rs` (routes changed under a live irqfd, and their fires),
//! `nested.rs` (real L2 Linux guests), `l2link.rs` (their NICs' links
//! flapped through the host).

mod devices;
mod fire;
mod hotplug;
mod inhibit;
mod kvm;
mod l2cut;
mod l2link;
mod nested;
mod reroute;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use wire::{
    AgentMessage, BypassEvent, Done, HostMessage, Job, JobDevice, Step, StepReport, VectorCount,
};

use crate::attrib::{Attributor, StepNames};
use crate::kvm::Vm;
use crate::platform::KernelLog;
use crate::say;
use crate::trace::{KEvent, TraceRecord, Tracer};
use crate::vdpa::VdpaDevice;
use crate::vfio::VfioDevice;

/// Reads the host's next message, waiting at most the given time.
pub type Recv<'a> = dyn FnMut(Duration) -> Result<Option<HostMessage>, String> + 'a;

struct Vector {
    eventfd: EventFd,
}

/// What a job has open.
#[derive(Default)]
struct JobState {
    devices: HashMap<String, JobDevice>,
    open: Vec<(String, VfioDevice)>,
    /// Open vDPA devices (vhost-vdpa).
    vdpa: Vec<(String, VdpaDevice)>,
    vectors: HashMap<String, Vector>,
    vms: Vec<(String, Vm)>,
    next_vector: u16,
    /// Open devices' vectors that have an eventfd through VFIO (MSI or MSI-X).
    wired: HashMap<String, BTreeSet<u32>>,
    /// Vectors masked at the device.
    masked: HashSet<String>,
    /// Masked vectors raised since their mask: the device holds one raise.
    pending: HashSet<String>,
    /// Running real L2s (their VMMs die when dropped).
    l2s: Vec<(String, crate::nested::L2Linux)>,
}

impl JobState {
    fn device(&self, name: &str) -> Result<&VfioDevice, String> {
        self.open
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
            .ok_or_else(|| format!("device {name} is not open (no bind step?)"))
    }

    fn vdpa(&self, name: &str) -> Result<&VdpaDevice, String> {
        self.vdpa
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
            .ok_or_else(|| format!("device {name} is not open (no bind step?)"))
    }

    /// Whether the device is open, through VFIO or vhost-vdpa.
    fn is_open(&self, name: &str) -> bool {
        self.open.iter().any(|(n, _)| n == name) || self.vdpa.iter().any(|(n, _)| n == name)
    }

    /// The device's PCI address in L1.
    fn bdf(&self, name: &str) -> Result<String, String> {
        self.devices
            .get(name)
            .map(|d| d.bdf.clone())
            .ok_or_else(|| format!("unknown device {name} (not in the job's devices)"))
    }

    fn model(&self, name: &str) -> Result<&'static wire::ModelSpec, String> {
        self.devices
            .get(name)
            .map(|d| d.model.spec())
            .ok_or_else(|| format!("unknown device {name} (not in the job's devices)"))
    }

    /// Forget what a closed device had wired, masked or pending.
    fn forget_device(&mut self, name: &str) {
        self.wired.remove(name);
        let prefix = format!("{name}/");
        self.masked.retain(|v| !v.starts_with(&prefix));
        self.pending.retain(|v| !v.starts_with(&prefix));
    }

    fn vm(&mut self, name: &str) -> Result<&mut Vm, String> {
        self.vms
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("no VM named {name}"))
    }
}

/// `dev0/msi3` -> (`dev0`, `msi`, 3); `vdpa0/vq1` -> (`vdpa0`, `vq`, 1).
pub fn parse_vector(name: &str) -> Result<(&str, &str, u32), String> {
    let bad = || {
        format!("bad vector name {name:?} (expected <device>/msi<n>, <device>/msix<n> or <device>/vq<n>)")
    };
    let (dev, v) = name.split_once('/').ok_or_else(bad)?;
    let (kind, idx) = if let Some(i) = v.strip_prefix("intx") {
        ("intx", i)
    } else if let Some(i) = v.strip_prefix("msix") {
        ("msix", i)
    } else if let Some(i) = v.strip_prefix("msi") {
        ("msi", i)
    } else if let Some(i) = v.strip_prefix("vq") {
        ("vq", i)
    } else {
        return Err(bad());
    };
    if dev.is_empty() {
        return Err(bad());
    }
    Ok((dev, kind, idx.parse().map_err(|_| bad())?))
}

/// The agent's long-lived state between jobs.
pub struct Runner {
    pub tracer: Option<Tracer>,
    attrib: Attributor,
    /// Log raw trace lines to the console.
    pub debug: bool,
    /// Trace records of the running step.
    acc: Vec<TraceRecord>,
    /// When the host last heard from us during a job.
    last_sent: Instant,
    /// Vectors whose producer is connected to a consumer (irqbypass), as
    /// observed so far in the job: their device interrupts may be posted by
    /// the IOMMU, which nothing in L1 sees until an L2 takes them.
    connected: std::collections::HashSet<String>,
    /// Where the kernel's warnings come from; `None` when `/dev/kmsg` could
    /// not be opened (then none are reported).
    kernel_log: Option<KernelLog>,
    /// Warnings logged between jobs, reported with the next job's first step.
    warnings_before: Vec<String>,
}

/// What a step's executor leaves for the step's report, besides its result.
#[derive(Default)]
struct StepOut {
    /// Scenario names for the kernel objects the step may make.
    names: StepNames,
    /// The consumer of an irqfd that was attached: it should have registered.
    irqfd_ok: Option<String>,
    /// virtqueues given a call eventfd: each should have had its producer
    vqs_enabled: Vec<String>,
    interrupts: Vec<VectorCount>,
    l2_report: Option<Box<wire::L2StepReport>>,
}

impl Runner {
    pub fn new(tracer: Option<Tracer>, debug: bool, kernel_log: Option<KernelLog>) -> Runner {
        Runner {
            tracer,
            attrib: Attributor::default(),
            debug,
            acc: Vec::new(),
            last_sent: Instant::now(),
            connected: Default::default(),
            kernel_log,
            warnings_before: Vec::new(),
        }
    }

    /// The kernel warnings logged since the last call, each also said on
    /// the console next to the step it belongs to.
    pub fn new_kernel_warnings(&mut self) -> Vec<String> {
        let warnings = self
            .kernel_log
            .as_mut()
            .map(|k| k.new_warnings())
            .unwrap_or_default();
        for w in &warnings {
            say!("kernel warned: {w}");
        }
        warnings
    }

    fn mark(&mut self) {
        self.acc.clear();
        if let Some(t) = self.tracer.as_mut() {
            t.mark();
        }
    }

    fn poll_trace(&mut self) {
        if let Some(t) = self.tracer.as_mut() {
            let lines = t.drain_lines();
            for l in &lines {
                if self.debug {
                    say!("trace: {}", l.trim());
                }
                if let Some(r) = crate::trace::parse_line(l) {
                    self.acc.push(r);
                }
            }
        }
    }

    /// KVM's injections for a vector's routes: MSIs by route vector, or
    /// for an INTx vector the assertions (`kvm_set_irq` level 1) of its GSIs.
    fn injected_for(&self, intx: bool, vectors: &[u8], gsis: &[u32]) -> u64 {
        if !intx {
            return self.injected(vectors);
        }
        self.acc
            .iter()
            .filter(|r| matches!(r.event, KEvent::SetIrq { gsi, level: 1 } if gsis.contains(&gsi)))
            .count() as u64
    }

    /// For an INTx vector: EOIs of its pins that reached KVM's resampler
    /// (`kvm_ack_irq`), and VFIO INTx unmasks, during the step so far.
    fn level_counts(&self, pins: &[u32]) -> (u64, u64) {
        let acked = self
            .acc
            .iter()
            .filter(|r| matches!(r.event, KEvent::AckIrq { pin } if pins.contains(&pin)))
            .count() as u64;
        let unmasked = self
            .acc
            .iter()
            .filter(|r| r.event == KEvent::IntxUnmask)
            .count() as u64;
        (acked, unmasked)
    }

    /// For an INTx vector: EOIs of its VM-side vectors that AVIC trapped to
    /// KVM during the step so far.
    fn eoi_trapped(&self, vectors: &[u8]) -> u64 {
        self.acc
            .iter()
            .filter(|r| matches!(r.event, KEvent::AvicEoiTrap { vec } if vectors.iter().any(|v| u32::from(*v) == vec)))
            .count() as u64
    }

    fn injected(&self, vectors: &[u8]) -> u64 {
        self.acc
            .iter()
            .filter(|r| matches!(r.event, KEvent::Msi { vec, .. } if vectors.iter().any(|v| u32::from(*v) == vec)))
            .count() as u64
    }

    /// Tell the host a long step is still running (`wire::HEARTBEAT_SECS`).
    fn heartbeat(&mut self, index: usize, send: &mut dyn FnMut(AgentMessage)) {
        if self.last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2) {
            // a heartbeat is progress for the watchdog too (once a second, not per poll)
            crate::watchdog::alive();
            send(AgentMessage::Progress { index });
            self.last_sent = Instant::now();
        }
    }

    /// Run a job, calling `send` with each step report (and progress during
    /// long steps); returns the Done message.
    pub fn run(
        &mut self,
        job: &Job,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Done {
        self.last_sent = Instant::now();
        let mut msi = read_interrupts().map(|t| crate::interrupts::MsiTally::start(&t));
        self.attrib.reset();
        self.connected.clear();
        let mut st = JobState {
            devices: job
                .devices
                .iter()
                .map(|d| (d.name.clone(), d.clone()))
                .collect(),
            ..Default::default()
        };
        say!("job {}: {} steps", job.scenario, job.steps.len());
        // whatever the kernel logged since the last job ended (late work of
        // its teardown, say) goes with this job's first step
        self.warnings_before = self
            .new_kernel_warnings()
            .into_iter()
            .map(|w| format!("before the first step: {w}"))
            .collect();
        let mut failed = false;
        for (index, step) in job.steps.iter().enumerate() {
            if failed {
                break;
            }
            crate::watchdog::alive();
            let rep = self.step(&mut st, index, step, send, recv);
            if let (Some(tally), Some(text)) = (msi.as_mut(), read_interrupts()) {
                tally.sample(&text);
            }
            say!(
                "step {index} {}: {}",
                step.action(),
                rep.error.as_deref().unwrap_or("ok")
            );
            failed = rep.error.is_some();
            send(AgentMessage::Step(rep));
            self.last_sent = Instant::now();
        }
        // cleanup: VMs first, then devices, then the eventfds
        self.mark();
        // a real L2 first: killing its QEMU releases the devices and irqfds
        let l2s = std::mem::take(&mut st.l2s);
        for (name, vm) in l2s {
            say!("cleanup: kill the QEMU of L2 {name}");
            drop(vm);
        }
        let vms = std::mem::take(&mut st.vms);
        for (name, vm) in vms {
            say!("cleanup: destroy {name}");
            vm.close();
        }
        let open = std::mem::take(&mut st.open);
        for (name, dev) in open {
            say!("cleanup: close {name}");
            drop(dev);
        }
        let vdpa = std::mem::take(&mut st.vdpa);
        for (name, dev) in vdpa {
            say!("cleanup: close and delete vDPA device {name}");
            drop(dev);
        }
        st.vectors.clear();
        self.poll_trace();
        let obs = self.attrib.process(&self.acc, &StepNames::default());
        let cleanup_error = (obs.lost > 0).then(|| format!("trace lost {} events", obs.lost));
        let kernel_warnings = self.new_kernel_warnings();
        say!("job {} done", job.scenario);
        Done {
            cleanup: obs.events,
            cleanup_error,
            kernel_warnings,
            l1_msi: msi.map(|mut tally| {
                if let Some(text) = read_interrupts() {
                    tally.sample(&text);
                }
                tally.total()
            }),
        }
    }

    fn step(
        &mut self,
        st: &mut JobState,
        index: usize,
        step: &Step,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> StepReport {
        self.mark();
        let mut out = StepOut::default();
        if let Some(l2) = step.l2() {
            out.names.l2 = Some(l2.to_string());
            out.names.vfio_devices = st
                .devices
                .values()
                .map(|d| (d.bdf.clone(), d.name.clone()))
                .collect();
        }
        let result = match step {
            Step::Bind { .. }
            | Step::EnableVqs { .. }
            | Step::EnableMsi { .. }
            | Step::DisableMsi { .. }
            | Step::EnableMsix { .. }
            | Step::DisableMsix { .. }
            | Step::Mask { .. }
            | Step::Unmask { .. }
            | Step::Unplug { .. }
            | Step::Replug { .. }
            | Step::Unbind { .. }
            | Step::Fire { .. }
            | Step::Signal { .. }
            | Step::EnableIntx { .. }
            | Step::CloseDevice { .. } => self.device_step(st, index, step, &mut out, send, recv),
            Step::CreateVm { .. }
            | Step::Irqfd { .. }
            | Step::IrqfdDeassign { .. }
            | Step::DestroyVm { .. }
            | Step::StartVm { .. }
            | Step::Ipi { .. }
            | Step::IntxUnmask { .. }
            | Step::Route { .. }
            | Step::StopVm { .. } => self.kvm_step(st, index, step, &mut out, send, recv),
            Step::ReloadKvm | Step::PitReinject { .. } => self.inhibit_step(st, step),
            Step::StartL2 { .. }
            | Step::L2Traffic { .. }
            | Step::L2Link { .. }
            | Step::StopL2 { .. }
            | Step::L2Unplug { .. }
            | Step::L2Replug { .. }
            | Step::L2Pause { .. }
            | Step::KillL2 { .. }
            | Step::L2Resume { .. } => self.nested_step(st, index, step, &mut out, send, recv),
            Step::PanicL1 => {
                say!("panicking the kernel through sysrq-c, as the scenario asks");
                let _ = std::fs::write("/proc/sys/kernel/sysrq", "1\n");
                std::fs::write("/proc/sysrq-trigger", "c")
                    .map_err(|e| format!("/proc/sysrq-trigger: {e}"))
            }
        };
        let StepOut {
            names,
            irqfd_ok,
            vqs_enabled,
            interrupts,
            l2_report,
        } = out;
        self.poll_trace();
        let obs = self.attrib.process(&self.acc, &names);
        for ev in &obs.events {
            match ev {
                BypassEvent::Connected {
                    producer, ret: 0, ..
                } => {
                    self.connected.insert(producer.clone());
                }
                BypassEvent::Disconnected { producer, .. } => {
                    self.connected.remove(producer);
                }
                _ => {}
            }
        }
        let mut bypass = obs.events;
        for producer in vqs_enabled {
            let registered = bypass
                .iter()
                .any(|e| matches!(e, BypassEvent::ProducerRegistered { producer: p, .. } if *p == producer));
            if !registered {
                bypass.push(BypassEvent::ProducerNotRegistered { producer });
            }
        }
        if let Some(consumer) = irqfd_ok {
            if obs.consumers_registered == 0 {
                bypass.push(BypassEvent::ConsumerNotRegistered { consumer });
            }
        }
        let mut error = result.err();
        if error.is_none() && obs.lost > 0 {
            error = Some(format!(
                "trace lost {} events: observation incomplete",
                obs.lost
            ));
        }
        let mut kernel_warnings = std::mem::take(&mut self.warnings_before);
        kernel_warnings.extend(self.new_kernel_warnings());
        StepReport {
            index,
            error,
            bypass,
            interrupts,
            kernel_warnings,
            l2: l2_report,
        }
    }
}

/// L1's /proc/interrupts; `None` when it cannot be read.
fn read_interrupts() -> Option<String> {
    std::fs::read_to_string("/proc/interrupts").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_names() {
        assert_eq!(parse_vector("dev0/msi0").unwrap(), ("dev0", "msi", 0));
        assert_eq!(parse_vector("nic/msix12").unwrap(), ("nic", "msix", 12));
        assert!(parse_vector("dev0").is_err());
        assert!(parse_vector("dev0/msi").is_err());
        assert!(parse_vector("/msi0").is_err());
        assert_eq!(parse_vector("dev0/intx0").unwrap(), ("dev0", "intx", 0));
        assert!(parse_vector("dev0/intx").is_err());
        assert_eq!(parse_vector("vdpa0/vq1").unwrap(), ("vdpa0", "vq", 1));
    }
}
