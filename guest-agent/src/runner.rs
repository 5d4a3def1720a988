//! Executes a job's steps and observes what irqbypass and KVM did.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::io::AsRawFd;
use std::thread::sleep;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use wire::{
    AgentMessage, BypassEvent, Done, HostAction, HostMessage, IrqKind, Job, JobDevice, RegWrite,
    Step, StepReport, VectorCount,
};

use crate::attrib::{Attributor, StepNames};
use crate::interrupts::{find_line, normalize_chip, vfio_irq_name};
use crate::kvm::Vm;
use crate::platform::KernelLog;
use crate::say;
use crate::sys::errstr;
use crate::trace::{KEvent, TraceRecord, Tracer};
use crate::vdpa::VdpaDevice;
use crate::vfio::{bind_vfio_pci, dev_dir, enable_one_vf, unbind_vfio_pci, SriovPf, VfioDevice};

/// First MSI vector number the agent hands out; one per route, job-wide.
const FIRST_VECTOR: u8 = 0x40;
/// Reads the host's next message, waiting at most the given time.
pub type Recv<'a> = dyn FnMut(Duration) -> Result<Option<HostMessage>, String> + 'a;

/// Longest the agent waits for a hot-plugged device to show up in L1.
const REPLUG_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one raised interrupt may take to be accounted.
const FIRE_TIMEOUT: Duration = Duration::from_secs(2);

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
    let (kind, idx) = if let Some(i) = v.strip_prefix("msix") {
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

/// Where a `fire`, `signal` or `unmask` step's interrupts come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
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

/// Run a model's register writes for vector `n`.
fn write_ops(dev: &VfioDevice, ops: &[RegWrite], n: u32) -> Result<(), String> {
    for op in ops {
        dev.bar0_write32(op.offset, op.value.for_vector(n))?;
    }
    Ok(())
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
            drop(vm);
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
        let mut names = StepNames::default();
        let mut irqfd_ok = None;
        // virtqueues given a call eventfd: each should have had its producer
        let mut vqs_enabled: Vec<String> = Vec::new();
        let mut interrupts = Vec::new();
        let mut l2_report = None;
        if let Some(l2) = step.l2() {
            names.l2 = Some(l2.to_string());
            names.vfio_devices = st
                .devices
                .values()
                .map(|d| (d.bdf.clone(), d.name.clone()))
                .collect();
        }
        let result = match step {
            Step::Bind { device } => self.bind(st, device),
            Step::EnableVqs { device, vectors } => {
                let want = vectors.numbers();
                names.producers = want.iter().map(|n| format!("{device}/vq{n}")).collect();
                let r = self.enable_vqs(st, device, &want);
                if r.is_ok() {
                    vqs_enabled = names.producers.clone();
                }
                r
            }
            Step::EnableMsi { device, vectors } => {
                names.producers = (0..*vectors).map(|i| format!("{device}/msi{i}")).collect();
                self.enable_msi(st, device, *vectors)
            }
            Step::DisableMsi { device } => {
                let r = st.device(device).and_then(|d| d.set_msi(&[]));
                st.wired.remove(device);
                r
            }
            Step::EnableMsix { device, vectors } => {
                let want = vectors.numbers();
                let had = st.wired.get(device).cloned().unwrap_or_default();
                if let Ok(spec) = st.model(device) {
                    let m = st.devices[device].model;
                    names.producers = want
                        .iter()
                        .filter(|n| !had.contains(n) && **n < spec.vectors)
                        .map(|n| m.vector_name(device, *n))
                        .collect();
                }
                self.enable_msix(st, device, &want)
            }
            Step::DisableMsix { device } => {
                let r = st.device(device).and_then(|d| d.set_msix(0, &[]));
                st.wired.remove(device);
                r
            }
            Step::Mask { vector } => self.mask(st, vector),
            Step::Unmask { vector } => {
                let pending = st.pending.contains(vector);
                match self.fire(st, vector, u32::from(pending), Source::Unmask, index, send) {
                    Ok(c) => {
                        interrupts.push(c);
                        st.masked.remove(vector);
                        st.pending.remove(vector);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Step::Unplug { device } => self.unplug(st, index, device, send, recv),
            Step::Replug { device } => self.replug(st, index, device, send, recv),
            Step::Unbind { device } => {
                if st.is_open(device) {
                    Err(format!("device {device} is open: close-device first"))
                } else {
                    st.bdf(device).and_then(|bdf| unbind_vfio_pci(&bdf))
                }
            }
            Step::CreateVm { vm } => {
                if st.vms.iter().any(|(n, _)| n == vm) {
                    Err(format!("VM {vm} already exists"))
                } else {
                    Vm::create().map(|v| st.vms.push((vm.clone(), v)))
                }
            }
            Step::Irqfd { vm, vector } => {
                names.consumer = Some(format!("{vm}:{vector}"));
                let r = self.irqfd(st, vm, vector);
                if r.is_ok() {
                    irqfd_ok = names.consumer.clone();
                }
                r
            }
            Step::IrqfdDeassign { vm, vector } => {
                match st.vectors.get(vector).map(|v| &v.eventfd) {
                    None => Err(format!("vector {vector} has no eventfd (no enable-msi?)")),
                    Some(fd) => {
                        let fd = fd.try_clone().map_err(|e| errstr("dup eventfd", &e));
                        fd.and_then(|fd| st.vm(vm)?.irqfd_deassign(vector, &fd))
                    }
                }
            }
            Step::Fire { vector, count } => {
                match self.fire(st, vector, *count, Source::Device, index, send) {
                    Ok(c) => {
                        if st.masked.contains(vector) {
                            st.pending.insert(vector.clone());
                        }
                        interrupts.push(c);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Step::Signal { vector, count } => {
                match self.fire(st, vector, *count, Source::Eventfd, index, send) {
                    Ok(c) => {
                        interrupts.push(c);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Step::CloseDevice { device } => {
                if let Some(i) = st.open.iter().position(|(n, _)| n == device) {
                    drop(st.open.remove(i));
                    st.forget_device(device);
                    Ok(())
                } else if let Some(i) = st.vdpa.iter().position(|(n, _)| n == device) {
                    drop(st.vdpa.remove(i));
                    st.forget_device(device);
                    Ok(())
                } else {
                    Err(format!("device {device} is not open"))
                }
            }
            Step::PanicL1 => {
                say!("panicking the kernel through sysrq-c, as the scenario asks");
                let _ = std::fs::write("/proc/sys/kernel/sysrq", "1\n");
                std::fs::write("/proc/sysrq-trigger", "c")
                    .map_err(|e| format!("/proc/sysrq-trigger: {e}"))
            }
            Step::DestroyVm { vm } => match st.vms.iter().position(|(n, _)| n == vm) {
                Some(i) => {
                    let (name, mut v) = st.vms.remove(i);
                    // stop a running L2 first, so that its errors are this step's
                    let r = match v.running_l2().map(|l| l.stats()) {
                        Some(stats) => {
                            let r = v
                                .stop_l2()
                                .map_err(|e| format!("stopping the L2 of {name}: {e}"));
                            say!("{name}: L2 stopped ({stats})");
                            r
                        }
                        None => Ok(()),
                    };
                    drop(v);
                    r
                }
                None => Err(format!("no VM named {vm}")),
            },
            Step::StartVm {
                vm,
                mode,
                period_ms,
            } => {
                let period = period_ms.unwrap_or(wire::DEFAULT_ALTERNATE_MS);
                let last_sent = &mut self.last_sent;
                let mut tick = || {
                    if last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2)
                    {
                        send(AgentMessage::Progress { index });
                        *last_sent = Instant::now();
                    }
                };
                let t0 = Instant::now();
                let r = st.vm(vm).and_then(|v| v.start_l2(*mode, period, &mut tick));
                if r.is_ok() {
                    say!(
                        "{vm}: L2 {} after {} us",
                        mode.name(),
                        t0.elapsed().as_micros()
                    );
                }
                r.map_err(|e| format!("{vm}: {e}"))
            }
            Step::Ipi { vm, vector, count } => {
                let last_sent = &mut self.last_sent;
                let mut tick = || {
                    if last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2)
                    {
                        send(AgentMessage::Progress { index });
                        *last_sent = Instant::now();
                    }
                };
                let t0 = Instant::now();
                match st.vm(vm).and_then(|v| v.ipi(*vector, *count, &mut tick)) {
                    Ok((sent, delivered)) => {
                        say!(
                            "{vm}: ipi {vector:#x}: sent {sent} of {count}, delivered in L2 {delivered} in {} us",
                            t0.elapsed().as_micros()
                        );
                        interrupts.push(VectorCount {
                            vector: format!("{vector:#04x}"),
                            raised: sent,
                            signalled: None,
                            host_irq: 0,
                            host_chip: None,
                            injected: 0,
                            delivered: Some(delivered),
                        });
                        Ok(())
                    }
                    Err(e) => Err(format!("{vm}: {e}")),
                }
            }
            Step::StartL2 {
                l2,
                devices,
                queues,
                append,
                hotplug,
            } => match self.start_l2(
                st,
                index,
                l2,
                devices,
                *queues,
                append.as_deref(),
                *hotplug,
                send,
            ) {
                Ok(r) => {
                    l2_report = Some(Box::new(r));
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Step::L2Traffic {
                l2,
                from,
                to,
                frames,
            } => match self.l2_traffic(st, index, l2, from, to, *frames, send, recv) {
                Ok(r) => {
                    l2_report = Some(Box::new(r));
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Step::L2Unplug { .. }
            | Step::L2Replug { .. }
            | Step::L2Pause { .. }
            | Step::L2Resume { .. } => {
                let last_sent = &mut self.last_sent;
                let mut tick = || {
                    if last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2)
                    {
                        crate::watchdog::alive();
                        send(AgentMessage::Progress { index });
                        *last_sent = Instant::now();
                    }
                };
                crate::l2ctl::control(&mut st.l2s, step, &mut tick)
                    .map(|r| l2_report = r.map(Box::new))
            }
            Step::StopL2 { l2 } => match st.l2s.iter().position(|(n, _)| n == l2) {
                None => Err(format!("no running L2 named {l2}")),
                Some(i) => {
                    let (_, vm) = st.l2s.remove(i);
                    let t0 = Instant::now();
                    let last_sent = &mut self.last_sent;
                    let mut tick = || {
                        if last_sent.elapsed()
                            >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2)
                        {
                            send(AgentMessage::Progress { index });
                            *last_sent = Instant::now();
                        }
                    };
                    let r = vm.stop(&mut tick).map_err(|e| format!("{l2}: {e}"));
                    say!(
                        "{l2}: L2 powered off, its QEMU gone after {} ms",
                        t0.elapsed().as_millis()
                    );
                    r
                }
            },
            Step::StopVm { vm } => st.vm(vm).and_then(|v| {
                let stats = v.running_l2().map(|l| l.stats()).unwrap_or_default();
                let r = v.stop_l2();
                say!("{vm}: L2 stopped ({stats})");
                r.map_err(|e| format!("{vm}: {e}"))
            }),
        };
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

    #[allow(clippy::too_many_arguments)]
    fn start_l2(
        &mut self,
        st: &mut JobState,
        index: usize,
        l2: &str,
        devices: &[String],
        queues: u32,
        append: Option<&str>,
        hotplug: bool,
        send: &mut dyn FnMut(AgentMessage),
    ) -> Result<wire::L2StepReport, String> {
        if st.l2s.iter().any(|(n, _)| n == l2) {
            return Err(format!("L2 {l2} is already running"));
        }
        let mut assigned = Vec::new();
        for d in devices {
            if st.is_open(d) {
                return Err(format!(
                    "device {d} is open in the agent: close-device before giving it to an L2"
                ));
            }
            let bdf = st.bdf(d)?;
            bind_vfio_pci(&bdf)?;
            assigned.push((d.clone(), bdf));
        }
        let last_sent = &mut self.last_sent;
        let mut tick = || {
            if last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2) {
                crate::watchdog::alive();
                send(AgentMessage::Progress { index });
                *last_sent = Instant::now();
            }
        };
        let (vm, ready, took) =
            crate::nested::L2Linux::start(l2, &assigned, queues, append, hotplug, &mut tick)
                .map_err(|e| format!("{l2}: {e}"))?;
        let wire::L2Message::Ready {
            uptime_ms, nics, ..
        } = ready
        else {
            unreachable!("start returns ready")
        };
        say!(
            "{l2}: L2 ready {} ms after its QEMU started (L2 uptime {uptime_ms} ms): {}",
            took.as_millis(),
            nics.iter()
                .map(|n| format!(
                    "{} {} {} queues {} carrier {}",
                    n.bdf, n.ifname, n.driver, n.queues, n.carrier
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        // L2 addresses become scenario device names
        let nics = nics
            .into_iter()
            .map(|mut n| {
                if let Some((name, ..)) = vm.devices.iter().find(|(_, _, b)| *b == n.bdf) {
                    n.bdf = name.clone();
                }
                n
            })
            .collect();
        st.l2s.push((l2.to_string(), vm));
        Ok(wire::L2StepReport {
            boot_ms: Some(took.as_millis() as u64),
            l2_uptime_ms: Some(uptime_ms),
            nics,
            ..Default::default()
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn l2_traffic(
        &mut self,
        st: &mut JobState,
        index: usize,
        l2: &str,
        from: &str,
        to: &str,
        frames: u32,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Result<wire::L2StepReport, String> {
        let posted_before =
            self.host_action(index, HostAction::IommuPosted, send, recv, &mut || {})?;
        let (_, vm) = st
            .l2s
            .iter_mut()
            .find(|(n, _)| n == l2)
            .ok_or_else(|| format!("no running L2 named {l2}"))?;
        let l2_addr = |d: &str| {
            vm.devices
                .iter()
                .find(|(n, ..)| n == d)
                .map(|(_, _, b)| b.clone())
                .ok_or_else(|| format!("device {d} is not in L2 {l2}"))
        };
        let (from_l2, to_l2) = (l2_addr(from)?, l2_addr(to)?);
        let devices = vm.devices.clone();
        let l1_before = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
        let last_sent = &mut self.last_sent;
        let mut tick = || {
            if last_sent.elapsed() >= Duration::from_millis(wire::HEARTBEAT_SECS * 1000 / 2) {
                crate::watchdog::alive();
                send(AgentMessage::Progress { index });
                *last_sent = Instant::now();
            }
        };
        let cmd = wire::L2Command::Traffic {
            from: from_l2,
            to: to_l2,
            frames,
        };
        let answer = vm
            .command(l2, &cmd, &mut tick)
            .map_err(|e| format!("{l2}: {e}"))?;
        let l1_after = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
        let posted_after =
            self.host_action(index, HostAction::IommuPosted, send, recv, &mut || {})?;
        let (sent, received, before, after) = match answer {
            wire::L2Message::Traffic {
                sent,
                received,
                before,
                after,
            } => (sent, received, before, after),
            wire::L2Message::Failed { message } => return Err(format!("{l2}: {message}")),
            other => return Err(format!("{l2} answered {other:?}")),
        };
        self.poll_trace();
        let injected = self
            .acc
            .iter()
            .filter(|r| matches!(r.event, KEvent::Msi { .. }))
            .count() as u64;
        let l2_deltas = crate::l2linux::deltas(&before, &after);
        let mut vectors = Vec::new();
        for (name, l1_bdf, l2_bdf) in &devices {
            let model = st
                .devices
                .get(name)
                .map(|d| d.model)
                .ok_or_else(|| format!("unknown device {name}"))?;
            for n in 0..model.vectors() {
                let line = vfio_irq_name("msix", n, l1_bdf);
                let b = find_line(&l1_before, &line).map(|l| l.count).unwrap_or(0);
                let a = find_line(&l1_after, &line);
                let l2 = l2_deltas.get(&(l2_bdf.clone(), n));
                if a.is_none() && l2.is_none() {
                    continue; // a vector neither L1 nor L2 has wired
                }
                let action = l2.map(|(act, _)| {
                    act.split_once('-')
                        .map(|(_, q)| q.to_string())
                        .unwrap_or_default()
                });
                vectors.push(wire::L2VectorCount {
                    vector: model.vector_name(name, n),
                    l2_action: action.unwrap_or_default(),
                    host_irq: a.as_ref().map(|l| l.count.saturating_sub(b)).unwrap_or(0),
                    host_chip: a.map(|l| normalize_chip(&l.chip)),
                    delivered: l2.map(|(_, c)| *c).unwrap_or(0),
                });
            }
        }
        say!(
            "{l2}: {sent} frames {from} -> {to}, {received} received; {}",
            vectors
                .iter()
                .map(|v| format!("{} L1 {} L2 {}", v.vector, v.host_irq, v.delivered))
                .collect::<Vec<_>>()
                .join(", ")
        );
        say!("{l2}: KVM injected {injected} MSIs into the L2 during the step");
        let posted = posted_before
            .zip(posted_after)
            .map(|(b, a)| a.saturating_sub(b));
        Ok(wire::L2StepReport {
            posted,
            injected: Some(injected),
            frames_sent: Some(sent),
            frames_received: Some(received),
            vectors,
            ..Default::default()
        })
    }

    fn bind(&mut self, st: &mut JobState, device: &str) -> Result<(), String> {
        let d = st
            .devices
            .get(device)
            .ok_or_else(|| format!("unknown device {device} (not in the job's devices)"))?
            .clone();
        if st.is_open(device) {
            return Err(format!("device {device} is already open"));
        }
        if let Some(spec) = d.model.vdpa() {
            let dev = VdpaDevice::open(device, &d.bdf, spec)?;
            say!(
                "{device}: vDPA device on {}, open through vhost-vdpa",
                if d.bdf.is_empty() {
                    d.model.label().to_string()
                } else {
                    d.bdf.clone()
                }
            );
            st.vdpa.push((device.to_string(), dev));
            return Ok(());
        }
        let spec = d.model.spec();
        let dev = if spec.sriov_vf {
            // the job's address is the PF's: open it, enable VF 0, open that
            bind_vfio_pci(&d.bdf)?;
            let pf = VfioDevice::open(&d.bdf)?;
            write_ops(&pf, spec.pf_setup, 0).map_err(|e| format!("{device} PF setup: {e}"))?;
            let pf = Box::new(SriovPf {
                bdf: d.bdf.clone(),
                dev: pf,
            });
            let (vf_bdf, token) = enable_one_vf(&pf.dev)?;
            bind_vfio_pci(&vf_bdf)?;
            let mut vf = VfioDevice::open_with_token(&vf_bdf, Some(&token))?;
            say!("{device}: VF {vf_bdf} of {}", d.bdf);
            vf.pf = Some(pf);
            vf
        } else {
            bind_vfio_pci(&d.bdf)?;
            VfioDevice::open(&d.bdf)?
        };
        // VFIO reset the device on open: set it up for the scenario now
        write_ops(&dev, d.model.spec().setup, 0).map_err(|e| format!("{device} setup: {e}"))?;
        say!(
            "{device} ({}) open{}",
            dev.bdf,
            if dev.noiommu { " (no-IOMMU)" } else { "" }
        );
        st.open.push((device.to_string(), dev));
        Ok(())
    }

    fn enable_msi(&mut self, st: &mut JobState, device: &str, n: u32) -> Result<(), String> {
        st.device(device)?;
        if st.model(device)?.irq != IrqKind::Msi {
            return Err(format!("{device} has no MSI: use enable-msix"));
        }
        if n == 0 {
            return Err("enable-msi with 0 vectors".into());
        }
        // a vector keeps its eventfd across enable/disable, and an irqfd step
        // may have created it first (consumer before producer)
        for i in 0..n {
            let name = format!("{device}/msi{i}");
            if let std::collections::hash_map::Entry::Vacant(e) = st.vectors.entry(name) {
                e.insert(new_vector()?);
            }
        }
        let raw: Vec<i32> = (0..n)
            .map(|i| st.vectors[&format!("{device}/msi{i}")].eventfd.as_raw_fd())
            .collect();
        st.device(device)?.set_msi(&raw)?;
        st.wired.insert(device.to_string(), (0..n).collect());
        Ok(())
    }

    /// Give the vDPA device's virtqueues in `want` their call eventfds, then DRIVER_OK.
    fn enable_vqs(&mut self, st: &mut JobState, device: &str, want: &[u32]) -> Result<(), String> {
        st.vdpa(device)?;
        let model = st.devices[device].model;
        if want.is_empty() {
            return Err("enable-vqs with no virtqueues".into());
        }
        for n in want {
            if let std::collections::hash_map::Entry::Vacant(e) =
                st.vectors.entry(model.vector_name(device, *n))
            {
                e.insert(new_vector()?);
            }
        }
        let wired: Vec<(u32, i32)> = want
            .iter()
            .map(|n| {
                (
                    *n,
                    st.vectors[&model.vector_name(device, *n)]
                        .eventfd
                        .as_raw_fd(),
                )
            })
            .collect();
        let dev = st
            .vdpa
            .iter_mut()
            .find(|(n, _)| n == device)
            .map(|(_, d)| d)
            .ok_or_else(|| format!("device {device} is not open"))?;
        dev.enable(&wired)?;
        st.wired
            .insert(device.to_string(), want.iter().copied().collect());
        Ok(())
    }

    /// Wire exactly `want` of an MSI-X device's vectors: enable MSI-X with
    /// them, or, while enabled, give added vectors an eventfd and take it
    /// from dropped ones, one vector at a time, leaving kept ones alone.
    fn enable_msix(&mut self, st: &mut JobState, device: &str, want: &[u32]) -> Result<(), String> {
        st.device(device)?;
        let spec = st.model(device)?;
        let model = st.devices[device].model;
        if spec.irq != IrqKind::Msix {
            return Err(format!("{device} has no MSI-X: use enable-msi"));
        }
        if let Some(n) = want.iter().find(|n| **n >= spec.vectors) {
            return Err(format!(
                "{device} has no MSI-X vector {n} (it has {})",
                spec.vectors
            ));
        }
        if want.is_empty() {
            return Err("enable-msix with no vectors".into());
        }
        for n in want {
            if let std::collections::hash_map::Entry::Vacant(e) =
                st.vectors.entry(model.vector_name(device, *n))
            {
                e.insert(new_vector()?);
            }
        }
        let fd = |st: &JobState, n: u32| {
            st.vectors[&model.vector_name(device, n)]
                .eventfd
                .as_raw_fd()
        };
        let want_set: BTreeSet<u32> = want.iter().copied().collect();
        match st.wired.get(device).cloned() {
            None => {
                let top = *want.iter().max().expect("not empty");
                let fds: Vec<i32> = (0..=top)
                    .map(|n| if want_set.contains(&n) { fd(st, n) } else { -1 })
                    .collect();
                st.device(device)?.set_msix(0, &fds)?;
            }
            Some(had) => {
                for n in want_set.difference(&had) {
                    st.device(device)?
                        .set_msix(*n, &[fd(st, *n)])
                        .map_err(|e| format!("adding msix{n}: {e}"))?;
                }
                for n in had.difference(&want_set) {
                    st.device(device)?
                        .set_msix(*n, &[-1])
                        .map_err(|e| format!("dropping msix{n}: {e}"))?;
                }
            }
        }
        st.wired.insert(device.to_string(), want_set);
        Ok(())
    }

    /// Ask the host to run `action` and wait for it to be done, calling
    /// `meanwhile` about every 20 ms (and sending heartbeats) until then.
    fn host_action(
        &mut self,
        index: usize,
        action: HostAction,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<Option<u64>, String> {
        send(AgentMessage::HostAction { index, action });
        self.last_sent = Instant::now();
        loop {
            meanwhile();
            match recv(Duration::from_millis(20))? {
                None => self.heartbeat(index, send),
                Some(HostMessage::HostActionDone {
                    error: None,
                    posted,
                }) => return Ok(posted),
                Some(HostMessage::HostActionDone { error: Some(e), .. }) => return Err(e),
                Some(other) => return Err(format!("host sent {other:?} while a host action ran")),
            }
        }
    }

    fn unplug(
        &mut self,
        st: &mut JobState,
        index: usize,
        device: &str,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Result<(), String> {
        let bdf = st.bdf(device)?;
        let mut released = false;
        let action = HostAction::DeviceDel {
            device: device.to_string(),
        };
        self.host_action(index, action, send, recv, &mut || {
            // vfio-pci's remove waits for us: close the device when asked
            if let Some(pos) = st
                .open
                .iter()
                .position(|(n, d)| n == device && d.release_requested())
            {
                drop(st.open.remove(pos));
                st.forget_device(device);
                released = true;
            }
        })?;
        if released {
            say!("{device}: released to vfio-pci's remove");
        }
        if dev_dir(&bdf).exists() {
            return Err(format!("{device} ({bdf}) still in L1 after DEVICE_DELETED"));
        }
        // the host IRQ lines go with the device
        let lines = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
        if let Some(l) = lines.lines().find(|l| l.contains(&format!("({bdf})"))) {
            return Err(format!(
                "{device} is gone but L1 still has its IRQ line: {}",
                l.trim()
            ));
        }
        Ok(())
    }

    fn replug(
        &mut self,
        st: &mut JobState,
        index: usize,
        device: &str,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Result<(), String> {
        let bdf = st.bdf(device)?;
        self.host_action(
            index,
            HostAction::DeviceAdd {
                device: device.to_string(),
            },
            send,
            recv,
            &mut || {},
        )?;
        let t0 = Instant::now();
        let dir = dev_dir(&bdf);
        // L1 creates the device before it assigns its BARs; opening it
        // before that fails (pci_enable_device), so wait for BAR0 too
        let bar0_assigned = || {
            std::fs::read_to_string(dir.join("resource"))
                .ok()
                .and_then(|t| {
                    let start = t
                        .lines()
                        .next()?
                        .split_whitespace()
                        .next()?
                        .trim_start_matches("0x")
                        .to_owned();
                    u64::from_str_radix(&start, 16).ok()
                })
                .is_some_and(|start| start != 0)
        };
        while !bar0_assigned() {
            if t0.elapsed() > REPLUG_TIMEOUT {
                return Err(format!(
                    "{device} ({bdf}) did not appear in L1 within {REPLUG_TIMEOUT:?} of device_add"
                ));
            }
            self.heartbeat(index, send);
            sleep(Duration::from_millis(20));
        }
        say!(
            "{device} ({bdf}) back after {} ms",
            t0.elapsed().as_millis()
        );
        Ok(())
    }

    fn mask(&mut self, st: &mut JobState, vector: &str) -> Result<(), String> {
        let (device, _, idx) = parse_vector(vector)?;
        let spec = st.model(device)?;
        if spec.mask.is_empty() {
            return Err(format!("{device} ({}) cannot mask a vector", spec.label));
        }
        write_ops(st.device(device)?, spec.mask, idx)?;
        st.masked.insert(vector.to_string());
        Ok(())
    }

    fn irqfd(&mut self, st: &mut JobState, vm: &str, vector: &str) -> Result<(), String> {
        let (device, _, _) = parse_vector(vector)?;
        if !st.is_open(device) {
            return Err(format!("device {device} is not open (no bind step?)"));
        }
        st.vm(vm)?;
        if !st.vectors.contains_key(vector) {
            // consumer before producer: the eventfd exists before VFIO uses it
            st.vectors.insert(vector.to_string(), new_vector()?);
        }
        let fd = st.vectors[vector]
            .eventfd
            .try_clone()
            .map_err(|e| errstr("dup eventfd", &e))?;
        let next = st.next_vector;
        let v = st.vm(vm)?;
        let existing = v.routes().iter().find(|r| r.source == vector).cloned();
        let route = match existing {
            Some(r) => r,
            None => {
                let vec = u16::from(FIRST_VECTOR) + next;
                if vec > 0xfe {
                    return Err("out of MSI vectors for routes".into());
                }
                let r = v.route_for(vector, vec as u8)?;
                st.next_vector += 1;
                r
            }
        };
        st.vm(vm)?.irqfd(vector, &fd, route.gsi)
    }

    fn fire(
        &mut self,
        st: &mut JobState,
        vector: &str,
        count: u32,
        source: Source,
        index: usize,
        send: &mut dyn FnMut(AgentMessage),
    ) -> Result<VectorCount, String> {
        let (device, kind, idx) = parse_vector(vector)?;
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
        for (_, vm) in &st.vms {
            if vm.irqfds.contains_key(vector) {
                routes.extend(
                    vm.routes()
                        .iter()
                        .filter(|r| r.source == vector)
                        .map(|r| r.vector),
                );
            }
        }
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
                ));
            }
        }
        let delivered =
            |l2s: &[(String, std::sync::Arc<crate::l2::GuestMem>, u8, u32)]| -> Vec<u64> {
                l2s.iter()
                    .map(|(_, m, v, base)| crate::l2::delta(*base, m.count(*v)))
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
        let ack = |dev: Option<Target>| match dev {
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
                    if host > i || self.injected(&routes) > i {
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
                if ((posted || self.injected(&routes) >= want) && all_in)
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
            injected: self.injected(&routes),
            delivered,
        })
    }
}

fn new_vector() -> Result<Vector, String> {
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
        assert!(parse_vector("dev0/intx0").is_err());
        assert_eq!(parse_vector("vdpa0/vq1").unwrap(), ("vdpa0", "vq", 1));
    }
}
