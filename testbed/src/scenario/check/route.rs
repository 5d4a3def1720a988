//! `route`: a GSI route changed under a live irqfd, and the route each
//! irqfd has before every step (what the report's checks expect).

use std::collections::BTreeMap;

use wire::{RouteTo, Step};

use super::Checker;
use crate::scenario::ScenarioError;

/// The route of each live (vm, vector) irqfd when a step starts; an irqfd
/// whose route no `route` step changed has [`RouteTo::Msi`] (as `irqfd`
/// made it) and is not listed. A route stays with its VM: deassigning and
/// assigning the irqfd again keeps it; destroying the VM drops it.
pub(crate) fn routes_before_each_step(steps: &[Step]) -> Vec<BTreeMap<(String, String), RouteTo>> {
    let mut routes: BTreeMap<(String, String), RouteTo> = BTreeMap::new();
    let mut out = Vec::with_capacity(steps.len());
    for s in steps {
        out.push(routes.clone());
        match s {
            Step::Route { vm, vector, to, .. } => {
                routes.insert((vm.clone(), vector.clone()), *to);
            }
            Step::DestroyVm { vm } => routes.retain(|(v, _), _| v != vm),
            _ => {}
        }
    }
    out
}

impl Checker<'_, '_> {
    /// `route`: the VM is live, its irqfd holds the MSI or MSI-X vector of
    /// a VFIO device, no other VM's irqfd holds it, and the L2 vector (if
    /// any) is one a route may use.
    pub(super) fn route_step(&mut self, k: usize, step: &Step) -> Result<(), ScenarioError> {
        let Step::Route {
            vm,
            vector,
            to,
            l2_vector,
        } = step
        else {
            unreachable!("not a route step")
        };
        self.live_vm("vm", vm)?;
        let (dev, _) = self.vector("vector", vector)?;
        if wire::is_intx(vector) {
            return Err(self.err(
                "vector",
                format!("{vector} is INTx: route changes MSI and MSI-X routes"),
            ));
        }
        if self.devices[&dev].model.vdpa().is_some() {
            return Err(self.err(
                "vector",
                format!("{vector} is a virtqueue: route changes VFIO MSI and MSI-X routes"),
            ));
        }
        if !self.irqfds.contains_key(&(vm.clone(), vector.clone())) {
            return Err(self.err(
                "vector",
                format!("{vm} has no irqfd on {vector}: route changes a live irqfd's route"),
            ));
        }
        if let Some(((other, _), _)) = self
            .irqfds
            .iter()
            .find(|((v, x), _)| v != vm && x == vector)
        {
            return Err(self.err(
                "vector",
                format!("{vector} is also held by {other}'s irqfd: route one VM's only"),
            ));
        }
        match (to, l2_vector) {
            (RouteTo::None, Some(_)) => {
                return Err(self.err(
                    "l2_vector",
                    "to = \"none\" removes the route: it has no vector".into(),
                ))
            }
            (_, Some(v)) if !(0x40..=0xfe).contains(v) => {
                return Err(self.err(
                    "l2_vector",
                    format!("l2_vector = {v:#x} out of range 0x40..=0xfe"),
                ))
            }
            _ => {}
        }
        self.rerouted
            .entry((vm.clone(), vector.clone()))
            .or_insert(k);
        Ok(())
    }

    /// A live irqfd on `vector` whose route a `route` step changed:
    /// (vm, the first such step).
    pub(super) fn rerouted_live(&self, vector: &str) -> Option<(&str, usize)> {
        self.rerouted
            .iter()
            .find(|(key, _)| key.1 == vector && self.irqfds.contains_key(*key))
            .map(|((vm, _), k)| (vm.as_str(), *k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(vm: &str, to: RouteTo) -> Step {
        Step::Route {
            vm: vm.into(),
            vector: "dev0/msi0".into(),
            to,
            l2_vector: None,
        }
    }

    #[test]
    fn routes_follow_route_steps_and_go_with_their_vm() {
        let steps = vec![
            route("vm0", RouteTo::Ioapic),
            Step::IrqfdDeassign {
                vm: "vm0".into(),
                vector: "dev0/msi0".into(),
            },
            route("vm0", RouteTo::None),
            Step::DestroyVm { vm: "vm0".into() },
            Step::PanicL1,
        ];
        let r = routes_before_each_step(&steps);
        let key = ("vm0".to_string(), "dev0/msi0".to_string());
        assert!(r[0].is_empty(), "as irqfd made it: not listed");
        assert_eq!(r[1].get(&key), Some(&RouteTo::Ioapic));
        assert_eq!(
            r[2].get(&key),
            Some(&RouteTo::Ioapic),
            "a deassign keeps it"
        );
        assert_eq!(r[3].get(&key), Some(&RouteTo::None));
        assert!(r[4].is_empty(), "gone with its VM");
    }
}
