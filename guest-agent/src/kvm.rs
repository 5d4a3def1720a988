//! KVM: a VM with an in-kernel irqchip, one vCPU (never run), MSI routes and irqfds.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

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
    // the vCPU goes first: it holds a reference on the VM
    vcpu: Option<VcpuFd>,
    vm: VmFd,
    routes: Vec<Route>,
    /// Attached irqfds: source vector name -> GSI.
    pub irqfds: BTreeMap<String, u32>,
}

impl Vm {
    pub fn create() -> Result<Vm, String> {
        let kvm = Kvm::new().map_err(|e| errno_str("open /dev/kvm", e.errno()))?;
        let vm = kvm.create_vm().map_err(|e| errno_str("KVM_CREATE_VM", e.errno()))?;
        vm.create_irq_chip()
            .map_err(|e| errno_str("KVM_CREATE_IRQCHIP", e.errno()))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| errno_str("KVM_CREATE_VCPU", e.errno()))?;
        Ok(Vm { vcpu: Some(vcpu), vm, routes: Vec::new(), irqfds: BTreeMap::new() })
    }

    /// Route for `source`, creating it (with `vector`) if it does not exist yet.
    pub fn route_for(&mut self, source: &str, vector: u8) -> Result<Route, String> {
        if let Some(r) = self.routes.iter().find(|r| r.source == source) {
            return Ok(r.clone());
        }
        let gsi = FIRST_GSI + self.routes.len() as u32;
        let mut routes = self.routes.clone();
        routes.push(Route { gsi, vector, source: source.to_string() });
        let mut table =
            KvmIrqRouting::new(routes.len()).map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))?;
        for (slot, r) in table.as_mut_slice().iter_mut().zip(&routes) {
            let mut e = kvm_irq_routing_entry { gsi: r.gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
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
            .or_else(|| self.routes.iter().find(|r| r.source == source).map(|r| r.gsi))
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
        self.vcpu.take();
    }
}
