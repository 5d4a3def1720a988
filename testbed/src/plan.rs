//! Which scenarios share an L1 boot. Boot time is most of the wall time under
//! TCG, so scenarios share one boot unless one asks for a fresh boot or their
//! devices conflict (same name, different model or pinned address).

use crate::qemu::PciDevice;
use crate::scenario::Scenario;

#[derive(Debug)]
pub struct BootGroup<'a> {
    pub scenarios: Vec<&'a Scenario>,
    /// The union of the scenarios' devices, in first-seen order.
    pub devices: Vec<PciDevice>,
}

/// Groups in scenario order. `fresh_boot_all` gives every scenario its own boot.
pub fn group<'a>(scenarios: &'a [Scenario], fresh_boot_all: bool) -> Vec<BootGroup<'a>> {
    let mut groups: Vec<BootGroup<'a>> = Vec::new();
    for scenario in scenarios {
        let devices = devices_of(scenario);
        let alone = fresh_boot_all || scenario.fresh_boot;
        let shared = if alone {
            None
        } else {
            groups.iter_mut().find(|g| {
                !g.scenarios.iter().any(|s| s.fresh_boot || fresh_boot_all)
                    && compatible(&g.devices, &devices)
            })
        };
        match shared {
            Some(group) => {
                for device in devices {
                    if !group.devices.iter().any(|d| d.id == device.id) {
                        group.devices.push(device);
                    }
                }
                group.scenarios.push(scenario);
            }
            None => groups.push(BootGroup {
                scenarios: vec![scenario],
                devices,
            }),
        }
    }
    groups
}

/// The scenario's devices that QEMU provides (a vDPA simulator device
/// lives in the L1 kernel: nothing to add to QEMU).
fn devices_of(scenario: &Scenario) -> Vec<PciDevice> {
    scenario
        .devices
        .iter()
        .filter_map(|d| Some((d, d.model.qemu_driver()?)))
        .map(|(d, driver)| PciDevice {
            id: d.name.clone(),
            driver: driver.to_owned(),
            props: d.model.spec().qemu_props.to_owned(),
            hotplug: scenario
                .steps
                .iter()
                .any(|s| matches!(s, wire::Step::Unplug { device } if *device == d.name)),
            addr: d.bdf.as_deref().map(root_bus_addr),
            sriov: d.model.spec().sriov_vf,
            hub: d.hub.clone(),
        })
        .collect()
}

/// `0000:00:05.0` → `05.0`, the form QEMU's `addr=` takes on the root bus.
fn root_bus_addr(bdf: &str) -> String {
    bdf.rsplit(':').next().unwrap_or(bdf).to_owned()
}

fn compatible(have: &[PciDevice], want: &[PciDevice]) -> bool {
    want.iter().all(|w| {
        have.iter().all(|h| {
            if h.id == w.id {
                h == w
            } else {
                // Two names pinned to one address cannot coexist.
                h.addr.is_none() || h.addr != w.addr
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::ScenarioDevice;

    fn scenario(name: &str, fresh: bool, devices: &[(&str, Option<&str>)]) -> Scenario {
        Scenario {
            name: name.into(),
            path: format!("scenarios/{name}.toml").into(),
            description: String::new(),
            fresh_boot: fresh,
            variants: None,
            devices: devices
                .iter()
                .map(|(n, bdf)| ScenarioDevice {
                    name: (*n).into(),
                    model: wire::DeviceModel::Edu,
                    bdf: bdf.map(Into::into),
                    hub: None,
                })
                .collect(),
            steps: Vec::new(),
            expect: Vec::new(),
        }
    }

    fn names<'a>(groups: &[BootGroup<'a>]) -> Vec<Vec<&'a str>> {
        groups
            .iter()
            .map(|g| g.scenarios.iter().map(|s| s.name.as_str()).collect())
            .collect()
    }

    #[test]
    fn compatible_scenarios_share_a_boot() {
        let s = [
            scenario("a", false, &[("dev0", None)]),
            scenario("b", false, &[("dev0", None), ("dev1", None)]),
        ];
        let groups = group(&s, false);
        assert_eq!(names(&groups), [["a", "b"]]);
        assert_eq!(groups[0].devices.len(), 2);
    }

    #[test]
    fn fresh_boot_and_conflicts_split() {
        let s = [
            scenario("a", false, &[("dev0", None)]),
            scenario("b", true, &[("dev0", None)]),
            scenario("c", false, &[("dev0", Some("0000:00:07.0"))]),
            scenario("d", false, &[("dev1", None)]),
        ];
        let groups = group(&s, false);
        assert_eq!(names(&groups), vec![vec!["a", "d"], vec!["b"], vec!["c"]]);
        assert_eq!(groups[2].devices[0].addr.as_deref(), Some("07.0"));
    }

    #[test]
    fn fresh_boot_for_all() {
        let s = [scenario("a", false, &[]), scenario("b", false, &[])];
        assert_eq!(group(&s, true).len(), 2);
    }
}
