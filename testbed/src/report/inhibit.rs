//! `inhibit-routes`: where a VM's APICv/AVIC inhibit (`pit-reinject`) sends
//! a posted vector's interrupts, while set and after it was cleared.

use wire::{BypassEvent, Step};

use super::checks::fail;
use super::{posting, Report};

/// While `vm`'s PIT reinjection is on, every `fire` of `vector` passed
/// through L1 and was injected by KVM; after it was turned off again, every
/// `fire` was posted (L1 saw none) where the platform can post and
/// `vector` was connected to `vm`'s consumer, else passed through L1.
pub(super) fn inhibit_routes(r: &Report, vm: &str, vector: &str) -> (bool, String) {
    let consumer = format!("{vm}:{vector}");
    let (can_post, why) = posting(&r.platform);
    let mut problems = Vec::new();
    let (mut inhibited, mut ever) = (false, false);
    let mut connected = false;
    let (mut while_set, mut after) = ((0u64, 0u64), (0u64, 0u64));
    for (i, step) in r.scenario.steps.iter().enumerate() {
        let n = i + 1;
        let Some(rep) = r.step_report(i) else {
            if matches!(step, Step::Fire { vector: v, .. } if v == vector) || ever && !inhibited {
                problems.push(format!("step {n} ({}) did not run", step.action()));
            }
            break;
        };
        for ev in &rep.bypass {
            match ev {
                BypassEvent::Connected {
                    producer,
                    consumer: c,
                    ret: 0,
                } if producer == vector && *c == consumer => connected = true,
                BypassEvent::Disconnected {
                    producer,
                    consumer: c,
                } if producer == vector && *c == consumer => connected = false,
                _ => {}
            }
        }
        match step {
            Step::PitReinject { vm: v, reinject } if v == vm => {
                if let Some(e) = &rep.error {
                    problems.push(format!("step {n} (pit-reinject) failed: {e}"));
                    break;
                }
                inhibited = *reinject;
                ever = true;
            }
            Step::Fire { vector: v, .. } if v == vector && ever => {
                let Some(c) = rep.interrupts.iter().find(|c| c.vector == *vector) else {
                    problems.push(format!("step {n}: no interrupt counts for {vector}"));
                    continue;
                };
                if inhibited {
                    while_set.0 += c.raised;
                    while_set.1 += c.host_irq;
                    if c.host_irq != c.raised || c.injected != c.raised {
                        problems.push(format!(
                            "step {n} {vector}: raised {} while {vm} was inhibited but L1 saw {} and KVM injected {} (all must pass through L1)",
                            c.raised, c.host_irq, c.injected
                        ));
                    }
                } else {
                    after.0 += c.raised;
                    after.1 += c.host_irq;
                    let post = can_post && connected;
                    if post && c.host_irq != 0 {
                        problems.push(format!(
                            "step {n} {vector}: L1 saw {} of {} raised after {vm}'s inhibit was cleared: KVM injected them, the IOMMU should post",
                            c.host_irq, c.raised
                        ));
                    } else if !post && c.host_irq != c.raised {
                        let because = if can_post {
                            format!("{vector} is not connected to {consumer}")
                        } else {
                            format!("platform cannot post: {why}")
                        };
                        problems.push(format!(
                            "step {n} {vector}: raised {} after the inhibit was cleared but L1 saw {} ({because})",
                            c.raised, c.host_irq
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if !problems.is_empty() {
        return fail(problems);
    }
    if while_set.0 == 0 || after.0 == 0 {
        return fail(vec![format!(
            "nothing raised while {vm} was inhibited or after it was cleared"
        )]);
    }
    (
        true,
        format!(
            "inhibited: {} of {} through L1; cleared: {} of {} through L1",
            while_set.1, while_set.0, after.1, after.0
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use wire::{BypassEvent as E, Done, Platform, StepReport, VectorCount};

    use super::super::tests::step;
    use super::super::{Header, Report};
    use crate::scenario;

    const INHIBIT: &str = r#"
description = "inhibit"

[[device]]
name = "dev0"
model = "edu"

[[step]]
action = "bind"
device = "dev0"

[[step]]
action = "enable-msi"
device = "dev0"

[[step]]
action = "create-vm"
vm = "vm0"

[[step]]
action = "irqfd"
vm = "vm0"
vector = "dev0/msi0"

[[step]]
action = "start-vm"
vm = "vm0"

[[step]]
action = "pit-reinject"
vm = "vm0"
reinject = true

[[step]]
action = "fire"
vector = "dev0/msi0"
count = 3

[[step]]
action = "pit-reinject"
vm = "vm0"
reinject = false

[[step]]
action = "fire"
vector = "dev0/msi0"
count = 3

[[expect]]
check = "inhibit-routes"
vm = "vm0"
vector = "dev0/msi0"
"#;

    fn platform(posting: bool) -> Platform {
        Platform {
            kernel_release: "7.2.13".into(),
            kvm_vendor: Some("kvm_amd".into()),
            apicv: Some(posting),
            device_posted_irqs: Some(posting),
            irq_remapping: Some("amd".into()),
            irq_posting: posting,
            ..Platform::default()
        }
    }

    fn counts(raised: u64, host_irq: u64, injected: u64) -> VectorCount {
        VectorCount {
            vector: "dev0/msi0".into(),
            raised,
            signalled: None,
            host_irq,
            host_chip: Some("IR-PCI-MSI".into()),
            injected,
            delivered: None,
            resampled: None,
            eoi_trapped: None,
            unmasked: None,
            route: None,
        }
    }

    /// The report with these counts for the fire while inhibited and the
    /// fire after the inhibit was cleared.
    fn report(posting: bool, inhibited: VectorCount, cleared: VectorCount) -> Report {
        let s = scenario::parse(Path::new("scenarios/inhibit.toml"), INHIBIT).unwrap();
        let mut steps: Vec<StepReport> = (0..9).map(|index| step(index, vec![])).collect();
        if posting {
            steps[3].bypass = vec![E::Connected {
                producer: "dev0/msi0".into(),
                consumer: "vm0:dev0/msi0".into(),
                ret: 0,
            }];
        }
        steps[6].interrupts = vec![inhibited];
        steps[8].interrupts = vec![cleared];
        let header = Header {
            variant: "amd-avic".into(),
            kernel_release: "7.2.13".into(),
            qemu_version: "10.0.2".into(),
        };
        let done = Some(Done {
            cleanup: vec![],
            cleanup_error: None,
            kernel_warnings: vec![],
            l1_msi: None,
        });
        Report::from_parts(&s, header, platform(posting), steps, done, None)
    }

    fn check(r: &Report) -> (bool, String) {
        let c = r
            .checks()
            .into_iter()
            .find(|c| c.expectation.starts_with("inhibit-routes"))
            .expect("inhibit-routes");
        (c.passed, c.detail)
    }

    #[test]
    fn passes_when_injected_while_inhibited_and_posted_after() {
        let (ok, detail) = check(&report(true, counts(3, 3, 3), counts(3, 0, 0)));
        assert!(ok, "{detail}");
        assert_eq!(
            detail,
            "inhibited: 3 of 3 through L1; cleared: 0 of 3 through L1"
        );
        // a platform that cannot post: everything through L1
        let (ok, detail) = check(&report(false, counts(3, 3, 3), counts(3, 3, 3)));
        assert!(ok, "{detail}");
    }

    #[test]
    fn fails_when_still_injected_after_the_inhibit_is_cleared() {
        let (ok, detail) = check(&report(true, counts(3, 3, 3), counts(3, 3, 3)));
        assert!(!ok);
        assert!(
            detail.contains("L1 saw 3 of 3 raised after vm0's inhibit was cleared"),
            "{detail}"
        );
    }

    #[test]
    fn fails_when_posted_while_inhibited() {
        let (ok, detail) = check(&report(true, counts(3, 0, 0), counts(3, 0, 0)));
        assert!(!ok);
        assert!(
            detail.contains("raised 3 while vm0 was inhibited but L1 saw 0 and KVM injected 0"),
            "{detail}"
        );
    }

    #[test]
    fn fails_when_a_non_posting_platform_loses_interrupts_after_the_inhibit() {
        let (ok, detail) = check(&report(false, counts(3, 3, 3), counts(3, 1, 1)));
        assert!(!ok);
        assert!(detail.contains("platform cannot post"), "{detail}");
    }
}
