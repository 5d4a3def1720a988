//! KVM: a VM with an in-kernel irqchip, one vCPU, MSI routes and irqfds. The
//! vCPU runs only between `start-vm` and `stop-vm`, with the L2 program (`l2`).

use std::collections::BTreeMap;
use std::os::unix::io::AsRawFd;

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irqchip, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_IRQCHIP_IOAPIC, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::l2::L2;
use crate::sys::errno_str;

/// `_IO(KVMIO, 0x71)`.
const KVM_REINJECT_CONTROL: u64 = 0xae71;

/// First GSI the agent routes (0..23 are the IOAPIC pins).
const FIRST_GSI: u32 = 24;
/// MSI address of APIC ID 0, physical destination, fixed delivery.
pub const MSI_ADDR_APIC0: u32 = 0xfee0_0000;

/// One route of a VM: an MSI, or an IOAPIC pin (INTx).
#[derive(Debug, Clone)]
pub struct Route {
    pub gsi: u32,
    /// Interrupt vector in the MSI data (fixed delivery, edge), or in the
    /// IOAPIC pin's redirection entry (fixed, level).
    pub vector: u8,
    /// Scenario name of the device vector feeding it.
    pub source: String,
    /// The IOAPIC pin of an INTx route (= the GSI) or of a route a
    /// `route` step pointed at a pin (GSI unchanged); `None` for an MSI.
    pub pin: Option<u32>,
    /// Where a `route` step pointed it; `None` for the route `irqfd` made.
    pub to: Option<wire::RouteTo>,
}

/// The memory slot of the first device page mapped into a VM (for an L2
/// that acknowledges a level interrupt at its device); later ones follow.
const FIRST_BAR_SLOT: u32 = 1;

/// A device page mapped into the VM, and the writes that acknowledge a
/// level interrupt there.
pub struct LevelAck {
    /// The route vector whose handler acknowledges.
    pub vector: u8,
    /// Guest-physical address of the page in the VM.
    pub gpa: u64,
    /// (offset in the page, value) of each ack write.
    pub writes: Vec<(u16, u32)>,
}

pub struct Vm {
    // the vCPU goes first: it holds a reference on the VM. While the L2
    // runs, its thread owns the vCPU.
    vcpu: Option<VcpuFd>,
    vm: VmFd,
    kvm: Kvm,
    routes: Vec<Route>,
    /// Attached irqfds: source vector name -> GSI.
    pub irqfds: BTreeMap<String, u32>,
    /// Resample eventfds of attached resample irqfds, by source vector.
    pub resamplefds: BTreeMap<String, EventFd>,
    /// Device pages mapped into the VM and their ack writes, in slot order.
    pub level_acks: Vec<LevelAck>,
    /// The device pages' mappings in the agent, unmapped after the VM fd
    /// is closed (they keep the VFIO device open in the kernel).
    bar_maps: Vec<(usize, usize)>,
    /// The L2 program's memory and thread, from the first `start-vm` on.
    /// After the VM fd: its memory is unmapped after the VM is closed.
    pub l2: Option<L2>,
    /// The local APIC mode its L2 runs in (`create-vm`'s `apic`).
    pub apic: wire::L2Apic,
    /// Whether the VM has an in-kernel PIT (the first `pit-reinject`).
    pit: bool,
    /// (source, vector) of every route the VM had, old ones included.
    history: Vec<(String, u8)>,
}

impl Vm {
    pub fn create(apic: wire::L2Apic) -> Result<Vm, String> {
        let kvm = Kvm::new().map_err(|e| errno_str("open /dev/kvm", e.errno()))?;
        let vm = kvm
            .create_vm()
            .map_err(|e| errno_str("KVM_CREATE_VM", e.errno()))?;
        vm.create_irq_chip()
            .map_err(|e| errno_str("KVM_CREATE_IRQCHIP", e.errno()))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| errno_str("KVM_CREATE_VCPU", e.errno()))?;
        Ok(Vm {
            vcpu: Some(vcpu),
            vm,
            kvm,
            routes: Vec::new(),
            irqfds: BTreeMap::new(),
            resamplefds: BTreeMap::new(),
            level_acks: Vec::new(),
            bar_maps: Vec::new(),
            l2: None,
            apic,
            pit: false,
            history: Vec::new(),
        })
    }

    /// Run the L2 program on the vCPU in `mode` (see `wire::Step::StartVm`).
    pub fn start_l2(
        &mut self,
        mode: wire::L2Mode,
        period_ms: u32,
        tick: &mut dyn FnMut(),
    ) -> Result<(), String> {
        if self.l2.as_ref().is_some_and(L2::running) {
            return Err("its L2 is already running".into());
        }
        let vcpu = self.vcpu.take().ok_or("the VM has no vCPU")?;
        if self.l2.is_none() {
            match L2::prepare(&self.kvm, &self.vm, &vcpu, self.apic) {
                Ok(l2) => {
                    for a in &self.level_acks {
                        l2.set_level_ack(a);
                    }
                    self.l2 = Some(l2)
                }
                Err(e) => {
                    self.vcpu = Some(vcpu);
                    return Err(e);
                }
            }
        }
        let l2 = self.l2.as_mut().expect("prepared above");
        let r = l2.start(&self.vm, vcpu, mode, period_ms, tick);
        if r.is_err() && l2.running() {
            let (vcpu, _) = l2.stop(&self.vm);
            let at = vcpu
                .as_ref()
                .and_then(|v| v.get_regs().ok())
                .map(|r| format!("; L2 at rip {:#x} rflags {:#x}", r.rip, r.rflags))
                .unwrap_or_default();
            self.vcpu = vcpu;
            return r
                .map_err(|e| format!("{e}{at}; exceptions {:?}; {}", l2.exceptions(), l2.stats()));
        }
        r
    }

    /// Park the L2 and take the vCPU back from its thread.
    pub fn stop_l2(&mut self) -> Result<(), String> {
        let l2 = self
            .l2
            .as_mut()
            .filter(|l| l.running())
            .ok_or("its L2 is not running")?;
        let (vcpu, r) = l2.stop(&self.vm);
        self.vcpu = vcpu;
        let exceptions = l2.exceptions();
        r?;
        if !exceptions.is_empty() {
            return Err(format!("L2 took exceptions (vector: count) {exceptions:?}"));
        }
        Ok(())
    }

    /// Make the running L2 send itself IPIs (see `L2::ipi`).
    pub fn ipi(
        &mut self,
        vector: u8,
        count: u32,
        tick: &mut dyn FnMut(),
    ) -> Result<(u64, u64), String> {
        let l2 = self
            .l2
            .as_mut()
            .filter(|l| l.running())
            .ok_or("its L2 is not running")?;
        l2.ipi(&self.vm, vector, count, tick)
    }

    /// PIT reinjection on or off (see `wire::Step::PitReinject`); the PIT
    /// is created on first use, with reinjection on.
    pub fn set_pit_reinject(&mut self, reinject: bool) -> Result<(), String> {
        if !self.pit {
            self.vm
                .create_pit2(kvm_bindings::kvm_pit_config::default())
                .map_err(|e| errno_str("KVM_CREATE_PIT2", e.errno()))?;
            self.pit = true;
        }
        let ctl = kvm_bindings::kvm_reinject_control {
            pit_reinject: u8::from(reinject),
            reserved: [0; 31],
        };
        // SAFETY: KVM_REINJECT_CONTROL reads a kvm_reinject_control.
        let r = unsafe {
            libc::ioctl(
                self.vm.as_raw_fd(),
                KVM_REINJECT_CONTROL as _,
                &ctl as *const kvm_bindings::kvm_reinject_control,
            )
        };
        if r < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            return Err(errno_str("KVM_REINJECT_CONTROL", errno));
        }
        Ok(())
    }

    /// The L2, when it is running.
    pub fn running_l2(&self) -> Option<&L2> {
        self.l2.as_ref().filter(|l| l.running())
    }

    /// Route for `source`, creating it (with `vector`) if it does not exist
    /// yet: an MSI route, or with `pin` an IOAPIC pin whose redirection
    /// entry is programmed (fixed, level, physical destination APIC ID 0).
    /// A pin another source already routes is shared (its vector stays).
    pub fn route_for(
        &mut self,
        source: &str,
        vector: u8,
        pin: Option<u32>,
    ) -> Result<Route, String> {
        if let Some(r) = self.routes.iter().find(|r| r.source == source) {
            return Ok(r.clone());
        }
        let mut routes = self.routes.clone();
        let route = match pin {
            None => {
                // a rerouted route keeps its GSI, a pin or not
                let gsi =
                    FIRST_GSI + self.routes.iter().filter(|r| r.gsi >= FIRST_GSI).count() as u32;
                Route {
                    gsi,
                    vector,
                    source: source.to_string(),
                    pin: None,
                    to: None,
                }
            }
            Some(pin) => {
                let vector = self
                    .routes
                    .iter()
                    .find(|r| r.pin == Some(pin))
                    .map_or(vector, |r| r.vector);
                self.program_ioapic_pin(pin, vector, true)?;
                Route {
                    gsi: pin,
                    vector,
                    source: source.to_string(),
                    pin: Some(pin),
                    to: None,
                }
            }
        };
        routes.push(route);
        self.commit(routes)?;
        Ok(self.routes.last().cloned().expect("just pushed"))
    }

    /// Point the route of `source` elsewhere (see `wire::Step::Route`),
    /// keeping its GSI, and set the VM's whole table again.
    pub fn reroute(
        &mut self,
        source: &str,
        to: wire::RouteTo,
        vector: u8,
    ) -> Result<Route, String> {
        let i = self
            .routes
            .iter()
            .position(|r| r.source == source)
            .ok_or_else(|| format!("no route for {source} in this VM (no irqfd?)"))?;
        let pin = match to {
            wire::RouteTo::Ioapic => {
                let others = |p: u32| {
                    self.routes
                        .iter()
                        .any(|r| r.source != source && r.pin == Some(p))
                };
                let pin = wire::INTX_PINS
                    .clone()
                    .find(|p| !others(*p))
                    .ok_or("no free IOAPIC pin")?;
                self.program_ioapic_pin(pin, vector, false)?;
                Some(pin)
            }
            _ => None,
        };
        let mut routes = self.routes.clone();
        routes[i] = Route {
            vector,
            pin,
            to: Some(to),
            ..routes[i].clone()
        };
        self.commit(routes)?;
        Ok(self.routes[i].clone())
    }

    /// KVM_SET_GSI_ROUTING with `routes` (a removed route left out), which
    /// become the VM's routes.
    fn commit(&mut self, routes: Vec<Route>) -> Result<(), String> {
        for r in &routes {
            if !self
                .history
                .iter()
                .any(|(s, v)| *s == r.source && *v == r.vector)
            {
                self.history.push((r.source.clone(), r.vector));
            }
        }
        // a pin shared by several sources is one entry: KVM refuses a GSI
        // mapped twice to the same irqchip
        let entries: Vec<&Route> = routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.to != Some(wire::RouteTo::None))
            .filter(|(i, r)| r.pin.is_none() || !routes[..*i].iter().any(|o| o.pin == r.pin))
            .map(|(_, r)| r)
            .collect();
        let mut table =
            KvmIrqRouting::new(entries.len()).map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))?;
        for (slot, r) in table.as_mut_slice().iter_mut().zip(entries) {
            *slot = match r.pin {
                None => {
                    let mut e = kvm_irq_routing_entry {
                        gsi: r.gsi,
                        type_: KVM_IRQ_ROUTING_MSI,
                        ..Default::default()
                    };
                    let dest = match r.to {
                        Some(wire::RouteTo::MsiNoVcpu) => u32::from(wire::NO_VCPU_APIC_ID),
                        _ => 0,
                    };
                    e.u.msi.address_lo = MSI_ADDR_APIC0 | dest << 12;
                    e.u.msi.address_hi = 0;
                    e.u.msi.data = u32::from(r.vector);
                    e
                }
                Some(pin) => {
                    let mut e = kvm_irq_routing_entry {
                        gsi: r.gsi,
                        type_: KVM_IRQ_ROUTING_IRQCHIP,
                        ..Default::default()
                    };
                    e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
                    e.u.irqchip.pin = pin;
                    e
                }
            };
        }
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| errno_str("KVM_SET_GSI_ROUTING", e.errno()))?;
        self.routes = routes;
        Ok(())
    }

    /// The IOAPIC pin's redirection entry: `vector`, fixed delivery,
    /// physical destination APIC ID 0, level- or edge-triggered, unmasked
    /// (what the L2's OS would program; done by the agent through
    /// KVM_SET_IRQCHIP).
    fn program_ioapic_pin(&mut self, pin: u32, vector: u8, level: bool) -> Result<(), String> {
        let mut chip = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        self.vm
            .get_irqchip(&mut chip)
            .map_err(|e| errno_str("KVM_GET_IRQCHIP(IOAPIC)", e.errno()))?;
        const LEVEL: u64 = 1 << 15;
        // SAFETY: chip_id IOAPIC: the kernel filled the ioapic member.
        unsafe {
            let e = chip
                .chip
                .ioapic
                .redirtbl
                .get_mut(pin as usize)
                .ok_or_else(|| format!("no IOAPIC pin {pin}"))?;
            e.bits = u64::from(vector) | if level { LEVEL } else { 0 };
        }
        self.vm
            .set_irqchip(&chip)
            .map_err(|e| errno_str("KVM_SET_IRQCHIP(IOAPIC)", e.errno()))
    }

    /// Map a device page (from the agent's mapping at `host`, `len` bytes)
    /// into the VM and have the L2's handler of `vector` make `writes` there
    /// before its EOI. The VM owns the mapping from now on.
    pub fn add_level_ack(
        &mut self,
        vector: u8,
        host: (usize, usize),
        writes: Vec<(u16, u32)>,
    ) -> Result<(), String> {
        let slot = FIRST_BAR_SLOT + self.bar_maps.len() as u32;
        let gpa = crate::l2::layout::BAR_PAGES + 0x1000 * u64::from(slot - FIRST_BAR_SLOT);
        self.bar_maps.push(host);
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: host.1 as u64,
            userspace_addr: host.0 as u64,
        };
        // SAFETY: the mapping outlives the VM fd (unmapped in Drop after it).
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| errno_str("KVM_SET_USER_MEMORY_REGION(BAR0 page)", e.errno()))?;
        let ack = LevelAck {
            vector,
            gpa,
            writes,
        };
        if let Some(l2) = &self.l2 {
            l2.set_level_ack(&ack);
        }
        self.level_acks.push(ack);
        Ok(())
    }

    /// KVM_IRQFD with KVM_IRQFD_FLAG_RESAMPLE: KVM signals the new resample
    /// eventfd when the VM EOIs the GSI's level interrupt.
    pub fn irqfd_resample(&mut self, source: &str, fd: &EventFd, gsi: u32) -> Result<(), String> {
        let resample = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| crate::sys::errstr("eventfd", &e))?;
        self.vm
            .register_irqfd_with_resample(fd, &resample, gsi)
            .map_err(|e| errno_str("KVM_IRQFD(RESAMPLE)", e.errno()))?;
        self.irqfds.insert(source.to_string(), gsi);
        self.resamplefds.insert(source.to_string(), resample);
        Ok(())
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Every vector a route of `source` had in this VM, the current one too.
    pub fn vectors_of(&self, source: &str) -> Vec<u8> {
        self.history
            .iter()
            .filter(|(s, _)| s == source)
            .map(|(_, v)| *v)
            .collect()
    }

    pub fn irqfd(&mut self, source: &str, fd: &EventFd, gsi: u32) -> Result<(), String> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(|e| errno_str("KVM_IRQFD", e.errno()))?;
        self.irqfds.insert(source.to_string(), gsi);
        Ok(())
    }

    pub fn irqfd_deassign(&mut self, source: &str, fd: &EventFd) -> Result<(), String> {
        let gsi = self
            .irqfds
            .get(source)
            .copied()
            .or_else(|| {
                self.routes
                    .iter()
                    .find(|r| r.source == source)
                    .map(|r| r.gsi)
            })
            .ok_or_else(|| format!("no irqfd for {source} in this VM"))?;
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(|e| errno_str("KVM_IRQFD(DEASSIGN)", e.errno()))?;
        self.irqfds.remove(source);
        self.resamplefds.remove(source);
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(l2) = self.l2.as_mut().filter(|l| l.running()) {
            let (vcpu, r) = l2.stop(&self.vm);
            if let Err(e) = r {
                crate::say!("stopping L2: {e}");
            }
            drop(vcpu);
        }
        self.vcpu.take();
    }
}

impl Vm {
    /// Close the VM, then unmap the device pages it had in its memory.
    pub fn close(self) {
        let maps = self.bar_maps.clone();
        drop(self);
        for (ptr, len) in maps {
            // SAFETY: our own mappings; the VM that used them is closed.
            unsafe { libc::munmap(ptr as *mut libc::c_void, len) };
        }
    }
}
