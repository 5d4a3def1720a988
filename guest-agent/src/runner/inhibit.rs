//! `reload-kvm` (the vendor module, between VMs) and `pit-reinject` (the
//! PIT_REINJ APICv/AVIC inhibit of a VM).

use std::time::{Duration, Instant};

use wire::{L2Mode, Step};

use super::{JobState, Runner};
use crate::say;

/// How long a running L2 may take to re-enter the guest after an inhibit
/// change (its vCPU takes the APICv update before it does).
const REENTRY_WAIT: Duration = Duration::from_secs(5);

impl Runner {
    pub(super) fn inhibit_step(&mut self, st: &mut JobState, step: &Step) -> Result<(), String> {
        match step {
            Step::ReloadKvm => {
                if let Some((vm, _)) = st.vms.first() {
                    return Err(format!(
                        "VM {vm} is still open: the vendor module cannot go"
                    ));
                }
                let t0 = Instant::now();
                let (m, p) = crate::kvmmod::reload()?;
                say!("reloaded {m} {p} in {} ms", t0.elapsed().as_millis());
                Ok(())
            }
            Step::PitReinject { vm, reinject } => {
                let v = st.vm(vm)?;
                let mode = v.running_l2().map(|l| l.mode);
                if let Some(Some(L2Mode::Halted)) = mode {
                    return Err(format!(
                        "the L2 of {vm} is halted: its vCPU would take the APICv update only when woken"
                    ));
                }
                v.set_pit_reinject(*reinject)?;
                // a vCPU kicked out of the guest by the update request
                // handles it before it enters again: two more turns of the
                // L2's loop mean it did
                if let Some(before) = v.running_l2().map(|l| l.iterations()) {
                    let t0 = Instant::now();
                    loop {
                        let now = v.running_l2().map(|l| l.iterations()).unwrap_or(before);
                        if now.wrapping_sub(before) >= 2 {
                            break;
                        }
                        if t0.elapsed() > REENTRY_WAIT {
                            return Err(format!("the L2 of {vm} did not run on after the update"));
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                Ok(())
            }
            _ => unreachable!("not an inhibit step: {}", step.action()),
        }
    }
}
