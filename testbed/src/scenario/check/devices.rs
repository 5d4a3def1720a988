//! Device steps: binding to vfio-pci (or opening a vDPA device), enabling
//! MSI, MSI-X or virtqueue interrupts, masks, firing, hot-plug.

use std::collections::BTreeSet;

use wire::{IrqKind, Step};

use super::{enable_action, irq_kind_name, vector_range, Checker, DevState};
use crate::scenario::{ScenarioError, MAX_FIRE_COUNT};

impl Checker<'_, '_> {
    /// Bind, unplug, replug, unbind, enable/disable interrupts, mask, unmask, fire, signal, close-device.
    pub(super) fn device_step(&mut self, k: usize, step: &Step) -> Result<(), ScenarioError> {
        match step {
            Step::Bind { device } => {
                if let Some((l2, _)) = self
                    .linux_l2s
                    .iter()
                    .find(|(_, (_, ds))| ds.contains(device))
                {
                    return Err(self.err(
                        "device",
                        format!("{device} is assigned to the running L2 {l2}: stop-l2 first"),
                    ));
                }
                let info = self.device("device", device)?;
                match info.state {
                    DevState::Declared | DevState::Closed { .. } | DevState::Unbound { .. } => {}
                    DevState::Unplugged { step } => {
                        return Err(self.err(
                            "device",
                            format!("{device} was unplugged at step {step}: replug it first"),
                        ))
                    }
                    DevState::Bound | DevState::Enabled { .. } => {
                        return Err(
                            self.err("device", format!("{device} is already bound and open"))
                        )
                    }
                }
                self.set_dev(device, DevState::Bound);
            }
            Step::Unplug { device } => {
                let info = self.device("device", device)?;
                if info.model.spec().sriov_vf {
                    return Err(self.err(
                        "device",
                        format!("{device} is a virtual function the agent makes: unplug its PF instead (not supported yet)"),
                    ));
                }
                if info.model.vdpa().is_some() {
                    return Err(self.err(
                        "device",
                        format!(
                            "{device} ({}) is a vDPA device: unplug is for VFIO devices",
                            info.model.label()
                        ),
                    ));
                }
                if let DevState::Unplugged { step } = info.state {
                    return Err(self.err(
                        "device",
                        format!("{device} already unplugged at step {step}"),
                    ));
                }
                if self.bdfs.values().any(|d| d == device) {
                    return Err(self.err(
                        "device",
                        format!("{device} has a fixed bdf on the root bus, which cannot hot-plug: drop its bdf"),
                    ));
                }
                self.set_dev(device, DevState::Unplugged { step: k });
            }
            Step::Replug { device } => {
                let info = self.device("device", device)?;
                if !matches!(info.state, DevState::Unplugged { .. }) {
                    return Err(self.err(
                        "device",
                        format!("{device} is not unplugged: no unplug {device} in force"),
                    ));
                }
                self.set_dev(device, DevState::Declared);
            }
            Step::Unbind { device } => {
                let info = self.device("device", device)?;
                if info.model.spec().sriov_vf {
                    return Err(self.err(
                        "device",
                        format!("{device} is a virtual function: closing it disables SR-IOV, so it has nothing to unbind"),
                    ));
                }
                if info.model.vdpa().is_some() {
                    return Err(self.err(
                        "device",
                        format!(
                            "{device} ({}) is a vDPA device: close-device deletes it, nothing stays bound",
                            info.model.label()
                        ),
                    ));
                }
                match info.state {
                    DevState::Closed { .. } => {}
                    DevState::Declared => return Err(self.err("device", format!("{device} is not bound"))),
                    DevState::Unbound { step } => {
                        return Err(self.err("device", format!("{device} already unbound at step {step}")))
                    }
                    DevState::Unplugged { step } => {
                        return Err(self.err("device", format!("{device} was unplugged at step {step}")))
                    }
                    DevState::Bound | DevState::Enabled { .. } => {
                        return Err(self.err(
                            "device",
                            format!(
                                "{device} is open: close-device first (vfio-pci would wait for the agent to close it)"
                            ),
                        ))
                    }
                }
                self.set_dev(device, DevState::Unbound { step: k });
            }
            Step::EnableMsi { device, vectors } => {
                let info = self.device("device", device)?;
                if let Some(step) = info.intx {
                    return Err(self.err(
                        "device",
                        format!("INTx of {device} is enabled (step {step}): VFIO uses one interrupt type at a time"),
                    ));
                }
                let max = info.model.vectors();
                if info.model.irq() != IrqKind::Msi {
                    return Err(self.err(
                        "action",
                        format!(
                            "{device} ({}) has {}, not MSI: use {}",
                            info.model.label(),
                            irq_kind_name(info.model.irq()),
                            enable_action(info.model)
                        ),
                    ));
                }
                match info.state {
                    DevState::Bound => {}
                    DevState::Declared => {
                        return Err(
                            self.err("device", format!("{device} is not bound: bind it first"))
                        )
                    }
                    DevState::Enabled { step, .. } => {
                        return Err(self.err(
                            "device",
                            format!(
                                "msi on {device} already enabled at step {step}: disable-msi first"
                            ),
                        ))
                    }
                    DevState::Closed { step }
                    | DevState::Unbound { step }
                    | DevState::Unplugged { step } => {
                        return Err(self.err(
                            "device",
                            format!(
                            "{device} used after it was closed (step {step}): bind it again first"
                        ),
                        ))
                    }
                }
                if *vectors == 0 || *vectors > max {
                    return Err(self.err(
                        "vectors",
                        format!(
                            "vectors = {vectors} out of range: {device} ({}) has 1..={max}",
                            info.model.label()
                        ),
                    ));
                }
                let set: BTreeSet<u32> = (0..*vectors).collect();
                self.wire_vectors(device, set, k);
            }
            Step::EnableMsix { device, vectors } | Step::EnableVqs { device, vectors } => {
                let info = self.device("device", device)?;
                let model = info.model;
                let action = step.action();
                if enable_action(model) != action {
                    return Err(self.err(
                        "action",
                        format!(
                            "{device} ({}) has {}, not {}: use {}",
                            model.label(),
                            irq_kind_name(model.irq()),
                            if action == "enable-vqs" {
                                "virtqueues"
                            } else {
                                "MSI-X"
                            },
                            enable_action(model)
                        ),
                    ));
                }
                if let (DevState::Enabled { step, .. }, IrqKind::Vq) = (&info.state, model.irq()) {
                    return Err(self.err(
                        "device",
                        format!(
                            "virtqueue interrupts of {device} already enabled at step {step}: once per bind (DRIVER_OK)"
                        ),
                    ));
                }
                match info.state {
                    DevState::Bound | DevState::Enabled { .. } => {}
                    DevState::Declared => {
                        return Err(
                            self.err("device", format!("{device} is not bound: bind it first"))
                        )
                    }
                    DevState::Closed { step }
                    | DevState::Unbound { step }
                    | DevState::Unplugged { step } => {
                        return Err(self.err(
                            "device",
                            format!(
                            "{device} used after it was closed (step {step}): bind it again first"
                        ),
                        ))
                    }
                }
                let max = model.vectors();
                let set: BTreeSet<u32> = vectors.numbers().into_iter().collect();
                let bad = match vectors {
                    wire::VectorSet::Count(n) if *n == 0 || *n > max => Some(format!(
                        "vectors = {n} out of range: {device} ({}) has 1..={max}",
                        model.label()
                    )),
                    wire::VectorSet::List(l) if l.is_empty() => Some(match model.irq() {
                        IrqKind::Vq => "vectors = []: wire at least one virtqueue".to_string(),
                        _ => {
                            "vectors = []: wire at least one vector (disable-msix turns MSI-X off)"
                                .to_string()
                        }
                    }),
                    wire::VectorSet::List(l) => l.iter().find(|n| **n >= max).map(|n| {
                        format!(
                            "vector {n} out of range: {device} ({}) has {}",
                            model.label(),
                            vector_range(model)
                        )
                    }),
                    _ => None,
                };
                if let Some(b) = bad {
                    return Err(self.err("vectors", b));
                }
                if let DevState::Enabled { vectors: had, step } = &info.state {
                    if *had == set {
                        return Err(self.err(
                            "vectors",
                            format!("changes nothing: enable-msix at step {step} wired the same vectors"),
                        ));
                    }
                }
                // vectors this step unwires lose their mask state with their eventfd
                self.wire_vectors(device, set, k);
            }
            Step::DisableMsi { device } | Step::DisableMsix { device } => {
                let info = self.device("device", device)?;
                let kind = info.model.irq();
                let (want, other) = match step {
                    Step::DisableMsi { .. } => (IrqKind::Msi, "disable-msix"),
                    _ => (IrqKind::Msix, "disable-msi"),
                };
                if kind == IrqKind::Vq {
                    return Err(self.err(
                        "action",
                        format!(
                            "{device} ({}) has virtqueues: their interrupts stay until close-device",
                            info.model.label()
                        ),
                    ));
                }
                if kind != want {
                    return Err(self.err(
                        "action",
                        format!(
                            "{device} ({}) has {}: use {other}",
                            info.model.label(),
                            if kind == IrqKind::Msi { "MSI" } else { "MSI-X" }
                        ),
                    ));
                }
                match info.state {
                    DevState::Enabled { .. } => {}
                    DevState::Closed { step }
                    | DevState::Unbound { step }
                    | DevState::Unplugged { step } => {
                        return Err(self.err(
                            "device",
                            format!("{device} used after it was closed (step {step})"),
                        ))
                    }
                    DevState::Declared | DevState::Bound => {
                        return Err(
                            self.err("device", format!("interrupts of {device} are not enabled"))
                        )
                    }
                }
                self.set_dev(device, DevState::Bound);
            }
            Step::Mask { vector } => {
                let (dev, _) = self.vector("vector", vector)?;
                if let Some((vm, k)) = self.rerouted_live(vector) {
                    return Err(self.err(
                        "vector",
                        format!("{vm}'s route of {vector} changed at step {k}: masks and route changes do not mix yet"),
                    ));
                }
                let model = self.devices[&dev].model;
                if !model.can_mask() {
                    return Err(self.err(
                        "vector",
                        format!(
                            "{dev} ({}) cannot mask a vector at the device",
                            model.label()
                        ),
                    ));
                }
                self.enabled_vector("vector", vector)?;
                if let Some(step) = self.masked.get(vector) {
                    return Err(
                        self.err("vector", format!("{vector} already masked at step {step}"))
                    );
                }
                self.masked.insert(vector.clone(), k);
            }
            Step::Unmask { vector } => {
                self.vector("vector", vector)?;
                if self.masked.remove(vector).is_none() {
                    return Err(self.err(
                        "vector",
                        format!("{vector} is not masked: no mask {vector} in force"),
                    ));
                }
                self.enabled_vector("vector", vector)?;
                self.fired = true;
            }
            Step::Fire { vector, count } => {
                let (dev, n) = self.vector("vector", vector)?;
                if let (Some((vm, k)), Some(m)) =
                    (self.rerouted_live(vector), self.masked.get(vector))
                {
                    return Err(self.err(
                        "vector",
                        format!("{vector} is masked (step {m}) and {vm}'s route of it changed at step {k}: unmask it first"),
                    ));
                }
                let model = self.devices[&dev].model;
                if let Some(wire::VqFire::Cannot(why)) =
                    model.vdpa().and_then(|v| v.vqs.get(n as usize))
                {
                    return Err(self.err("vector", format!("{vector} cannot fire: {why}")));
                }
                if let DevState::Declared = self.devices[&dev].state {
                    return Err(self.err("vector", format!("{dev} is not bound: bind it first")));
                }
                self.enabled_vector("vector", vector)?;
                if wire::is_intx(vector) && !self.irqfds.keys().any(|(_, v)| v == vector) {
                    return Err(self.err(
                        "vector",
                        format!("{vector} is level-triggered and no irqfd holds it: nothing would acknowledge it"),
                    ));
                }
                if !(1..=MAX_FIRE_COUNT).contains(count) {
                    return Err(self.err(
                        "count",
                        format!("count = {count} out of range 1..={MAX_FIRE_COUNT}"),
                    ));
                }
                self.fired = true;
            }
            Step::Signal { vector, count } => {
                self.vector("vector", vector)?;
                if let Some((vm, k)) = self.rerouted_live(vector) {
                    return Err(self.err(
                        "vector",
                        format!("{vm}'s route of {vector} changed at step {k}: fire it instead"),
                    ));
                }
                if wire::is_intx(vector) {
                    return Err(self.err(
                        "vector",
                        format!("{vector} is a level-triggered line: only the device (fire) asserts and de-asserts it"),
                    ));
                }
                if !self.eventfds.contains(vector) {
                    return Err(self.err(
                        "vector",
                        format!("{vector} has no eventfd to signal: no earlier irqfd or enable-msi made it"),
                    ));
                }
                if !(1..=MAX_FIRE_COUNT).contains(count) {
                    return Err(self.err(
                        "count",
                        format!("count = {count} out of range 1..={MAX_FIRE_COUNT}"),
                    ));
                }
                self.fired = true;
            }
            Step::CloseDevice { device } => {
                let info = self.device("device", device)?;
                match info.state {
                    DevState::Bound | DevState::Enabled { .. } => {}
                    DevState::Declared => {
                        return Err(self.err("device", format!("{device} is not bound")))
                    }
                    DevState::Closed { step }
                    | DevState::Unbound { step }
                    | DevState::Unplugged { step } => {
                        return Err(
                            self.err("device", format!("{device} already closed at step {step}"))
                        )
                    }
                }
                self.set_dev(device, DevState::Closed { step: k });
            }
            Step::EnableIntx { device } => {
                let info = self.device("device", device)?;
                if !info.model.spec().intx {
                    return Err(self.err(
                        "device",
                        format!(
                            "{device} ({}) has no INTx the testbed can drive",
                            info.model.label()
                        ),
                    ));
                }
                match info.state {
                    DevState::Bound => {}
                    DevState::Declared => {
                        return Err(self.err("device", format!("{device} is not bound: bind it first")))
                    }
                    DevState::Enabled { step, .. } => {
                        return Err(self.err(
                            "device",
                            format!("{device} has MSI enabled (step {step}): VFIO uses one interrupt type at a time"),
                        ))
                    }
                    DevState::Closed { step } | DevState::Unbound { step } | DevState::Unplugged { step } => {
                        return Err(self.err(
                            "device",
                            format!("{device} used after it was closed (step {step}): bind it again first"),
                        ))
                    }
                }
                if let Some(step) = info.intx {
                    return Err(self.err(
                        "device",
                        format!("INTx of {device} already enabled at step {step}"),
                    ));
                }
                self.devices.get_mut(device).expect("declared").intx = Some(k);
                self.eventfds.insert(wire::intx_vector(device));
            }
            _ => unreachable!("not a device step: {}", step.action()),
        }
        Ok(())
    }
}
