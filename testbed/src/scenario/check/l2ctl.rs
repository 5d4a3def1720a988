//! Checks of the steps that act on a running real L2 through its VMM's
//! QMP: `l2-unplug`, `l2-replug`, `l2-pause`, `l2-resume`, and what they
//! forbid meanwhile (traffic from an unplugged NIC, commands to a paused L2).

use std::collections::{BTreeMap, BTreeSet};

use wire::Step;

use super::Checker;
use crate::scenario::ScenarioError;

/// What the L2 control steps changed.
#[derive(Default)]
pub(in crate::scenario) struct L2Ctl {
    /// L2s started with `hotplug = true`.
    hotplug: BTreeSet<String>,
    /// (l2, device) -> the l2-unplug step.
    unplugged: BTreeMap<(String, String), usize>,
    /// l2 -> the l2-pause step.
    paused: BTreeMap<String, usize>,
}

impl Checker<'_, '_> {
    pub(super) fn l2_started(&mut self, l2: &str, hotplug: bool) {
        if hotplug {
            self.l2ctl.hotplug.insert(l2.to_string());
        }
    }

    /// `l2` may take a command (traffic, stop) and `devices` are in it.
    pub(super) fn l2_usable(
        &self,
        l2: &str,
        devices: &[(&str, &str)],
    ) -> Result<(), ScenarioError> {
        if let Some(step) = self.l2ctl.paused.get(l2) {
            return Err(self.err(
                "l2",
                format!("L2 {l2} was paused at step {step}: l2-resume it first"),
            ));
        }
        for (key, d) in devices {
            if let Some(step) = self.l2ctl.unplugged.get(&(l2.to_string(), d.to_string())) {
                return Err(self.err(
                    key,
                    format!("{d} was unplugged from L2 {l2} at step {step}: l2-replug it first"),
                ));
            }
        }
        Ok(())
    }

    /// The L2 stopped: its state goes with it.
    pub(super) fn l2_stopped(&mut self, l2: &str) {
        self.l2ctl.hotplug.remove(l2);
        self.l2ctl.unplugged.retain(|(l, _), _| l != l2);
    }

    pub(super) fn l2_control(&mut self, k: usize, step: &Step) -> Result<(), ScenarioError> {
        let Some(l2) = step.l2() else { return Ok(()) };
        let Some((_, devs)) = self.linux_l2s.get(l2) else {
            return Err(self.err(
                "l2",
                format!("no L2 named {l2} is running (no start-l2 {l2} in force)"),
            ));
        };
        let devs = devs.clone();
        let paused = self.l2ctl.paused.get(l2).copied();
        match step {
            Step::L2Unplug { device, .. } | Step::L2Replug { device, .. } => {
                if !devs.contains(device) {
                    return Err(self.err(
                        "device",
                        format!("{device} is not a device of L2 {l2} ({})", devs.join(", ")),
                    ));
                }
                if let Some(info) = self.devices.get(device.as_str()) {
                    if info.model.vdpa().is_some() {
                        return Err(self.err(
                            "device",
                            format!("{device} is {}: only a NIC given through vfio-pci can be unplugged from an L2", info.model.label()),
                        ));
                    }
                }
                if !self.l2ctl.hotplug.contains(l2) {
                    return Err(self.err(
                        "l2",
                        format!("L2 {l2} was started without hotplug = true (its VMM's PCI hotplug needs ACPI in L2)"),
                    ));
                }
                if let Some(p) = paused {
                    return Err(self.err("l2", format!("L2 {l2} was paused at step {p}: a paused L2 cannot eject or take a device")));
                }
                let key = (l2.to_string(), device.clone());
                match (step, self.l2ctl.unplugged.get(&key).copied()) {
                    (Step::L2Unplug { .. }, Some(at)) => {
                        return Err(self.err(
                            "device",
                            format!("{device} was already unplugged at step {at}"),
                        ))
                    }
                    (Step::L2Unplug { .. }, None) => {
                        self.l2ctl.unplugged.insert(key, k);
                    }
                    (_, Some(_)) => {
                        self.l2ctl.unplugged.remove(&key);
                    }
                    (_, None) => {
                        return Err(self.err(
                            "device",
                            format!("{device} is in L2 {l2}: l2-unplug it before l2-replug"),
                        ))
                    }
                }
            }
            Step::L2Pause { .. } => {
                if let Some(p) = paused {
                    return Err(self.err("l2", format!("L2 {l2} is already paused (step {p})")));
                }
                self.l2ctl.paused.insert(l2.to_string(), k);
            }
            Step::L2Resume { .. } => {
                if paused.is_none() {
                    return Err(self.err("l2", format!("L2 {l2} is not paused: l2-pause it first")));
                }
                self.l2ctl.paused.remove(l2);
            }
            _ => {}
        }
        Ok(())
    }
}
