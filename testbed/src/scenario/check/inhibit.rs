//! The KVM vendor module and APICv/AVIC inhibits: `reload-kvm` (no VM may
//! be open) and `pit-reinject` (the PIT_REINJ inhibit of a VM whose L2
//! runs, not halted: its vCPU takes the update at once), and what
//! `inhibit-routes` needs: fires of the vector while the inhibit is set and
//! after it was cleared.

use super::{Checker, VmState};
use crate::scenario::ScenarioError;
use wire::Step;

/// Per VM: whether its PIT reinjection (the inhibit) is on, and whether it
/// was ever on.
#[derive(Debug, Default, Clone, Copy)]
pub(in crate::scenario) struct Inhibit {
    pub(in crate::scenario) on: bool,
    pub(in crate::scenario) ever: bool,
}

/// Fires of a vector held by a VM's irqfd, by the VM's inhibit then.
#[derive(Debug, Default, Clone, Copy)]
pub(in crate::scenario) struct FiresByInhibit {
    pub(in crate::scenario) inhibited: bool,
    pub(in crate::scenario) cleared: bool,
}

impl Checker<'_, '_> {
    /// reload-kvm, pit-reinject.
    pub(super) fn inhibit_step(&mut self, step: &Step) -> Result<(), ScenarioError> {
        match step {
            Step::ReloadKvm => {
                let open: Vec<&str> = self
                    .vms
                    .iter()
                    .filter(|(_, s)| **s == VmState::Live)
                    .map(|(v, _)| v.as_str())
                    .collect();
                if !open.is_empty() {
                    return Err(self.err(
                        "action",
                        format!(
                            "VM {} still open: the vendor module cannot go while a VM holds it (destroy-vm first)",
                            open.join(", ")
                        ),
                    ));
                }
                Ok(())
            }
            Step::PitReinject { vm, reinject } => {
                self.live_vm("vm", vm)?;
                if !self.l2_running.contains_key(vm) {
                    return Err(self.err(
                        "vm",
                        format!("the L2 of {vm} is not running: start-vm first (a vCPU outside KVM_RUN takes the APICv update only when it next enters)"),
                    ));
                }
                if self.l2_halted.contains(vm) {
                    return Err(self.err(
                        "vm",
                        format!("the L2 of {vm} runs halted: its vCPU would take the APICv update only when an interrupt wakes it"),
                    ));
                }
                let cur = self.inhibits.get(vm).copied().unwrap_or_default();
                if !cur.ever && !reinject {
                    return Err(self.err(
                        "reinject",
                        format!("{vm} has no PIT yet: the first pit-reinject turns reinjection on"),
                    ));
                }
                if cur.on == *reinject {
                    return Err(self.err(
                        "reinject",
                        format!("{vm}'s PIT reinjection is already {}", on_off(*reinject)),
                    ));
                }
                self.inhibits.insert(
                    vm.clone(),
                    Inhibit {
                        on: *reinject,
                        ever: true,
                    },
                );
                Ok(())
            }
            _ => unreachable!("not an inhibit step: {}", step.action()),
        }
    }

    /// A `fire` of `vector`: note it for each VM holding it by its inhibit.
    pub(super) fn note_fire_by_inhibit(&mut self, vector: &str) {
        let holders: Vec<String> = self
            .irqfds
            .keys()
            .filter(|(_, v)| v == vector)
            .map(|(vm, _)| vm.clone())
            .collect();
        for vm in holders {
            let Some(i) = self.inhibits.get(&vm).copied() else {
                continue;
            };
            let f = self
                .fires_by_inhibit
                .entry((vm, vector.to_string()))
                .or_default();
            if i.on {
                f.inhibited = true;
            } else if i.ever && f.inhibited {
                f.cleared = true;
            }
        }
    }

    /// `inhibit-routes vm vector`: it needs a fire while inhibited and one
    /// after the inhibit was cleared, else it would check nothing.
    pub(super) fn inhibit_routes(&self, vm: &str, vector: &str) -> Result<(), ScenarioError> {
        if !self.inhibits.get(vm).is_some_and(|i| i.ever) {
            return Err(self.err("vm", format!("no pit-reinject step inhibits {vm}")));
        }
        let f = self
            .fires_by_inhibit
            .get(&(vm.to_string(), vector.to_string()))
            .copied()
            .unwrap_or_default();
        if !f.inhibited {
            return Err(self.err(
                "vector",
                format!("no fire of {vector} while {vm} is inhibited and holds it in an irqfd"),
            ));
        }
        if !f.cleared {
            return Err(self.err(
                "vector",
                format!("no fire of {vector} after {vm}'s inhibit is cleared (pit-reinject reinject = false)"),
            ));
        }
        Ok(())
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}
