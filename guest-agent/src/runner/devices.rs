//! Device steps: bind (vfio-pci or vhost-vdpa), MSI, MSI-X and virtqueue
//! interrupts, masks, fire and signal (through `fire.rs`), close, unbind.

use std::collections::BTreeSet;
use std::os::unix::io::AsRawFd;

use wire::{AgentMessage, IrqKind, RegWrite, Step};

use super::fire::{new_vector, Source};
use super::{parse_vector, JobState, Recv, Runner, StepOut};
use crate::say;
use crate::vdpa::VdpaDevice;
use crate::vfio::{bind_vfio_pci, enable_one_vf, unbind_vfio_pci, SriovPf, VfioDevice};

/// Run a model's register writes for vector `n`.
pub(super) fn write_ops(dev: &VfioDevice, ops: &[RegWrite], n: u32) -> Result<(), String> {
    for op in ops {
        dev.bar0_write32(op.offset, op.value.for_vector(n))?;
    }
    Ok(())
}

impl Runner {
    /// Executes the device steps.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn device_step(
        &mut self,
        st: &mut JobState,
        index: usize,
        step: &Step,
        out: &mut StepOut,
        send: &mut dyn FnMut(AgentMessage),
        recv: &mut Recv<'_>,
    ) -> Result<(), String> {
        match step {
            Step::Bind { device } => self.bind(st, device),
            Step::EnableVqs { device, vectors } => {
                let want = vectors.numbers();
                out.names.producers = want.iter().map(|n| format!("{device}/vq{n}")).collect();
                let r = self.enable_vqs(st, device, &want);
                if r.is_ok() {
                    out.vqs_enabled = out.names.producers.clone();
                }
                r
            }
            Step::EnableMsi { device, vectors } => {
                out.names.producers = (0..*vectors).map(|i| format!("{device}/msi{i}")).collect();
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
                    out.names.producers = want
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
                        out.interrupts.push(c);
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
            Step::Fire { vector, count } => {
                match self.fire(st, vector, *count, Source::Device, index, send) {
                    Ok(c) => {
                        if st.masked.contains(vector) {
                            st.pending.insert(vector.clone());
                        }
                        out.interrupts.push(c);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Step::Signal { vector, count } => {
                match self.fire(st, vector, *count, Source::Eventfd, index, send) {
                    Ok(c) => {
                        out.interrupts.push(c);
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
            Step::EnableIntx { device } => self.enable_intx(st, device),
            _ => unreachable!("not a device step: {}", step.action()),
        }
    }

    pub(super) fn bind(&mut self, st: &mut JobState, device: &str) -> Result<(), String> {
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
        if spec.intx {
            // edu has no reset: a level line an earlier scenario left
            // asserted (nobody acknowledged it) is de-asserted here
            write_ops(&dev, spec.ack, 0).map_err(|e| format!("{device} ack: {e}"))?;
        }
        say!(
            "{device} ({}) open{}",
            dev.bdf,
            if dev.noiommu { " (no-IOMMU)" } else { "" }
        );
        st.open.push((device.to_string(), dev));
        Ok(())
    }

    /// The INTx trigger eventfd (the vector's, made here unless an irqfd made it first).
    pub(super) fn enable_intx(&mut self, st: &mut JobState, device: &str) -> Result<(), String> {
        st.device(device)?;
        if !st.model(device)?.intx {
            return Err(format!("{device} cannot raise INTx"));
        }
        let name = wire::intx_vector(device);
        if let std::collections::hash_map::Entry::Vacant(e) = st.vectors.entry(name.clone()) {
            e.insert(new_vector()?);
        }
        st.device(device)?
            .set_intx(Some(st.vectors[&name].eventfd.as_raw_fd()))?;
        st.wired
            .insert(device.to_string(), [0].into_iter().collect());
        Ok(())
    }

    pub(super) fn enable_msi(
        &mut self,
        st: &mut JobState,
        device: &str,
        n: u32,
    ) -> Result<(), String> {
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
    pub(super) fn enable_vqs(
        &mut self,
        st: &mut JobState,
        device: &str,
        want: &[u32],
    ) -> Result<(), String> {
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
    pub(super) fn enable_msix(
        &mut self,
        st: &mut JobState,
        device: &str,
        want: &[u32],
    ) -> Result<(), String> {
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

    pub(super) fn mask(&mut self, st: &mut JobState, vector: &str) -> Result<(), String> {
        let (device, _, idx) = parse_vector(vector)?;
        let spec = st.model(device)?;
        if spec.mask.is_empty() {
            return Err(format!("{device} ({}) cannot mask a vector", spec.label));
        }
        write_ops(st.device(device)?, spec.mask, idx)?;
        st.masked.insert(vector.to_string());
        Ok(())
    }
}
