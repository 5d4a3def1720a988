//! Checking `[[expect]]` against a report.

use std::collections::BTreeSet;

use wire::{BypassEvent, Step};

use super::{held_by_mask, irqfds_before_each_step, l2_running_before_each_step, posting, Report};
use crate::scenario::Expectation;

/// Whether `exp` holds for `r`, and the detail to show.
pub(super) fn check(r: &Report, exp: &Expectation) -> (bool, String) {
    // Conclusions from irqbypass events (including "no event") need every
    // probe in place.
    if !matches!(
        exp,
        Expectation::Lossless | Expectation::GaLogWakeups | Expectation::L2Lossless
    ) && !r.platform.tracing_failed.is_empty()
    {
        return fail(vec![format!(
            "cannot tell: tracing incomplete ({})",
            r.platform.tracing_failed.join("; ")
        )]);
    }
    match exp {
        Expectation::Lossless => lossless(r),
        Expectation::Pairing => pairing(r),
        Expectation::ProducerRegistered { vector } => producer_registered(r, vector),
        Expectation::NoProducer { vector } => no_producer(r, vector),
        Expectation::ConsumerRegistered { vm, vector } => consumer_registered(r, vm, vector),
        Expectation::Connected { vm, vector } => connected(r, vm, vector),
        Expectation::ConnectedIffPosting { vm, vector } => connected_iff_posting(r, vm, vector),
        Expectation::IrqfdRefused { vm, vector } => irqfd_refused(r, vm, vector),
        Expectation::GaLogWakeups => ga_log_wakeups(r),
        Expectation::L2Lossless => super::l2::l2_lossless(r),
        Expectation::InhibitRoutes { vm, vector } => super::inhibit::inhibit_routes(r, vm, vector),
        Expectation::RouteDelivery { vm, vector } => super::route::route_delivery(r, vm, vector),
    }
}

pub(super) fn fail(problems: Vec<String>) -> (bool, String) {
    const SHOWN: usize = 5;
    let mut detail = problems
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        detail.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    (false, detail)
}

/// Every raised interrupt accounted for exactly once.
///
/// Stock platforms (no IOMMU counters): raised == seen by L1, == injected by
/// KVM where an irqfd held the vector (else == counted on the eventfd), ==
/// delivered where an L2 ran. Where the IOMMU posts (its counters were read),
/// an interrupt either passes through L1 (host IRQ, then KVM's injection
/// where an irqfd held it) or is posted by the IOMMU: per step L1 sees at
/// most what was raised and KVM injects exactly what L1 saw; over the
/// scenario the IOMMU posted exactly the raised interrupts L1 did not see.
/// (The counters are read around the whole scenario, so a posted interrupt
/// is attributed to a step only by elimination.) `signal` steps have no
/// device: KVM injects every write, and nothing is posted or seen by L1.
fn lossless(r: &Report) -> (bool, String) {
    let held = irqfds_before_each_step(r);
    let held_by_mask = held_by_mask(&r.scenario);
    let l2 = l2_running_before_each_step(&r.scenario);
    let routes = crate::scenario::routes_before_each_step(&r.scenario.steps);
    let mut problems = Vec::new();
    let mut ok = Vec::new();
    let posting = r.iommu.is_some();
    if let Some(Err(e)) = &r.iommu {
        problems.push(format!("cannot account for posted interrupts: {e}"));
    }
    // raised interrupts that did not pass through L1, over the scenario
    let mut not_through_l1 = 0u64;
    let mut through_l1 = 0u64;
    for (i, step) in r.scenario.steps.iter().enumerate() {
        if let Step::Ipi { vm, vector, count } = step {
            ipi_lossless(r, i, vm, *vector, *count, &mut problems, &mut ok);
            continue;
        }
        let (vector, count, signal) = match step {
            Step::Fire { vector, count } if wire::is_intx(vector) => {
                let holders = held.get(i).and_then(|h| h.get(vector));
                let running = holders.is_some_and(|vms| {
                    vms.iter()
                        .any(|vm| l2.get(i).is_some_and(|r| r.contains(vm)))
                });
                super::level::lossless(r, i, vector, *count, running, &mut problems, &mut ok);
                // a level interrupt is never posted: what L1's line took
                // went through L1 (the rest coalesced on the asserted line)
                if let Some(c) = r
                    .step_report(i)
                    .and_then(|rep| rep.interrupts.iter().find(|c| c.vector == *vector))
                {
                    through_l1 += c.host_irq;
                }
                continue;
            }
            Step::Fire { .. } if held_by_mask[i] == Some(true) => {
                masked_fire_lossless(r, i, step, &mut problems, &mut ok);
                continue;
            }
            Step::Fire { vector, count } => (vector, *count, false),
            Step::Signal { vector, count } => (vector, *count, true),
            // the raise the device held while masked, if any, is sent now
            Step::Unmask { vector } => (vector, u32::from(held_by_mask[i] == Some(true)), false),
            _ => continue,
        };
        let n = i + 1;
        let action = step.action();
        let Some(rep) = r.step_report(i) else {
            problems.push(format!("step {n} ({action} {vector}) did not run"));
            continue;
        };
        if let Some(e) = &rep.error {
            problems.push(format!("step {n} ({action} {vector}) failed: {e}"));
        }
        let Some(c) = rep.interrupts.iter().find(|c| c.vector == *vector) else {
            problems.push(format!("step {n}: no interrupt counts for {vector}"));
            continue;
        };
        let before = problems.len();
        if c.raised != u64::from(count) {
            let what = if signal { "signalled" } else { "raised" };
            problems.push(format!("step {n} {vector}: {what} {} of {count}", c.raised));
        }
        let holders = held.get(i).and_then(|h| h.get(vector));
        // a device without an IRQ of its own for the vector (vdpa_sim)
        // signals the eventfd from kernel code: no L1 line, nothing posted
        let no_host_irq = r
            .scenario
            .device_of_vector(vector)
            .is_some_and(|d| !d.model.host_irq());
        // what KVM must have injected where an irqfd holds the vector
        let via_kvm = if signal || no_host_irq {
            if c.host_irq != 0 {
                let by = if signal {
                    "from software"
                } else {
                    "by a device without an IRQ of its own"
                };
                problems.push(format!(
                    "step {n} {vector}: signalled {by} but L1 saw {} device interrupts",
                    c.host_irq
                ));
            }
            c.raised
        } else if !posting {
            if c.host_irq != c.raised {
                problems.push(format!(
                    "step {n} {vector}: raised {} but L1 saw {}",
                    c.raised, c.host_irq
                ));
            }
            c.raised
        } else if c.host_irq > c.raised {
            problems.push(format!(
                "step {n} {vector}: raised {} but L1 saw {}, more than raised",
                c.raised, c.host_irq
            ));
            c.raised
        } else if holders.is_none() && c.host_irq != c.raised {
            // no irqfd, so no consumer to connect to: nothing can be posted
            problems.push(format!(
                "step {n} {vector}: raised {} but L1 saw {} (no irqfd holds it, so nothing can be posted)",
                c.raised, c.host_irq
            ));
            c.raised
        } else {
            if !signal {
                not_through_l1 += c.raised - c.host_irq;
                through_l1 += c.host_irq;
            }
            c.host_irq
        };
        match holders {
            Some(vms) => {
                // an eventfd held by several VMs' irqfds wakes each of
                // them; a VM whose route of it was removed injects nothing
                let route_of = |vm: &str| super::route::route_at(&routes, i, vm, vector);
                let copies = vms.iter().filter(|vm| route_of(vm).injects()).count() as u64;
                if c.injected != via_kvm * copies {
                    let vms: Vec<&str> = vms.iter().map(String::as_str).collect();
                    let each = if copies > 1 {
                        format!(" {copies} times")
                    } else {
                        String::new()
                    };
                    if via_kvm == c.raised {
                        let what = if signal { "signalled" } else { "raised" };
                        problems.push(format!(
                            "step {n} {vector}: {what} {}{each} but KVM injected {} (irqfd of {})",
                            c.raised,
                            c.injected,
                            vms.join(", ")
                        ));
                    } else {
                        problems.push(format!(
                            "step {n} {vector}: L1 saw {via_kvm} of {} raised but KVM injected {} (irqfd of {})",
                            c.raised,
                            c.injected,
                            vms.join(", ")
                        ));
                    }
                }
                // where an L2 runs, every interrupt must arrive there too
                // (one whose route reaches no vCPU delivers nothing)
                let running: Vec<&str> = vms
                    .iter()
                    .filter(|vm| l2.get(i).is_some_and(|r| r.contains(*vm)))
                    .filter(|vm| route_of(vm).delivers())
                    .map(String::as_str)
                    .collect();
                match c.delivered {
                    Some(d) if running.is_empty() && d != 0 => problems.push(format!(
                        "step {n} {vector}: raised {} and L2 received {d}, but no running L2's route of it reaches a vCPU ({})",
                        c.raised,
                        vms.iter()
                            .map(|vm| format!("{vm}: {}", route_of(vm).name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    Some(d) if d != c.raised * running.len() as u64 => problems.push(format!(
                        "step {n} {vector}: raised {} but L2 received {d} (L2 of {}{})",
                        c.raised,
                        running.join(", "),
                        if running.len() > 1 {
                            ", each should receive all"
                        } else {
                            ""
                        }
                    )),
                    None if !running.is_empty() => problems.push(format!(
                        "step {n} {vector}: the L2 of {} was running but reported no deliveries",
                        running.join(", ")
                    )),
                    _ => {}
                }
            }
            None => {
                if c.signalled != Some(c.raised) {
                    let got = c
                        .signalled
                        .map_or_else(|| "was not read".to_string(), |s| format!("counted {s}"));
                    problems.push(format!(
                        "step {n} {vector}: raised {} but the eventfd {got} (no irqfd holds it)",
                        c.raised
                    ));
                }
            }
        }
        if problems.len() == before {
            ok.push(format!("step {n} {vector} {}/{}", c.raised, c.raised));
        }
    }
    if let Some(Ok(iommu)) = &r.iommu {
        if iommu.posted != not_through_l1 {
            let how = if iommu.posted > not_through_l1 {
                "some were counted twice, or posted from elsewhere"
            } else {
                "the rest were lost"
            };
            problems.push(format!(
                "the IOMMU posted {} but {not_through_l1} raised interrupts did not pass through L1 ({how})",
                iommu.posted
            ));
        }
    }
    if !problems.is_empty() {
        return fail(problems);
    }
    if ok.is_empty() {
        return fail(vec!["nothing was fired".into()]);
    }
    if posting {
        return (
            true,
            format!("{not_through_l1} posted by the IOMMU, {through_l1} through L1"),
        );
    }
    (true, String::new())
}

/// A `fire` on a vector masked at the device: the device holds the raise
/// pending, so nothing may reach L1, KVM, an L2 or the eventfd.
fn masked_fire_lossless(
    r: &Report,
    i: usize,
    step: &Step,
    problems: &mut Vec<String>,
    ok: &mut Vec<String>,
) {
    let Step::Fire { vector, count } = step else {
        return;
    };
    let n = i + 1;
    let Some(rep) = r.step_report(i) else {
        problems.push(format!("step {n} (fire {vector}, masked) did not run"));
        return;
    };
    if let Some(e) = &rep.error {
        problems.push(format!("step {n} (fire {vector}, masked) failed: {e}"));
    }
    let Some(c) = rep.interrupts.iter().find(|c| c.vector == *vector) else {
        problems.push(format!("step {n}: no interrupt counts for {vector}"));
        return;
    };
    let before = problems.len();
    if c.raised != u64::from(*count) {
        problems.push(format!("step {n} {vector}: raised {} of {count}", c.raised));
    }
    let leaked = [
        ("L1 saw", c.host_irq),
        ("KVM injected", c.injected),
        ("L2 received", c.delivered.unwrap_or(0)),
        ("the eventfd counted", c.signalled.unwrap_or(0)),
    ];
    for (what, got) in leaked {
        if got != 0 {
            problems.push(format!(
                "step {n} {vector}: masked at the device, yet {what} {got}"
            ));
        }
    }
    if problems.len() == before {
        ok.push(format!("step {n} {vector} held {}", c.raised));
    }
}

/// An `ipi` step: the L2 wrote its ICR `count` times and took every IPI
/// (KVM emulates each write; nothing passes through L1's IRQ lines or the
/// IOMMU, so nothing else to account for).
fn ipi_lossless(
    r: &Report,
    i: usize,
    vm: &str,
    vector: u8,
    count: u32,
    problems: &mut Vec<String>,
    ok: &mut Vec<String>,
) {
    let n = i + 1;
    let what = format!("{vm} ipi {vector:#04x}");
    let Some(rep) = r.step_report(i) else {
        problems.push(format!("step {n} ({what}) did not run"));
        return;
    };
    if let Some(e) = &rep.error {
        problems.push(format!("step {n} ({what}) failed: {e}"));
    }
    let Some(c) = rep
        .interrupts
        .iter()
        .find(|c| c.vector == format!("{vector:#04x}"))
    else {
        problems.push(format!("step {n}: no interrupt counts for {what}"));
        return;
    };
    let before = problems.len();
    if c.raised != u64::from(count) {
        problems.push(format!(
            "step {n} {what}: the L2 sent {} of {count}",
            c.raised
        ));
    }
    match c.delivered {
        Some(d) if d == c.raised => {}
        Some(d) => problems.push(format!(
            "step {n} {what}: sent {} but L2 received {d}",
            c.raised
        )),
        None => problems.push(format!("step {n} {what}: the L2 reported no deliveries")),
    }
    if problems.len() == before {
        ok.push(format!("step {n} {what} {}/{}", c.raised, c.raised));
    }
}

/// Where the IOMMU posts: at least one posted interrupt went to the GA log
/// (a vCPU that was not running, to be woken). Not applicable elsewhere.
fn ga_log_wakeups(r: &Report) -> (bool, String) {
    match &r.iommu {
        Some(Ok(c)) if c.posted_logged > 0 => (
            true,
            "the IOMMU logged posted interrupts for blocked vCPUs (GA log wake-ups)".into(),
        ),
        Some(Ok(c)) => fail(vec![format!(
            "the IOMMU posted {} interrupts but logged none in the GA log: no blocked vCPU was woken by it",
            c.posted
        )]),
        Some(Err(e)) => fail(vec![format!("cannot tell: {e}")]),
        None => {
            let (can, why) = posting(&r.platform);
            if can {
                fail(vec![
                    "cannot tell: the platform can post but its IOMMU has no counters to read".into(),
                ])
            } else {
                (true, format!("not applicable: platform cannot post ({why})"))
            }
        }
    }
}

/// The vector part of a consumer name `vm0:dev0/msi0`.
fn consumer_vector(consumer: &str) -> &str {
    consumer.split_once(':').map_or(consumer, |(_, v)| v)
}

#[derive(Default)]
struct Pairing {
    producers: BTreeSet<String>,
    consumers: BTreeSet<String>,
    connections: BTreeSet<(String, String)>,
    formed: usize,
    /// Connections whose end unregistered: the disconnect must follow at once.
    pending_disconnect: Vec<(String, (String, String), String)>,
    /// Connect events seen before an end's registration returned: the
    /// registration (ret 0) must follow at once.
    pending_register: Vec<(String, bool, String, (String, String))>,
    problems: Vec<String>,
}

impl Pairing {
    fn flush_disconnect(&mut self) {
        for (who, conn, when) in std::mem::take(&mut self.pending_disconnect) {
            if self.connections.remove(&conn) {
                self.problems.push(format!(
                    "{when}: {} -> {} still connected after {who} unregistered",
                    conn.0, conn.1
                ));
            }
        }
    }

    fn flush_register(&mut self) {
        for (end, producer, when, conn) in std::mem::take(&mut self.pending_register) {
            let kind = if producer { "producer" } else { "consumer" };
            self.problems.push(format!(
                "{when}: connected {} -> {} but {kind} {end} was not registered",
                conn.0, conn.1
            ));
        }
    }

    fn registered(&mut self, end: &str, producer: bool, ret: i64, when: &str) {
        let kind = if producer { "producer" } else { "consumer" };
        let pending = self
            .pending_register
            .iter()
            .position(|(e, p, _, _)| e == end && *p == producer);
        if let Some(i) = pending {
            let (_, _, _, conn) = self.pending_register.remove(i);
            if ret != 0 {
                self.problems.push(format!(
                    "{when}: connected {} -> {} but {kind} {end} failed to register (ret {ret})",
                    conn.0, conn.1
                ));
                self.connections.remove(&conn);
            }
        }
        if ret != 0 {
            return;
        }
        let set = if producer {
            &mut self.producers
        } else {
            &mut self.consumers
        };
        if !set.insert(end.to_string()) {
            self.problems.push(format!(
                "{when}: {kind} {end} registered twice (ret 0 both times)"
            ));
        }
    }

    fn unregistered(&mut self, end: &str, producer: bool, when: &str) {
        if producer {
            self.producers.remove(end);
        } else {
            self.consumers.remove(end);
        }
        let kind = if producer { "producer" } else { "consumer" };
        for conn in &self.connections {
            let involved = if producer {
                conn.0 == end
            } else {
                conn.1 == end
            };
            if involved {
                self.pending_disconnect.push((
                    format!("{kind} {end}"),
                    conn.clone(),
                    when.to_string(),
                ));
            }
        }
    }

    fn event(&mut self, when: &str, ev: &BypassEvent) {
        if !matches!(ev, BypassEvent::Disconnected { .. }) {
            self.flush_disconnect();
        }
        if !matches!(
            ev,
            BypassEvent::ProducerRegistered { .. } | BypassEvent::ConsumerRegistered { .. }
        ) {
            self.flush_register();
        }
        match ev {
            BypassEvent::ProducerRegistered { producer, ret } => {
                self.registered(producer, true, *ret, when)
            }
            BypassEvent::ConsumerRegistered { consumer, ret } => {
                self.registered(consumer, false, *ret, when)
            }
            BypassEvent::ConsumerNotRegistered { .. }
            | BypassEvent::ProducerNotRegistered { .. } => {}
            BypassEvent::ProducerUnregistered { producer } => {
                self.unregistered(producer, true, when)
            }
            BypassEvent::ConsumerUnregistered { consumer } => {
                self.unregistered(consumer, false, when)
            }
            BypassEvent::Connected {
                producer,
                consumer,
                ret,
            } => {
                let conn = (producer.clone(), consumer.clone());
                if consumer_vector(consumer) != producer {
                    self.problems.push(format!(
                        "{when}: connected {producer} -> {consumer}, which are different vectors"
                    ));
                }
                if !self.producers.contains(producer) {
                    self.pending_register.push((
                        producer.clone(),
                        true,
                        when.to_string(),
                        conn.clone(),
                    ));
                }
                if !self.consumers.contains(consumer) {
                    self.pending_register.push((
                        consumer.clone(),
                        false,
                        when.to_string(),
                        conn.clone(),
                    ));
                }
                if *ret == 0 {
                    self.formed += 1;
                    if !self.connections.insert(conn) {
                        self.problems
                            .push(format!("{when}: {producer} -> {consumer} connected twice"));
                    }
                }
            }
            BypassEvent::Disconnected { producer, consumer } => {
                let conn = (producer.clone(), consumer.clone());
                self.pending_disconnect.retain(|(_, c, _)| *c != conn);
                if !self.connections.remove(&conn) {
                    self.problems.push(format!(
                        "{when}: disconnected {producer} -> {consumer}, which was not connected"
                    ));
                }
            }
        }
    }
}

fn pairing(r: &Report) -> (bool, String) {
    let mut p = Pairing::default();
    let mut last_when = String::new();
    for (when, ev) in r.all_events() {
        if when != last_when {
            p.flush_disconnect();
            p.flush_register();
            last_when = when.clone();
        }
        p.event(&when, ev);
    }
    p.flush_disconnect();
    p.flush_register();
    if r.done.is_none() {
        p.problems
            .push("the run ended before cleanup, so teardown cannot be checked".into());
    } else {
        for x in &p.producers {
            p.problems
                .push(format!("after cleanup producer {x} is still registered"));
        }
        for x in &p.consumers {
            p.problems
                .push(format!("after cleanup consumer {x} is still registered"));
        }
        for (a, b) in &p.connections {
            p.problems
                .push(format!("after cleanup {a} -> {b} is still connected"));
        }
    }
    if !p.problems.is_empty() {
        return fail(p.problems);
    }
    let detail = match p.formed {
        0 => "no connection formed; nothing left registered".to_string(),
        n => format!(
            "{} formed and torn down; nothing left registered",
            crate::scenario::plural(n, "connection")
        ),
    };
    (true, detail)
}

/// The first step matching `pred` and whether it ran without error.
fn step_ran(r: &Report, pred: impl Fn(&Step) -> bool) -> Result<usize, String> {
    let Some(i) = r.scenario.steps.iter().position(pred) else {
        return Err("no such step in the scenario".into());
    };
    let line = super::step_line(&r.scenario.steps[i]);
    match r.step_report(i) {
        None => Err(format!("step {} ({line}) did not run", i + 1)),
        Some(rep) => match &rep.error {
            Some(e) => Err(format!("step {} ({line}) failed: {e}", i + 1)),
            None => Ok(i),
        },
    }
}

fn step_events(r: &Report) -> impl Iterator<Item = &BypassEvent> + '_ {
    r.steps.iter().flat_map(|s| s.bypass.iter())
}

fn producer_registered(r: &Report, vector: &str) -> (bool, String) {
    let dev = vector.split_once('/').map_or(vector, |(d, _)| d);
    let mut rets = Vec::new();
    for ev in step_events(r) {
        if let BypassEvent::ProducerRegistered { producer, ret } = ev {
            if producer == vector {
                if *ret == 0 {
                    return (true, String::new());
                }
                rets.push(ret.to_string());
            }
        }
    }
    if !rets.is_empty() {
        return fail(vec![format!(
            "producer {vector} registration failed (ret {})",
            rets.join(", ")
        )]);
    }
    if let Err(e) = step_ran(r, |s| wires(s, dev)) {
        return fail(vec![format!("producer {vector} never registered: {e}")]);
    }
    let who = match r.scenario.device_of_vector(vector) {
        Some(d) if d.model.vdpa().is_some() => "vhost-vdpa",
        _ => "VFIO",
    };
    fail(vec![format!(
        "producer {vector} never registered ({who} did not call irq_bypass_register_producer)"
    )])
}

/// A step that gives `dev`'s vectors their eventfds: an enable step, or
/// a `start-l2` whose VMM opens `dev` (a vDPA device through vhost-vdpa;
/// the scenario checker lets `no-producer` name such a device only then).
fn wires(s: &Step, dev: &str) -> bool {
    match s {
        Step::EnableMsi { device, .. }
        | Step::EnableMsix { device, .. }
        | Step::EnableVqs { device, .. } => device == dev,
        Step::StartL2 { devices, .. } => devices.iter().any(|d| d == dev),
        _ => false,
    }
}

fn no_producer(r: &Report, vector: &str) -> (bool, String) {
    let dev = vector.split_once('/').map_or(vector, |(d, _)| d);
    // "no producer" says nothing unless the vector was really wired
    if let Err(e) = step_ran(r, |s| wires(s, dev)) {
        return fail(vec![format!("cannot tell: {e}")]);
    }
    let mut problems = Vec::new();
    for (when, ev) in r.all_events() {
        if let BypassEvent::ProducerRegistered { producer, ret } = ev {
            if producer == vector {
                problems.push(format!(
                    "producer {vector} registered at {when} (ret {ret})"
                ));
            } else if producer == wire::UNKNOWN_NAME {
                problems.push(format!(
                    "a producer nobody expected registered at {when} (ret {ret})"
                ));
            }
        }
    }
    if problems.is_empty() {
        (true, String::new())
    } else {
        fail(problems)
    }
}

fn irqfd_ran(r: &Report, vm: &str, vector: &str) -> Result<usize, String> {
    step_ran(
        r,
        |s| matches!(s, Step::Irqfd { vm: v, vector: x, .. } if v == vm && x == vector),
    )
}

/// The registration of a consumer: Some(ret) of the first registration event.
fn consumer_registration(r: &Report, consumer: &str) -> Option<i64> {
    let mut first = None;
    for ev in step_events(r) {
        if let BypassEvent::ConsumerRegistered { consumer: c, ret } = ev {
            if c == consumer {
                if *ret == 0 {
                    return Some(0);
                }
                first.get_or_insert(*ret);
            }
        }
    }
    first
}

fn connection(r: &Report, vector: &str, consumer: &str) -> Option<i64> {
    let mut first = None;
    for ev in step_events(r) {
        if let BypassEvent::Connected {
            producer,
            consumer: c,
            ret,
        } = ev
        {
            if producer == vector && c == consumer {
                if *ret == 0 {
                    return Some(0);
                }
                first.get_or_insert(*ret);
            }
        }
    }
    first
}

fn not_registered_why(r: &Report) -> String {
    let (can, why) = posting(&r.platform);
    if can {
        "KVM did not call irq_bypass_register_consumer although the platform can post".into()
    } else {
        format!("KVM has no device-posted IRQs ({why})")
    }
}

/// Some `irqfd` step of `vm` on `vector` ran and failed (KVM_IRQFD refused).
fn irqfd_refused(r: &Report, vm: &str, vector: &str) -> (bool, String) {
    let mut accepted = Vec::new();
    for (i, step) in r.scenario.steps.iter().enumerate() {
        if !matches!(step, Step::Irqfd { vm: v, vector: x, .. } if v == vm && x == vector) {
            continue;
        }
        match r.step_report(i) {
            Some(rep) if rep.error.is_some() => return (true, String::new()),
            Some(_) => accepted.push(format!("step {}", i + 1)),
            None => {}
        }
    }
    if accepted.is_empty() {
        return fail(vec![format!("no irqfd step of {vm} on {vector} ran")]);
    }
    fail(vec![format!(
        "KVM accepted the irqfd of {vm} on {vector} ({})",
        accepted.join(", ")
    )])
}

fn consumer_registered(r: &Report, vm: &str, vector: &str) -> (bool, String) {
    let consumer = format!("{vm}:{vector}");
    match consumer_registration(r, &consumer) {
        Some(0) => (true, String::new()),
        Some(ret) => fail(vec![format!(
            "consumer {consumer} registration failed (ret {ret})"
        )]),
        None => match irqfd_ran(r, vm, vector) {
            Err(e) => fail(vec![format!("consumer {consumer} not registered: {e}")]),
            Ok(_) => fail(vec![format!(
                "consumer {consumer} not registered: {}",
                not_registered_why(r)
            )]),
        },
    }
}

fn connected(r: &Report, vm: &str, vector: &str) -> (bool, String) {
    let consumer = format!("{vm}:{vector}");
    match connection(r, vector, &consumer) {
        Some(0) => (true, String::new()),
        Some(ret) => fail(vec![format!(
            "connect {vector} -> {consumer} failed (ret {ret})"
        )]),
        None => {
            let why = match (
                irqfd_ran(r, vm, vector),
                consumer_registration(r, &consumer),
            ) {
                (Err(e), _) => e,
                (Ok(_), Some(0)) => format!("consumer {consumer} registered but never connected"),
                (Ok(_), Some(ret)) => {
                    format!("consumer {consumer} registration failed (ret {ret})")
                }
                (Ok(_), None) => format!(
                    "consumer {consumer} not registered: {}",
                    not_registered_why(r)
                ),
            };
            fail(vec![format!(
                "{vector} -> {consumer} never connected: {why}"
            )])
        }
    }
}

fn connected_iff_posting(r: &Report, vm: &str, vector: &str) -> (bool, String) {
    let consumer = format!("{vm}:{vector}");
    if let Err(e) = irqfd_ran(r, vm, vector) {
        return fail(vec![format!("cannot tell: {e}")]);
    }
    let (can, why) = posting(&r.platform);
    let reg = consumer_registration(r, &consumer);
    let conn = connection(r, vector, &consumer);
    if can {
        let mut problems = Vec::new();
        match reg {
            Some(0) => {}
            Some(ret) => problems.push(format!(
                "platform can post but consumer {consumer} failed to register (ret {ret})"
            )),
            None => problems.push(format!(
                "platform can post but consumer {consumer} did not register"
            )),
        }
        match conn {
            Some(0) => {}
            Some(ret) => problems.push(format!(
                "platform can post but connect {vector} -> {consumer} failed (ret {ret})"
            )),
            None => problems.push(format!(
                "platform can post but {vector} -> {consumer} never connected"
            )),
        }
        if problems.is_empty() {
            (
                true,
                "platform can post; consumer registered; connected".into(),
            )
        } else {
            fail(problems)
        }
    } else {
        let mut problems = Vec::new();
        if reg == Some(0) {
            problems.push(format!(
                "platform cannot post ({why}) but consumer {consumer} registered"
            ));
        }
        if conn.is_some() {
            problems.push(format!(
                "platform cannot post ({why}) but {vector} -> {consumer} connected"
            ));
        }
        if problems.is_empty() {
            (
                true,
                format!("platform cannot post ({why}); consumer not registered; no connection"),
            )
        } else {
            fail(problems)
        }
    }
}
