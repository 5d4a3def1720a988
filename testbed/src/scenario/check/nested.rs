//! Real L2 steps: a Linux L2 under L1's QEMU, given NICs through L1's VFIO.

use wire::{DeviceModel, Step};

use super::{Checker, DevState};
use crate::scenario::ScenarioError;

impl Checker<'_, '_> {
    /// start-l2, l2-traffic, l2-link, stop-l2.
    pub(super) fn nested_step(&mut self, k: usize, step: &Step) -> Result<(), ScenarioError> {
        match step {
            Step::StartL2 {
                l2,
                devices,
                queues,
                append: _,
                hotplug,
            } => {
                self.l2_started(l2, *hotplug);
                if let Some((step, _)) = self.linux_l2s.get(l2) {
                    return Err(self.err(
                        "l2",
                        format!("L2 {l2} is already running (start-l2 at step {step})"),
                    ));
                }
                if devices.is_empty() {
                    return Err(self.err("devices", "an L2 needs at least one device".to_string()));
                }
                if !(1..=8).contains(queues) {
                    return Err(self.err("queues", format!("queues = {queues} out of range 1..=8")));
                }
                for d in devices {
                    let info = self.device("devices", d)?;
                    if !matches!(
                        info.model,
                        DeviceModel::Igb | DeviceModel::E1000e | DeviceModel::VdpaSimNet
                    ) {
                        return Err(self.err(
                            "devices",
                            format!("{d} is {}: an L2 drives only NICs with a Linux driver (igb, e1000e through vfio-pci) and vdpa-sim-net (a virtio-net through vhost-vdpa)", info.model.label()),
                        ));
                    }
                    match info.state {
                        DevState::Declared | DevState::Closed { .. } | DevState::Unbound { .. } => {
                        }
                        DevState::Unplugged { step } => {
                            return Err(self.err(
                                "devices",
                                format!("{d} was unplugged at step {step}: replug it first"),
                            ))
                        }
                        DevState::Bound | DevState::Enabled { .. } => {
                            return Err(self.err(
                                "devices",
                                format!("{d} is open in the agent: close-device first"),
                            ))
                        }
                    }
                    if let Some((other, _)) =
                        self.linux_l2s.iter().find(|(_, (_, ds))| ds.contains(d))
                    {
                        return Err(
                            self.err("devices", format!("{d} is already assigned to L2 {other}"))
                        );
                    }
                    if devices.iter().filter(|x| *x == d).count() > 1 {
                        return Err(self.err("devices", format!("{d} is listed twice")));
                    }
                }
                // the VMM gives a vDPA device's virtqueues their call
                // eventfds (KVM's irqfds): start-l2 wires them
                for d in devices {
                    if let Some(info) = self.devices.get_mut(d) {
                        if let Some(spec) = info.model.vdpa() {
                            info.ever_wired.extend(0..spec.vqs.len() as u32);
                        }
                    }
                }
                self.linux_l2s.insert(l2.clone(), (k, devices.clone()));
            }
            Step::L2Traffic {
                l2,
                from,
                to,
                frames,
            } => {
                let Some((_, devs)) = self.linux_l2s.get(l2) else {
                    return Err(self.err(
                        "l2",
                        format!("no L2 named {l2} is running (no start-l2 {l2} in force)"),
                    ));
                };
                let to = to.as_ref().unwrap_or(from);
                self.l2_usable(l2, &[("from", from), ("to", to)])?;
                for (key, d) in [("from", from), ("to", to)] {
                    if !devs.contains(d) {
                        return Err(self.err(
                            key,
                            format!("{d} is not a device of L2 {l2} ({})", devs.join(", ")),
                        ));
                    }
                }
                let loops = |d: &str| {
                    self.devices
                        .get(d)
                        .is_some_and(|i| i.model == DeviceModel::VdpaSimNet)
                };
                if from == to {
                    if !loops(from) {
                        return Err(self.err(
                            "to",
                            format!("from and to are both {to}: frames go from one NIC to another (only a device that loops frames back, vdpa-sim-net, sends to itself)"),
                        ));
                    }
                } else if loops(from) || loops(to) {
                    let d = if loops(from) { from } else { to };
                    return Err(self.err(
                        "to",
                        format!("{d} is vdpa-sim-net: it is on no network, it loops its own frames back (leave `to` out, or set it to `from`)"),
                    ));
                } else {
                    let hubs: Vec<Option<&String>> = [from, to]
                        .iter()
                        .map(|d| self.hubs.get(*d).and_then(|h| h.as_ref()))
                        .collect();
                    if hubs[0].is_none() || hubs[0] != hubs[1] {
                        return Err(self.err(
                            "to",
                            format!("{from} and {to} must sit on the same hub (hub = \"...\" in both [[device]] tables)"),
                        ));
                    }
                }
                self.l2_counted = true;
                if !(1..=wire::L2_MAX_FRAMES).contains(frames) {
                    return Err(self.err(
                        "frames",
                        format!("frames = {frames} out of range 1..={}", wire::L2_MAX_FRAMES),
                    ));
                }
            }
            Step::L2Link { l2, device, flaps } => {
                let Some((_, devs)) = self.linux_l2s.get(l2) else {
                    return Err(self.err(
                        "l2",
                        format!("no L2 named {l2} is running (no start-l2 {l2} in force)"),
                    ));
                };
                if !devs.contains(device) {
                    return Err(self.err(
                        "device",
                        format!("{device} is not a device of L2 {l2} ({})", devs.join(", ")),
                    ));
                }
                self.l2_usable(l2, &[("device", device)])?;
                if let Some(info) = self.devices.get(device.as_str()) {
                    if info.model.vdpa().is_some() {
                        return Err(self.err(
                            "device",
                            format!("{device} is {}: it has no link L0 can flip (l2-link takes an igb or e1000e)", info.model.label()),
                        ));
                    }
                }
                if !(1..=wire::L2_MAX_FLAPS).contains(flaps) {
                    return Err(self.err(
                        "flaps",
                        format!("flaps = {flaps} out of range 1..={}", wire::L2_MAX_FLAPS),
                    ));
                }
                self.l2_counted = true;
            }
            Step::StopL2 { l2 } => {
                self.l2_usable(l2, &[])?;
                self.l2_stopped(l2);
                if self.linux_l2s.remove(l2).is_none() {
                    return Err(self.err(
                        "l2",
                        format!("no L2 named {l2} is running (no start-l2 {l2} in force)"),
                    ));
                }
            }
            _ => unreachable!("not a real-L2 step: {}", step.action()),
        }
        Ok(())
    }
}
