//! KVM steps: VMs, irqfds, and the tiny L2 guest that runs in a VM's vCPU.

use super::{Checker, VmState};
use crate::scenario::{name_problem, ScenarioError, MAX_FIRE_COUNT};
use wire::Step;

impl Checker<'_, '_> {
    /// create-vm, irqfd, irqfd-deassign, destroy-vm, start-vm, stop-vm, ipi.
    pub(super) fn kvm_step(&mut self, k: usize, step: &Step) -> Result<(), ScenarioError> {
        match step {
            Step::CreateVm { vm, .. } => {
                if let Some(p) = name_problem(vm) {
                    return Err(self.err("vm", p));
                }
                match self.vms.get(vm) {
                    Some(VmState::Live) => {
                        return Err(self.err("vm", format!("vm {vm:?} already exists")))
                    }
                    Some(VmState::Destroyed { step }) => {
                        return Err(self.err(
                            "vm",
                            format!("vm {vm:?} was destroyed at step {step}: use a new name"),
                        ))
                    }
                    None => {}
                }
                if self.devices.contains_key(vm) {
                    return Err(self.err("vm", format!("{vm:?} is already a device name")));
                }
                self.vms.insert(vm.clone(), VmState::Live);
            }
            Step::Irqfd {
                vm,
                vector,
                resample,
                pin,
            } => {
                self.live_vm("vm", vm)?;
                self.bound_vector("vector", vector)?;
                let key = (vm.clone(), vector.clone());
                if let Some(step) = self.irqfds.get(&key) {
                    return Err(self.err(
                        "vector",
                        format!("{vm} already has an irqfd on {vector} (step {step})"),
                    ));
                }
                let intx = wire::is_intx(vector);
                if *resample && !intx {
                    return Err(self.err(
                        "resample",
                        format!("resample is for level-triggered INTx vectors (<device>/intx0), not {vector}"),
                    ));
                }
                if let Some(p) = pin {
                    if !intx {
                        return Err(self.err(
                            "pin",
                            format!("pin is for INTx vectors (<device>/intx0), not {vector}"),
                        ));
                    }
                    if !wire::INTX_PINS.contains(p) {
                        return Err(self.err(
                            "pin",
                            format!(
                                "pin = {p} out of range {}..={}",
                                wire::INTX_PINS.start(),
                                wire::INTX_PINS.end()
                            ),
                        ));
                    }
                }
                if *resample {
                    self.resample.insert(key.clone(), k);
                }
                self.irqfds.insert(key.clone(), k);
                self.ever_attached.entry(key).or_insert(k);
                self.eventfds.insert(vector.clone());
            }
            Step::IrqfdDeassign { vm, vector } => {
                self.live_vm("vm", vm)?;
                self.vector("vector", vector)?;
                if self.irqfds.remove(&(vm.clone(), vector.clone())).is_none() {
                    return Err(self.err(
                        "vector",
                        format!("{vm} has no irqfd on {vector} to deassign"),
                    ));
                }
                self.resample.remove(&(vm.clone(), vector.clone()));
            }
            Step::DestroyVm { vm } => {
                self.live_vm("vm", vm)?;
                self.vms.insert(vm.clone(), VmState::Destroyed { step: k });
                self.irqfds.retain(|(v, _), _| v != vm);
                self.resample.retain(|(v, _), _| v != vm);
                self.l2_running.remove(vm);
            }
            Step::StartVm {
                vm,
                mode,
                period_ms,
            } => {
                self.live_vm("vm", vm)?;
                if let Some(step) = self.l2_running.get(vm) {
                    return Err(self.err(
                        "vm",
                        format!("the L2 of {vm} is already running (start-vm at step {step})"),
                    ));
                }
                if let Some(p) = period_ms {
                    if *mode != wire::L2Mode::Alternate {
                        return Err(self.err(
                            "period_ms",
                            format!(
                                "period_ms only applies to mode = \"alternate\" (mode is \"{}\")",
                                mode.name()
                            ),
                        ));
                    }
                    if !(1..=wire::MAX_ALTERNATE_MS).contains(p) {
                        return Err(self.err(
                            "period_ms",
                            format!(
                                "period_ms = {p} out of range 1..={}",
                                wire::MAX_ALTERNATE_MS
                            ),
                        ));
                    }
                }
                self.l2_running.insert(vm.clone(), k);
                if *mode == wire::L2Mode::Halted {
                    self.l2_halted.insert(vm.clone());
                } else {
                    self.l2_halted.remove(vm);
                }
            }
            Step::StopVm { vm } => {
                self.live_vm("vm", vm)?;
                if self.l2_running.remove(vm).is_none() {
                    return Err(self.err(
                        "vm",
                        format!("the L2 of {vm} is not running: no start-vm {vm} in force"),
                    ));
                }
            }
            Step::Ipi { vm, vector, count } => {
                self.live_vm("vm", vm)?;
                if !self.l2_running.contains_key(vm) {
                    return Err(self.err(
                        "vm",
                        format!(
                            "the L2 of {vm} is not running: no start-vm {vm} in force (only a running L2 sends IPIs)"
                        ),
                    ));
                }
                if !wire::IPI_VECTORS.contains(vector) {
                    return Err(self.err(
                        "vector",
                        format!(
                            "ipi vector {vector:#x} out of range {:#x}..={:#x} (0x20/0x21 are the L2's timer and kick, 0x40 up the MSI routes)",
                            wire::IPI_VECTORS.start(),
                            wire::IPI_VECTORS.end()
                        ),
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
            Step::IntxUnmask { vm, vector } => {
                self.live_vm("vm", vm)?;
                self.enabled_vector("vector", vector)?;
                if !self.resample.contains_key(&(vm.clone(), vector.clone())) {
                    return Err(self.err(
                        "vector",
                        format!("{vm} has no resample irqfd on {vector}: irqfd with resample = true first"),
                    ));
                }
            }
            _ => unreachable!("not a KVM step: {}", step.action()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod l2_step_tests {
    use std::path::Path;

    use crate::scenario::{parse, Scenario, ScenarioError};
    use wire::Step;

    fn with_steps(steps: &str) -> Result<Scenario, ScenarioError> {
        let text = format!(
            r#"
description = "l2"

[[device]]
name = "dev0"
model = "edu"

[[step]]
action = "bind"
device = "dev0"

[[step]]
action = "create-vm"
vm = "vm0"
{steps}"#
        );
        parse(Path::new("scenarios/l2.toml"), &text)
    }

    fn error(steps: &str) -> String {
        with_steps(steps).unwrap_err().to_string()
    }

    #[test]
    fn start_and_stop_follow_the_vm() {
        let s = with_steps(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"halted\"\n\
             [[step]]\naction = \"stop-vm\"\nvm = \"vm0\"\n\
             [[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"alternate\"\nperiod_ms = 2\n\
             [[step]]\naction = \"destroy-vm\"\nvm = \"vm0\"\n",
        )
        .unwrap();
        assert_eq!(
            s.steps[2],
            Step::StartVm {
                vm: "vm0".into(),
                mode: wire::L2Mode::Halted,
                period_ms: None
            }
        );
        assert_eq!(
            s.steps[4],
            Step::StartVm {
                vm: "vm0".into(),
                mode: wire::L2Mode::Alternate,
                period_ms: Some(2)
            }
        );
    }

    #[test]
    fn bad_starts_and_stops() {
        let e = error("[[step]]\naction = \"start-vm\"\nvm = \"vm1\"\n");
        assert!(e.contains("step 3 (start-vm): unknown vm \"vm1\""), "{e}");
        let e = error("[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n");
        assert!(
            e.contains("step 4 (start-vm): the L2 of vm0 is already running (start-vm at step 3)"),
            "{e}"
        );
        let e = error("[[step]]\naction = \"stop-vm\"\nvm = \"vm0\"\n");
        assert!(
            e.contains("step 3 (stop-vm): the L2 of vm0 is not running"),
            "{e}"
        );
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"running\"\nperiod_ms = 5\n",
        );
        assert!(
            e.contains(
                "l2.toml:19:1: step 3 (start-vm): period_ms only applies to mode = \"alternate\""
            ),
            "{e}"
        );
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"alternate\"\nperiod_ms = 0\n",
        );
        assert!(e.contains("period_ms = 0 out of range 1..=1000"), "{e}");
        let e = error("[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"sleepy\"\n");
        assert!(e.contains("sleepy"), "{e}");
        // destroy-vm stops the L2: a later stop-vm has nothing to stop, and the VM is gone
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"destroy-vm\"\nvm = \"vm0\"\n\
             [[step]]\naction = \"stop-vm\"\nvm = \"vm0\"\n",
        );
        assert!(
            e.contains("step 5 (stop-vm): vm \"vm0\" used after destroy-vm at step 4"),
            "{e}"
        );
    }

    #[test]
    fn ipi_needs_a_running_l2_and_an_ipi_vector() {
        let s = with_steps(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n\
             [[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x31\ncount = 50\n\
             [[expect]]\ncheck = \"lossless\"\n",
        )
        .unwrap();
        assert_eq!(
            s.steps[3],
            Step::Ipi {
                vm: "vm0".into(),
                vector: 0x31,
                count: 50
            }
        );
        let e = error("[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x31\n");
        assert!(
            e.contains("step 3 (ipi): the L2 of vm0 is not running"),
            "{e}"
        );
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x41\n",
        );
        assert!(
            e.contains("step 4 (ipi): ipi vector 0x41 out of range 0x30..=0x3f"),
            "{e}"
        );
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x21\n",
        );
        assert!(e.contains("out of range 0x30..=0x3f"), "{e}");
        let e = error("[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x31\ncount = 0\n");
        assert!(e.contains("count = 0 out of range"), "{e}");
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 300\n",
        );
        assert!(e.contains("step"), "{e}");
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"stop-vm\"\nvm = \"vm0\"\n\
             [[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x31\n",
        );
        assert!(
            e.contains("step 5 (ipi): the L2 of vm0 is not running"),
            "{e}"
        );
    }
}
