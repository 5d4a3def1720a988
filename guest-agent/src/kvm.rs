//! KVM: a VM with an in-kernel irqchip, one vCPU, MSI routes and irqfds. The
//! vCPU runs only between `start-vm` and `stop-vm`, with the L2 program (`l2`).

use std::collections::BTreeMap;

use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::l2::L2;
use crate::sys::errno_str;

/// First GSI the agent routes (0..23 are the IOAPIC pins).
const FIRST_GSI: u32 = 24;
/// MSI address of APIC ID 0, physical destination, fixed delivery.
pub const MSI_ADDR_APIC0: u32 = 0xfee0_0000;

/// One MSI route of a VM.
#[derive(Debug, Clone)]
pub struct Route {
    pub gsi: u32,
    /// Interrupt vector in the MSI data (fixed delivery, edge).
    pub vector: u8,
    /// Scenario name of the device vector feeding it.
    pub source: String,
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
    /// The L2 program's memory and thread, from the first `start-vm` on.
    /// After the VM fd: its memory is unmapped after the VM is closed.
    pub l2: Option<L2>,
}

impl Vm {
    pub fn create() -> Result<Vm, String> {
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
            l2: None,
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
            match L2::prepare(&self.kvm, &self.vm, &vcpu) {
                Ok(l2) => self.l2 = Some(l2),
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

    /// The L2, when it is running.
    pub fn running_l2(&self) -> Option<&L2> {
        self.l2.as_ref().filter(|l| l.running())
    }

    /// Route for `source`, creating it (with `vector`) if it does not exist yet.
    pub fn route_for(&mut self, source: &str, vector: u8) -> Result<Route, String> {
        if let Some(r) = self.routes.iter().find(|r| r.source == source) {
            return Ok(r.clone());
        }
        let gsi = FIRST_GSI + self.routes.len() as u32;
        let mut routes = self.routes.clone();
        routes.push(Route {
            gsi,
            vector,
            source: source.to_string(),
        });
        let mut table =
            KvmIrqRouting::new(routes.len()).map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))?;
        for (slot, r) in table.as_mut_slice().iter_mut().zip(&routes) {
            let mut e = kvm_irq_routing_entry {
                gsi: r.gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = MSI_ADDR_APIC0;
            e.u.msi.address_hi = 0;
            e.u.msi.data = u32::from(r.vector);
            *slot = e;
        }
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| errno_str("KVM_SET_GSI_ROUTING", e.errno()))?;
        self.routes = routes;
        Ok(self.routes.last().cloned().expect("just pushed"))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
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
