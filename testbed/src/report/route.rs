//! `route-delivery`: where the interrupts of a vector whose GSI route a
//! `route` step changed went, against what upstream KVM intends for the
//! route (`kvm_arch_update_irqfd_routing`, `kvm_pi_update_irte`): only a
//! postable MSI route of a connected irqfd may stay posted; any other
//! route puts the IRTE back under host control.

use std::collections::BTreeMap;

use wire::{BypassEvent, RouteTo, Step};

use super::checks::fail;
use super::{irqfds_before_each_step, l2_running_before_each_step, posting, Report};
use crate::scenario::routes_before_each_step;

/// The route of `vm`'s irqfd on `vector` before step `i`.
pub(super) fn route_at(
    routes: &[BTreeMap<(String, String), RouteTo>],
    i: usize,
    vm: &str,
    vector: &str,
) -> RouteTo {
    routes
        .get(i)
        .and_then(|m| m.get(&(vm.to_string(), vector.to_string())))
        .copied()
        .unwrap_or(RouteTo::Msi)
}

/// For each step, whether `vector` is connected to `consumer` when it starts.
fn connected_before_each_step(r: &Report, vector: &str, consumer: &str) -> Vec<bool> {
    let mut now = false;
    let mut out = Vec::with_capacity(r.scenario.steps.len());
    for i in 0..r.scenario.steps.len() {
        out.push(now);
        for ev in r.step_report(i).map(|s| s.bypass.as_slice()).unwrap_or(&[]) {
            match ev {
                BypassEvent::Connected {
                    producer,
                    consumer: c,
                    ret: 0,
                } if producer == vector && c == consumer => now = true,
                BypassEvent::Disconnected {
                    producer,
                    consumer: c,
                } if producer == vector && c == consumer => now = false,
                _ => {}
            }
        }
    }
    out
}

pub(super) fn route_delivery(r: &Report, vm: &str, vector: &str) -> (bool, String) {
    let steps = &r.scenario.steps;
    let routes = routes_before_each_step(steps);
    let held = irqfds_before_each_step(r);
    let l2 = l2_running_before_each_step(&r.scenario);
    let consumer = format!("{vm}:{vector}");
    let connected = connected_before_each_step(r, vector, &consumer);
    let (can, why) = posting(&r.platform);
    // the l2_vector each route step asked for, by (vm, vector)
    let mut asked: Option<u8> = None;
    let mut problems = Vec::new();
    let mut ok = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        match step {
            Step::Route {
                vm: v,
                vector: x,
                l2_vector,
                ..
            } if v == vm && x == vector => {
                asked = *l2_vector;
                continue;
            }
            Step::Fire { vector: x, .. } if x == vector => {}
            _ => continue,
        }
        let Some(to) = routes
            .get(i)
            .and_then(|m| m.get(&(vm.to_string(), vector.to_string())))
        else {
            continue;
        };
        if !held
            .get(i)
            .and_then(|h| h.get(vector))
            .is_some_and(|vms| vms.contains(vm))
        {
            continue;
        }
        let Some(rep) = r.step_report(i) else {
            problems.push(format!("step {n} (fire {vector}) did not run"));
            continue;
        };
        let Some(c) = rep.interrupts.iter().find(|c| c.vector == *vector) else {
            problems.push(format!("step {n}: no interrupt counts for {vector}"));
            continue;
        };
        let Some(seen) = &c.route else {
            problems.push(format!(
                "step {n}: the agent reported no route for {vector}"
            ));
            continue;
        };
        let before = problems.len();
        let name = to.name();
        if seen.to != *to {
            problems.push(format!(
                "step {n}: fired through route {} but the scenario's is {name}",
                seen.to.name()
            ));
        }
        let posts = to.postable() && can && connected[i];
        if posts && c.host_irq != 0 {
            problems.push(format!(
                "step {n}: route {name} is postable and {vector} is connected, but L1 saw {} of {}: the IRTE should post",
                c.host_irq, c.raised
            ));
        } else if !posts && c.host_irq != c.raised {
            let because = if !to.postable() {
                format!("route {name} cannot be posted")
            } else if !can {
                format!("platform cannot post ({why})")
            } else {
                format!("{vector} is not connected")
            };
            problems.push(format!(
                "step {n}: {because}, but L1 saw {} of {}: the IRTE still posts (it should be back under host control)",
                c.host_irq, c.raised
            ));
        }
        let inject = if to.injects() { c.host_irq } else { 0 };
        if c.injected != inject {
            problems.push(format!(
                "step {n}: route {name}: KVM injected {}, expected {inject}",
                c.injected
            ));
        }
        if let (Some(want), Some(got)) = (asked, seen.l2_vector) {
            if want != got && *to != RouteTo::None {
                problems.push(format!(
                    "step {n}: route {name} on vector {got:#04x}, the scenario asked for {want:#04x}"
                ));
            }
        }
        if l2.get(i).is_some_and(|running| running.contains(vm)) {
            let route_vector = seen.l2_vector.filter(|_| to.delivers());
            for (v, k) in &seen.l2_vectors {
                if Some(*v) != route_vector {
                    problems.push(format!(
                        "step {n}: L2 took {k} on {v:#04x}, which is not route {name}'s vector{}",
                        route_vector
                            .map(|r| format!(" ({r:#04x})"))
                            .unwrap_or_default()
                    ));
                }
            }
            if let Some(rv) = route_vector {
                let got = seen
                    .l2_vectors
                    .iter()
                    .find(|(v, _)| *v == rv)
                    .map_or(0, |(_, k)| *k);
                if got != c.raised {
                    problems.push(format!(
                        "step {n}: L2 took {got} of {} on route {name}'s vector {rv:#04x}",
                        c.raised
                    ));
                }
            }
        }
        if problems.len() == before {
            ok.push(format!(
                "step {n} {name} {}",
                if posts { "posted" } else { "via L1" }
            ));
        }
    }
    if !problems.is_empty() {
        return fail(problems);
    }
    if ok.is_empty() {
        return fail(vec![format!(
            "no fire of {vector} while {vm}'s irqfd held it after a route step"
        )]);
    }
    (true, ok.join(", "))
}

#[cfg(test)]
mod tests;
