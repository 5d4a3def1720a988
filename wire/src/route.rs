//! GSI routes changed under a live irqfd (`route` steps).

use serde::{Deserialize, Serialize};

/// The APIC ID a `msi-no-vcpu` route's MSI is addressed to: the VM has one
/// vCPU, APIC ID 0, so no vCPU matches.
pub const NO_VCPU_APIC_ID: u8 = 7;

/// Where a `route` step points the GSI of an irqfd.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum RouteTo {
    /// An MSI to the VM's vCPU (APIC ID 0, physical, fixed, edge): KVM can
    /// post it, so a connected IRTE posts to the new vector.
    Msi,
    /// An MSI to an APIC ID no vCPU has ([`NO_VCPU_APIC_ID`]): not for a
    /// single vCPU, so KVM cannot post it; the IRTE goes back to host
    /// control and KVM's injection reaches no vCPU.
    MsiNoVcpu,
    /// An IOAPIC pin (the first free one from 16, edge, fixed, to vCPU 0):
    /// not an MSI, never posted; KVM injects through the IOAPIC.
    Ioapic,
    /// No route: the GSI leaves the table. Nothing can be posted or
    /// injected; the irqfd still consumes the eventfd.
    None,
}

impl RouteTo {
    /// The name as written in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            RouteTo::Msi => "msi",
            RouteTo::MsiNoVcpu => "msi-no-vcpu",
            RouteTo::Ioapic => "ioapic",
            RouteTo::None => "none",
        }
    }

    /// Whether KVM may post an interrupt of this route to a vCPU.
    pub fn postable(self) -> bool {
        self == RouteTo::Msi
    }

    /// Whether the route delivers to the VM's vCPU at all.
    pub fn delivers(self) -> bool {
        matches!(self, RouteTo::Msi | RouteTo::Ioapic)
    }

    /// Whether KVM injects through it (an MSI or an IOAPIC pin; not `none`).
    pub fn injects(self) -> bool {
        self != RouteTo::None
    }
}

/// The route a rerouted vector fired through, and where its interrupts
/// went in the L2s that ran.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteSeen {
    pub to: RouteTo,
    /// The route's vector in the VM; `None` for [`RouteTo::None`].
    pub l2_vector: Option<u8>,
    /// Interrupts the running L2s of VMs holding the vector took during the
    /// step, per vector from 0x40 up: (vector, count), nonzero only,
    /// ascending. Empty when no L2 ran or nothing arrived.
    #[serde(default)]
    pub l2_vectors: Vec<(u8, u64)>,
}

#[cfg(test)]
mod tests {
    use crate::{RouteTo, Step};

    #[test]
    fn route_step() {
        let s: Step = serde_json::from_str(
            r#"{"action":"route","vm":"vm0","vector":"dev0/msi0","to":"msi-no-vcpu"}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            Step::Route {
                vm: "vm0".into(),
                vector: "dev0/msi0".into(),
                to: RouteTo::MsiNoVcpu,
                l2_vector: None
            }
        );
        assert_eq!(s.action(), "route");
        assert!(serde_json::from_str::<Step>(
            r#"{"action":"route","vm":"vm0","vector":"dev0/msi0","to":"lowest"}"#
        )
        .is_err());
        assert!(!RouteTo::Ioapic.postable() && RouteTo::Ioapic.delivers());
        assert!(!RouteTo::None.injects() && !RouteTo::MsiNoVcpu.delivers());
    }
}
