//! Turning kernel events (pointers) into scenario-named [`BypassEvent`]s.
//!
//! Producers are named at registration: the n-th producer registered during an
//! `enable-msi` step is the step's n-th vector. A consumer registered during an
//! `irqfd` step is `<vm>:<vector>`. Everything later (unregister, connect,
//! disconnect) maps the kernel pointer back to the name learned then.

use std::collections::{BTreeMap, HashMap};

use wire::BypassEvent;

use crate::trace::{KEvent, TraceRecord};

/// Name for a kernel object the agent did not see being registered.
pub const UNKNOWN: &str = wire::UNKNOWN_NAME;

/// What the running step expects to register.
#[derive(Debug, Default, Clone)]
pub struct StepNames {
    /// Names for producers registered during the step, in registration order.
    pub producers: Vec<String>,
    /// Name for a consumer registered during the step.
    pub consumer: Option<String>,
    /// When `producers` is empty: the job's VFIO devices, (L1 address,
    /// scenario name), to name producers someone else registers (an L1
    /// QEMU assigning them to a real L2) by their VFIO IRQ name.
    pub vfio_devices: Vec<(String, String)>,
    /// The real L2 whose VMM (QEMU in L1) runs during the step: the KVM
    /// irqfds it registers are consumers `<l2>:<vector>`, named by the
    /// producer on the same eventfd (or the one they connect to), else
    /// [`NO_PRODUCER`] (VFIO INTx: a resample irqfd, no producer).
    pub l2: Option<String>,
}

/// The vector part of an L2 VMM's consumer that no producer pairs with
/// (then `-<n>`: the n-th such consumer of the job).
pub const NO_PRODUCER: &str = "no-producer";

/// `vfio-msix[3](0000:00:04.0)` -> `nic0/msix3` for a device named `nic0` at that address.
pub fn name_from_vfio(vfio_name: &str, devices: &[(String, String)]) -> Option<String> {
    let rest = vfio_name.strip_prefix("vfio-")?;
    let (kind, rest) = rest.split_once('[')?;
    let (n, rest) = rest.split_once("](")?;
    let bdf = rest.strip_suffix(')')?;
    let n: u32 = n.parse().ok()?;
    let (_, dev) = devices.iter().find(|(b, _)| b == bdf)?;
    Some(format!("{dev}/{kind}{n}"))
}

/// What one step's trace said.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Observation {
    pub events: Vec<BypassEvent>,
    /// Number of consumer registrations seen.
    pub consumers_registered: usize,
    /// `kvm_msi_set_irq` events by vector (low byte of the MSI data).
    pub msi_by_vec: BTreeMap<u32, u64>,
    /// Events the ring buffer dropped.
    pub lost: u64,
}

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
enum Kind {
    Prod,
    Cons,
    Connect,
}

type Pending = HashMap<(Kind, u32), Vec<usize>>;

/// A kretprobe fired: fill the return value of the newest matching entry.
fn set_ret(obs: &mut Observation, pending: &mut Pending, k: Kind, pid: u32, r: i64) {
    if let Some(i) = pending.get_mut(&(k, pid)).and_then(|v| v.pop()) {
        match &mut obs.events[i] {
            BypassEvent::ProducerRegistered { ret, .. }
            | BypassEvent::ConsumerRegistered { ret, .. }
            | BypassEvent::Connected { ret, .. } => *ret = r,
            _ => {}
        }
    }
}

/// Pointer -> name maps for the scenario; reset at each job.
#[derive(Default)]
pub struct Attributor {
    producers: HashMap<u64, String>,
    consumers: HashMap<u64, String>,
    /// registered producers' eventfds -> their names, for consumers
    /// registered by an L2's VMM (an unregistered producer's eventfd may
    /// be freed and its address reused: it leaves the map)
    producer_eventfds: HashMap<u64, String>,
    /// producer -> its eventfd
    eventfd_of: HashMap<u64, u64>,
    /// consumers of an L2's VMM named `no-producer-<n>` so far
    no_producer: usize,
}

/// Placeholder return value of a register/connect whose return was not traced.
pub const RET_MISSING: i64 = i64::MIN;

impl Attributor {
    pub fn reset(&mut self) {
        self.producers.clear();
        self.consumers.clear();
        self.producer_eventfds.clear();
        self.eventfd_of.clear();
        self.no_producer = 0;
    }

    fn prod(&self, p: u64) -> String {
        self.producers
            .get(&p)
            .cloned()
            .unwrap_or_else(|| UNKNOWN.to_string())
    }

    fn cons(&self, p: u64) -> String {
        self.consumers
            .get(&p)
            .cloned()
            .unwrap_or_else(|| UNKNOWN.to_string())
    }

    /// Attribute a step's records (kernel order).
    pub fn process(&mut self, recs: &[TraceRecord], names: &StepNames) -> Observation {
        let mut obs = Observation::default();
        let mut next_prod = names.producers.iter();
        // entries waiting for their kretprobe: (kind, pid) -> indices into obs.events
        let mut pending: Pending = HashMap::new();
        // an L2 VMM's consumers not yet named by a producer: ptr -> their events' indices
        let mut provisional: HashMap<u64, Vec<usize>> = HashMap::new();
        // an L2's VMM may register a vector's irqfd before VFIO's producer
        // on the same eventfd: for each consumer registration (by record
        // index), the step's next producer on its eventfd. Only on the same
        // eventfd, not one at the same address after its file was closed
        // (then freed, its memory reused by the next eventfd): QEMU
        // closes an INTx irqfd's eventfd and the next eventfd it opens for
        // an MSI-X vector may get its address, which named the INTx
        // irqfd after that vector in some runs and not in others.
        let mut later_of: HashMap<usize, String> = HashMap::new();
        if names.l2.is_some() {
            let mut later: HashMap<u64, String> = HashMap::new();
            for (i, rec) in recs.iter().enumerate().rev() {
                match &rec.event {
                    KEvent::ProdReg {
                        eventfd: Some(e),
                        vfio_name: Some(v),
                        ..
                    } => {
                        if let Some(n) = name_from_vfio(v, &names.vfio_devices) {
                            later.insert(*e, n);
                        }
                    }
                    KEvent::EventfdRelease { ctx } => {
                        later.remove(ctx);
                    }
                    KEvent::ConsReg {
                        eventfd: Some(e), ..
                    } => {
                        if let Some(n) = later.get(e) {
                            later_of.insert(i, n.clone());
                        }
                    }
                    _ => {}
                }
            }
        }
        for (i, rec) in recs.iter().enumerate() {
            match &rec.event {
                KEvent::ProdReg {
                    ptr,
                    vfio_name,
                    eventfd,
                } => {
                    let by_vfio = || {
                        vfio_name
                            .as_deref()
                            .and_then(|v| name_from_vfio(v, &names.vfio_devices))
                    };
                    let name = if names.producers.is_empty() {
                        by_vfio()
                    } else {
                        next_prod.next().cloned()
                    }
                    .unwrap_or_else(|| UNKNOWN.to_string());
                    self.producers.insert(*ptr, name.clone());
                    if let Some(e) = eventfd {
                        self.producer_eventfds.insert(*e, name.clone());
                        self.eventfd_of.insert(*ptr, *e);
                    }
                    pending
                        .entry((Kind::Prod, rec.pid))
                        .or_default()
                        .push(obs.events.len());
                    obs.events.push(BypassEvent::ProducerRegistered {
                        producer: name,
                        ret: RET_MISSING,
                    });
                }
                KEvent::ProdRegRet { ret } => {
                    set_ret(&mut obs, &mut pending, Kind::Prod, rec.pid, *ret)
                }
                // Unregistering what was never registered is a no-op in the kernel
                // (KVM calls it for every irqfd it shuts down): not reported.
                KEvent::ProdUnreg { ptr } => {
                    if let Some(e) = self.eventfd_of.remove(ptr) {
                        self.producer_eventfds.remove(&e);
                    }
                    if self.producers.contains_key(ptr) {
                        obs.events.push(BypassEvent::ProducerUnregistered {
                            producer: self.prod(*ptr),
                        })
                    }
                }
                KEvent::ConsReg { ptr, eventfd } => {
                    // a new consumer: a gone one's memory may have been reused
                    provisional.remove(ptr);
                    let name = match (&names.consumer, &names.l2) {
                        (Some(c), _) => c.clone(),
                        (None, Some(l2)) => match eventfd
                            .and_then(|e| self.producer_eventfds.get(&e))
                            .or_else(|| later_of.get(&i))
                        {
                            Some(p) => format!("{l2}:{p}"),
                            None => {
                                provisional.insert(*ptr, vec![obs.events.len()]);
                                self.no_producer += 1;
                                format!("{l2}:{NO_PRODUCER}-{}", self.no_producer)
                            }
                        },
                        (None, None) => UNKNOWN.to_string(),
                    };
                    self.consumers.insert(*ptr, name.clone());
                    obs.consumers_registered += 1;
                    pending
                        .entry((Kind::Cons, rec.pid))
                        .or_default()
                        .push(obs.events.len());
                    obs.events.push(BypassEvent::ConsumerRegistered {
                        consumer: name,
                        ret: RET_MISSING,
                    });
                }
                KEvent::ConsRegRet { ret } => {
                    set_ret(&mut obs, &mut pending, Kind::Cons, rec.pid, *ret)
                }
                KEvent::ConsUnreg { ptr } => {
                    if self.consumers.contains_key(ptr) {
                        // it never connected and never will: it keeps its
                        // name, and a consumer later allocated at its
                        // address (KVM frees its irqfds) is another one
                        provisional.remove(ptr);
                        obs.events.push(BypassEvent::ConsumerUnregistered {
                            consumer: self.cons(*ptr),
                        })
                    }
                }
                KEvent::Connect { cons, prod } => {
                    // without eventfds (kernels before 6.17) an L2 VMM's
                    // consumer is named by the producer it connects to
                    if let (Some(l2), Some(idx)) = (&names.l2, provisional.remove(cons)) {
                        let name = format!("{l2}:{}", self.prod(*prod));
                        for i in idx {
                            match &mut obs.events[i] {
                                BypassEvent::ConsumerRegistered { consumer, .. }
                                | BypassEvent::ConsumerUnregistered { consumer } => {
                                    *consumer = name.clone()
                                }
                                _ => {}
                            }
                        }
                        self.consumers.insert(*cons, name);
                    }
                    pending
                        .entry((Kind::Connect, rec.pid))
                        .or_default()
                        .push(obs.events.len());
                    obs.events.push(BypassEvent::Connected {
                        producer: self.prod(*prod),
                        consumer: self.cons(*cons),
                        ret: RET_MISSING,
                    });
                }
                KEvent::ConnectRet { ret } => {
                    set_ret(&mut obs, &mut pending, Kind::Connect, rec.pid, *ret)
                }
                KEvent::Disconnect { cons, prod } => obs.events.push(BypassEvent::Disconnected {
                    producer: self.prod(*prod),
                    consumer: self.cons(*cons),
                }),
                // a registered producer holds its eventfd: nothing to forget
                KEvent::EventfdRelease { .. } => {}
                KEvent::Msi { vec, .. } => *obs.msi_by_vec.entry(*vec).or_default() += 1,
                KEvent::Lost { count } => obs.lost += count,
                // level-interrupt accounting: read by the fire step itself
                KEvent::SetIrq { .. }
                | KEvent::AckIrq { .. }
                | KEvent::IntxUnmask
                | KEvent::AvicEoiTrap { .. } => {}
            }
        }
        obs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::parse_line;

    fn recs(lines: &[&str]) -> Vec<TraceRecord> {
        lines.iter().map(|l| parse_line(l).unwrap()).collect()
    }

    #[test]
    fn producer_then_consumer_connects() {
        let mut a = Attributor::default();
        let enable = recs(&[
            " testbed-agent-1 [000] ..... 1.0: prod_reg: (irq_bypass_register_producer+0x0/0x1 [irqbypass]) ptr=0xa0 eventfd=0xe0",
            " testbed-agent-1 [000] ..... 1.1: prod_reg_ret: (vfio_msi_set_vector_signal+0x1/0x2 [vfio_pci_core] <- irq_bypass_register_producer) ret=0",
        ]);
        let o = a.process(
            &enable,
            &StepNames {
                producers: vec!["dev0/msi0".into()],
                consumer: None,
                ..Default::default()
            },
        );
        assert_eq!(
            o.events,
            vec![BypassEvent::ProducerRegistered {
                producer: "dev0/msi0".into(),
                ret: 0
            }]
        );

        let irqfd = recs(&[
            " testbed-agent-1 [000] ..... 2.0: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc0 eventfd=0xe0",
            " testbed-agent-1 [000] ..... 2.1: kvm_connect: (kvm_arch_irq_bypass_add_producer+0x0/0x1 [kvm]) cons=0xc0 prod=0xa0",
            " testbed-agent-1 [000] ..... 2.2: kvm_connect_ret: (irq_bypass_register_consumer+0x1/0x2 [irqbypass] <- kvm_arch_irq_bypass_add_producer) ret=0",
            " testbed-agent-1 [000] ..... 2.3: cons_reg_ret: (kvm_irqfd+0x1/0x2 [kvm] <- irq_bypass_register_consumer) ret=0",
        ]);
        let o = a.process(
            &irqfd,
            &StepNames {
                producers: vec![],
                consumer: Some("vm0:dev0/msi0".into()),
                ..Default::default()
            },
        );
        assert_eq!(o.consumers_registered, 1);
        assert_eq!(
            o.events,
            vec![
                BypassEvent::ConsumerRegistered {
                    consumer: "vm0:dev0/msi0".into(),
                    ret: 0
                },
                BypassEvent::Connected {
                    producer: "dev0/msi0".into(),
                    consumer: "vm0:dev0/msi0".into(),
                    ret: 0
                },
            ]
        );

        let close = recs(&[
            " testbed-agent-1 [000] ..... 3.0: prod_unreg: (irq_bypass_unregister_producer+0x0/0x1 [irqbypass]) ptr=0xa0",
            " testbed-agent-1 [000] ..... 3.1: kvm_disconnect: (kvm_arch_irq_bypass_del_producer+0x0/0x1 [kvm]) cons=0xc0 prod=0xa0",
            " kworker/0:1-7 [000] ..... 3.2: cons_unreg: (irq_bypass_unregister_consumer+0x0/0x1 [irqbypass]) ptr=0xc0",
            " kworker/0:1-7 [000] ..... 3.3: cons_unreg: (irq_bypass_unregister_consumer+0x0/0x1 [irqbypass]) ptr=0xdead",
        ]);
        let o = a.process(&close, &StepNames::default());
        assert_eq!(
            o.events,
            vec![
                BypassEvent::ProducerUnregistered {
                    producer: "dev0/msi0".into()
                },
                BypassEvent::Disconnected {
                    producer: "dev0/msi0".into(),
                    consumer: "vm0:dev0/msi0".into()
                },
                BypassEvent::ConsumerUnregistered {
                    consumer: "vm0:dev0/msi0".into()
                },
            ]
        );
    }

    #[test]
    fn several_vectors_in_order_and_msi_counts() {
        let mut a = Attributor::default();
        let r = recs(&[
            " a-1 [000] ..... 1.0: prod_reg: (x) ptr=0x1",
            " a-1 [000] ..... 1.1: prod_reg_ret: (y <- x) ret=0",
            " a-1 [000] ..... 1.2: prod_reg: (x) ptr=0x2",
            " a-1 [000] ..... 1.3: prod_reg_ret: (y <- x) ret=-16",
            " <idle>-0 [000] d.h2. 1.4: kvm_msi_set_irq: dst 0 vec 64 (Fixed|physical|edge)",
            " <idle>-0 [000] d.h2. 1.5: kvm_msi_set_irq: dst 0 vec 64 (Fixed|physical|edge)",
            " <idle>-0 [000] d.h2. 1.6: kvm_msi_set_irq: dst 0 vec 65 (Fixed|physical|edge)",
        ]);
        let o = a.process(
            &r,
            &StepNames {
                producers: vec!["dev0/msi0".into(), "dev0/msi1".into()],
                consumer: None,
                ..Default::default()
            },
        );
        assert_eq!(
            o.events,
            vec![
                BypassEvent::ProducerRegistered {
                    producer: "dev0/msi0".into(),
                    ret: 0
                },
                BypassEvent::ProducerRegistered {
                    producer: "dev0/msi1".into(),
                    ret: -16
                },
            ]
        );
        assert_eq!(o.msi_by_vec.get(&64), Some(&2));
        assert_eq!(o.msi_by_vec.get(&65), Some(&1));
        assert_eq!(o.consumers_registered, 0);
    }

    #[test]
    fn an_l2_vmm_consumers_are_named_by_their_producer() {
        let mut a = Attributor::default();
        let names = StepNames {
            vfio_devices: vec![("0000:00:04.0".into(), "nic0".into())],
            l2: Some("l2".into()),
            ..Default::default()
        };
        // QEMU: INTx resample irqfd (no producer), then MSI-X vector 0's
        // irqfd before VFIO's producer on the same eventfd
        let r = recs(&[
            " qemu-9 [000] ..... 1.0: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc1 eventfd=0xe1",
            " qemu-9 [000] ..... 1.1: cons_reg_ret: (kvm_irqfd+0x1/0x2 [kvm] <- irq_bypass_register_consumer) ret=0",
            " qemu-9 [000] ..... 1.2: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc0 eventfd=0xe0",
            " qemu-9 [000] ..... 1.3: cons_reg_ret: (kvm_irqfd+0x1/0x2 [kvm] <- irq_bypass_register_consumer) ret=0",
            " qemu-9 [000] ..... 1.4: prod_reg: (irq_bypass_register_producer+0x0/0x1 [irqbypass]) ptr=0xa0 eventfd=0xe0 vfio_name=\"vfio-msix[0](0000:00:04.0)\"",
            " qemu-9 [000] ..... 1.5: kvm_connect: (kvm_arch_irq_bypass_add_producer+0x0/0x1 [kvm]) cons=0xc0 prod=0xa0",
            " qemu-9 [000] ..... 1.6: kvm_connect_ret: (x <- kvm_arch_irq_bypass_add_producer) ret=0",
            " qemu-9 [000] ..... 1.7: prod_reg_ret: (y <- irq_bypass_register_producer) ret=0",
            " qemu-9 [000] ..... 1.8: cons_unreg: (irq_bypass_unregister_consumer+0x0/0x1 [irqbypass]) ptr=0xc1",
        ]);
        let o = a.process(&r, &names);
        assert_eq!(
            o.events,
            vec![
                BypassEvent::ConsumerRegistered {
                    consumer: "l2:no-producer-1".into(),
                    ret: 0
                },
                BypassEvent::ConsumerRegistered {
                    consumer: "l2:nic0/msix0".into(),
                    ret: 0
                },
                BypassEvent::ProducerRegistered {
                    producer: "nic0/msix0".into(),
                    ret: 0
                },
                BypassEvent::Connected {
                    producer: "nic0/msix0".into(),
                    consumer: "l2:nic0/msix0".into(),
                    ret: 0
                },
                BypassEvent::ConsumerUnregistered {
                    consumer: "l2:no-producer-1".into()
                },
            ]
        );
        // the producer goes, its eventfd's address is reused for another irqfd
        let r = recs(&[
            " qemu-9 [000] ..... 2.0: prod_unreg: (irq_bypass_unregister_producer+0x0/0x1 [irqbypass]) ptr=0xa0",
            " qemu-9 [000] ..... 2.1: kvm_disconnect: (kvm_arch_irq_bypass_del_producer+0x0/0x1 [kvm]) cons=0xc0 prod=0xa0",
            " qemu-9 [000] ..... 2.2: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc2 eventfd=0xe0",
        ]);
        let o = a.process(&r, &names);
        assert_eq!(
            o.events[2],
            BypassEvent::ConsumerRegistered {
                consumer: "l2:no-producer-2".into(),
                ret: RET_MISSING
            }
        );
    }

    #[test]
    fn an_l2_vmm_consumer_on_a_freed_eventfd_is_not_named_by_the_next_one_there() {
        let mut a = Attributor::default();
        let names = StepNames {
            vfio_devices: vec![("0000:00:04.0".into(), "nic0".into())],
            l2: Some("l2".into()),
            ..Default::default()
        };
        // QEMU: an INTx irqfd comes and goes and its eventfd is closed; the
        // eventfd of MSI-X vector 1 gets its address. Then the vector's
        // irqfd on a live eventfd is re-assigned before VFIO's producer.
        let r = recs(&[
            " qemu-9 [000] ..... 1.0: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc1 eventfd=0xe0",
            " qemu-9 [000] ..... 1.1: cons_unreg: (irq_bypass_unregister_consumer+0x0/0x1 [irqbypass]) ptr=0xc1",
            " qemu-9 [000] ..... 1.2: eventfd_release: (eventfd_release+0x0/0x20) ctx=0xe0",
            " qemu-9 [000] ..... 1.3: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc2 eventfd=0xe0",
            " qemu-9 [000] ..... 1.4: cons_unreg: (irq_bypass_unregister_consumer+0x0/0x1 [irqbypass]) ptr=0xc2",
            " qemu-9 [000] ..... 1.5: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc3 eventfd=0xe0",
            " qemu-9 [000] ..... 1.6: prod_reg: (irq_bypass_register_producer+0x0/0x1 [irqbypass]) ptr=0xa0 eventfd=0xe0 vfio_name=\"vfio-msix[1](0000:00:04.0)\"",
        ]);
        let o = a.process(&r, &names);
        let consumers: Vec<&str> = o
            .events
            .iter()
            .filter_map(|e| match e {
                BypassEvent::ConsumerRegistered { consumer, .. }
                | BypassEvent::ConsumerUnregistered { consumer } => Some(consumer.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            consumers,
            [
                "l2:no-producer-1",
                "l2:no-producer-1",
                "l2:nic0/msix1",
                "l2:nic0/msix1",
                "l2:nic0/msix1"
            ]
        );
    }

    #[test]
    fn an_l2_vmm_consumer_gone_before_another_at_its_address_connects_keeps_its_name() {
        for eventfds in [true, false] {
            let mut a = Attributor::default();
            let names = StepNames {
                vfio_devices: vec![("0000:00:04.0".into(), "nic0".into())],
                l2: Some("l2".into()),
                ..Default::default()
            };
            // an INTx irqfd comes and goes; KVM's next irqfd (MSI-X vector
            // 1, on another eventfd) gets the freed irqfd's address
            let ev = |e: &str| {
                if eventfds {
                    format!(" eventfd={e}")
                } else {
                    String::new()
                }
            };
            let lines = [
                format!(" qemu-9 [000] ..... 1.0: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc0{}", ev("0xe1")),
                " qemu-9 [000] ..... 1.1: cons_unreg: (irq_bypass_unregister_consumer+0x0/0x1 [irqbypass]) ptr=0xc0".to_string(),
                format!(" qemu-9 [000] ..... 1.2: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc0{}", ev("0xe0")),
                format!(" qemu-9 [000] ..... 1.3: prod_reg: (irq_bypass_register_producer+0x0/0x1 [irqbypass]) ptr=0xa0{} vfio_name=\"vfio-msix[1](0000:00:04.0)\"", ev("0xe0")),
                " qemu-9 [000] ..... 1.4: kvm_connect: (kvm_arch_irq_bypass_add_producer+0x0/0x1 [kvm]) cons=0xc0 prod=0xa0".to_string(),
            ];
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let o = a.process(&recs(&lines), &names);
            let consumers: Vec<&str> = o
                .events
                .iter()
                .filter_map(|e| match e {
                    BypassEvent::ConsumerRegistered { consumer, .. }
                    | BypassEvent::ConsumerUnregistered { consumer } => Some(consumer.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(
                consumers,
                ["l2:no-producer-1", "l2:no-producer-1", "l2:nic0/msix1"],
                "eventfds traced: {eventfds}"
            );
        }
    }

    #[test]
    fn without_eventfds_an_l2_vmm_consumer_is_named_when_it_connects() {
        let mut a = Attributor::default();
        let names = StepNames {
            vfio_devices: vec![("0000:00:04.0".into(), "nic0".into())],
            l2: Some("l2".into()),
            ..Default::default()
        };
        let r = recs(&[
            " qemu-9 [000] ..... 1.0: cons_reg: (irq_bypass_register_consumer+0x0/0x1 [irqbypass]) ptr=0xc0",
            " qemu-9 [000] ..... 1.1: prod_reg: (irq_bypass_register_producer+0x0/0x1 [irqbypass]) ptr=0xa0 vfio_name=\"vfio-msix[2](0000:00:04.0)\"",
            " qemu-9 [000] ..... 1.2: kvm_connect: (kvm_arch_irq_bypass_add_producer+0x0/0x1 [kvm]) cons=0xc0 prod=0xa0",
        ]);
        let o = a.process(&r, &names);
        assert_eq!(
            o.events[0],
            BypassEvent::ConsumerRegistered {
                consumer: "l2:nic0/msix2".into(),
                ret: RET_MISSING
            }
        );
        assert_eq!(
            o.events[2],
            BypassEvent::Connected {
                producer: "nic0/msix2".into(),
                consumer: "l2:nic0/msix2".into(),
                ret: RET_MISSING
            }
        );
    }
}
