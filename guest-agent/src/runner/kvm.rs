//! KVM steps: VMs, irqfds (with their GSI routes), and the tiny L2 that
//! runs on a VM's vCPU thread (start, stop, IPIs); `route` is in
//! `reroute.rs`.

use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use wire::{AgentMessage, Step, VectorCount};

use super::fire::new_vector;
use super::{parse_vector, JobState, Recv, Runner, StepOut};
use crate::kvm::Vm;
use crate::say;
use crate::sys::errstr;

/// First MSI vector number the agent hands out; one per route, job-wide.
pub(super) const FIRST_VECTOR: u8 = 0x40;

impl Runner {
    /// Executes the KVM steps.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn kvm_step(
        &mut self,
        st: &mut JobState,
        index: usize,
        step: &Step,
        out: &mut StepOut,
        send: &mut dyn FnMut(AgentMessage),
        _recv: &mut Recv<'_>,
    ) -> Result<(), String> {
        match step {
            Step::CreateVm { vm, apic } => {
                if st.vms.iter().any(|(n, _)| n == vm) {
                    Err(format!("VM {vm} already exists"))
                } else {
                    Vm::create(*apic).map(|v| st.vms.push((vm.clone(), v)))
                }
            }
            Step::Irqfd {
                vm,
                vector,
                resample,
                pin,
            } => {
                out.names.consumer = Some(format!("{vm}:{vector}"));
                let r = self.irqfd(st, vm, vector, *resample, *pin);
                if r.is_ok() {
                    out.irqfd_ok = out.names.consumer.clone();
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
                    v.close();
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
                        out.interrupts.push(VectorCount {
                            vector: format!("{vector:#04x}"),
                            raised: sent,
                            signalled: None,
                            host_irq: 0,
                            host_chip: None,
                            injected: 0,
                            delivered: Some(delivered),
                            resampled: None,
                            eoi_trapped: None,
                            route: None,
                            unmasked: None,
                        });
                        Ok(())
                    }
                    Err(e) => Err(format!("{vm}: {e}")),
                }
            }
            Step::StopVm { vm } => st.vm(vm).and_then(|v| {
                let stats = v.running_l2().map(|l| l.stats()).unwrap_or_default();
                let r = v.stop_l2();
                say!("{vm}: L2 stopped ({stats})");
                r.map_err(|e| format!("{vm}: {e}"))
            }),
            Step::IntxUnmask { vm, vector } => self.intx_unmask(st, vm, vector),
            Step::Route {
                vm,
                vector,
                to,
                l2_vector,
            } => self.reroute(st, vm, vector, *to, *l2_vector),
            _ => unreachable!("not a KVM step: {}", step.action()),
        }
    }

    pub(super) fn irqfd(
        &mut self,
        st: &mut JobState,
        vm: &str,
        vector: &str,
        resample: bool,
        pin: Option<u32>,
    ) -> Result<(), String> {
        let (device, kind, _) = parse_vector(vector)?;
        let intx = kind == "intx";
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
                // an INTx vector goes to an IOAPIC pin: the one asked for,
                // else the first one no route of this VM uses
                let pin = match (intx, pin) {
                    (false, _) => None,
                    (true, Some(p)) => Some(p),
                    (true, None) => Some(
                        wire::INTX_PINS
                            .clone()
                            .find(|p| !v.routes().iter().any(|r| r.pin == Some(*p)))
                            .ok_or("no free IOAPIC pin")?,
                    ),
                };
                let r = v.route_for(vector, vec as u8, pin)?;
                st.next_vector += 1;
                r
            }
        };
        if !intx {
            return st.vm(vm)?.irqfd(vector, &fd, route.gsi);
        }
        // the L2 acknowledges the device in its page before the EOI
        let spec = st.model(device)?;
        let page = st.device(device)?.map_bar0_page()?;
        let writes = spec
            .ack
            .iter()
            .map(|w| (w.offset as u16, w.value.for_vector(0)))
            .collect();
        let v = st.vm(vm)?;
        v.add_level_ack(route.vector, page, writes)?;
        if resample {
            v.irqfd_resample(vector, &fd, route.gsi)
        } else {
            v.irqfd(vector, &fd, route.gsi)
        }
    }

    /// VFIO's INTx unmask-by-eventfd, wired to `vm`'s resample eventfd of `vector`.
    pub(super) fn intx_unmask(
        &mut self,
        st: &mut JobState,
        vm: &str,
        vector: &str,
    ) -> Result<(), String> {
        let (device, _, _) = parse_vector(vector)?;
        let fd = st
            .vm(vm)?
            .resamplefds
            .get(vector)
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| format!("{vm} has no resample irqfd on {vector}"))?;
        st.device(device)?.set_intx_unmask_eventfd(fd)
    }
}
