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
}

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
}

/// Placeholder return value of a register/connect whose return was not traced.
pub const RET_MISSING: i64 = i64::MIN;

impl Attributor {
    pub fn reset(&mut self) {
        self.producers.clear();
        self.consumers.clear();
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
        for rec in recs {
            match &rec.event {
                KEvent::ProdReg { ptr, vfio_name, .. } => {
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
                    if self.producers.contains_key(ptr) {
                        obs.events.push(BypassEvent::ProducerUnregistered {
                            producer: self.prod(*ptr),
                        })
                    }
                }
                KEvent::ConsReg { ptr, .. } => {
                    let name = names
                        .consumer
                        .clone()
                        .unwrap_or_else(|| UNKNOWN.to_string());
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
                        obs.events.push(BypassEvent::ConsumerUnregistered {
                            consumer: self.cons(*ptr),
                        })
                    }
                }
                KEvent::Connect { cons, prod } => {
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
}
