//! `route-delivery` and route-aware `lossless` against synthetic reports:
//! each way a routing update can go wrong fails with its own message.

use std::path::Path;

use wire::{BypassEvent as E, Done, Platform, RouteSeen, RouteTo, StepReport, VectorCount};

use super::super::tests::step;
use super::super::{Header, Report};
use crate::runner::IommuCounts;
use crate::scenario;

const ROUTED: &str = r#"
description = "route changes under a live irqfd"

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
action = "route"
vm = "vm0"
vector = "dev0/msi0"
to = "msi"
l2_vector = 0x50

[[step]]
action = "fire"
vector = "dev0/msi0"
count = 3

[[step]]
action = "route"
vm = "vm0"
vector = "dev0/msi0"
to = "ioapic"
l2_vector = 0x53

[[step]]
action = "fire"
vector = "dev0/msi0"
count = 3

[[step]]
action = "route"
vm = "vm0"
vector = "dev0/msi0"
to = "none"

[[step]]
action = "fire"
vector = "dev0/msi0"
count = 3

[[step]]
action = "stop-vm"
vm = "vm0"

[[step]]
action = "disable-msi"
device = "dev0"

[[step]]
action = "destroy-vm"
vm = "vm0"

[[step]]
action = "close-device"
device = "dev0"

[[expect]]
check = "lossless"

[[expect]]
check = "pairing"

[[expect]]
check = "route-delivery"
vm = "vm0"
vector = "dev0/msi0"
"#;

fn platform() -> Platform {
    Platform {
        kernel_release: "7.2.13+deb14-amd64".into(),
        kvm_vendor: Some("kvm_amd".into()),
        apicv: Some(true),
        device_posted_irqs: Some(true),
        irq_remapping: Some("amd x2apic".into()),
        irq_posting: true,
        ..Platform::default()
    }
}

/// A fire of dev0/msi0 x3 through route `to` on `l2_vector`: L1 saw
/// `host`, KVM injected `injected`, the L2 took `took`.
fn fired(
    index: usize,
    to: RouteTo,
    l2_vector: Option<u8>,
    host: u64,
    injected: u64,
    took: &[(u8, u64)],
) -> StepReport {
    StepReport {
        interrupts: vec![VectorCount {
            vector: "dev0/msi0".into(),
            raised: 3,
            signalled: None,
            host_irq: host,
            host_chip: Some("IR-PCI-MSI".into()),
            injected,
            delivered: Some(took.iter().map(|(_, k)| k).sum()),
            resampled: None,
            eoi_trapped: None,
            unmasked: None,
            route: Some(RouteSeen {
                to,
                l2_vector,
                l2_vectors: took.to_vec(),
            }),
        }],
        ..step(index, vec![])
    }
}

/// What upstream KVM intends: posted while the route is a postable MSI,
/// through L1 (and KVM) once it is not.
fn intended() -> Vec<StepReport> {
    let p = || "dev0/msi0".to_string();
    let c = || "vm0:dev0/msi0".to_string();
    vec![
        step(0, vec![]),
        step(
            1,
            vec![E::ProducerRegistered {
                producer: p(),
                ret: 0,
            }],
        ),
        step(2, vec![]),
        step(
            3,
            vec![
                E::ConsumerRegistered {
                    consumer: c(),
                    ret: 0,
                },
                E::Connected {
                    producer: p(),
                    consumer: c(),
                    ret: 0,
                },
            ],
        ),
        step(4, vec![]),
        step(5, vec![]),
        fired(6, RouteTo::Msi, Some(0x50), 0, 0, &[(0x50, 3)]),
        step(7, vec![]),
        fired(8, RouteTo::Ioapic, Some(0x53), 3, 3, &[(0x53, 3)]),
        step(9, vec![]),
        fired(10, RouteTo::None, None, 3, 0, &[]),
        step(11, vec![]),
        step(
            12,
            vec![
                E::ProducerUnregistered { producer: p() },
                E::Disconnected {
                    producer: p(),
                    consumer: c(),
                },
            ],
        ),
        step(13, vec![E::ConsumerUnregistered { consumer: c() }]),
        step(14, vec![]),
    ]
}

fn report(steps: Vec<StepReport>, posted: u64) -> Report {
    let s = scenario::parse(Path::new("scenarios/edu-route.toml"), ROUTED).unwrap();
    let header = Header {
        variant: "amd-avic".into(),
        kernel_release: "7.2.13+deb14-amd64".into(),
        qemu_version: "10.0.13".into(),
    };
    let done = Some(Done {
        cleanup: vec![],
        cleanup_error: None,
        kernel_warnings: vec![],
        l1_msi: None,
    });
    Report::from_parts(&s, header, platform(), steps, done, None).with_iommu(Some(Ok(
        IommuCounts {
            posted,
            posted_running: posted,
            ..Default::default()
        },
    )))
}

fn check(r: &Report, name: &str) -> (bool, String) {
    let c = r
        .checks()
        .into_iter()
        .find(|c| c.expectation.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no check {name}"));
    (c.passed, c.detail)
}

fn fails(r: &Report, name: &str, detail: &str) {
    let (passed, got) = check(r, name);
    assert!(!passed, "{name} should fail");
    assert!(
        got.contains(detail),
        "{name}: detail {got:?} lacks {detail:?}"
    );
}

#[test]
fn the_intended_outcome_passes_and_shows_the_routes() {
    let r = report(intended(), 3);
    for c in r.checks() {
        assert!(c.passed, "{}: {}", c.expectation, c.detail);
    }
    let (_, detail) = check(&r, "route-delivery");
    assert_eq!(
        detail,
        "step 7 msi posted, step 9 ioapic via L1, step 11 none via L1"
    );
    let body = r.body();
    assert!(
        body.contains("step 9  dev0/msi0  raised 3  L1 3 (IR-PCI-MSI)  injected by KVM 3  delivered in L2 3  route ioapic 0x53  L2 took 0x53 x3"),
        "{body}"
    );
    assert!(body.contains("route none  L2 took nothing"), "{body}");
    assert!(
        body.contains("route vm0 dev0/msi0 -> msi vector 0x50"),
        "{body}"
    );
}

#[test]
fn an_irte_left_posting_after_a_non_msi_route_fails() {
    // the pre-fix behaviour: the IRTE still posts to the old vector
    let mut steps = intended();
    steps[10] = fired(10, RouteTo::None, None, 0, 0, &[(0x53, 3)]);
    let r = report(steps, 6);
    fails(
        &r,
        "route-delivery",
        "step 11: route none cannot be posted, but L1 saw 0 of 3: the IRTE still posts (it should be back under host control)",
    );
    fails(
        &r,
        "route-delivery",
        "step 11: L2 took 3 on 0x53, which is not route none's vector",
    );
    fails(
        &r,
        "lossless",
        "step 11 dev0/msi0: raised 3 and L2 received 3, but no running L2's route of it reaches a vCPU (vm0: none)",
    );
}

#[test]
fn a_postable_route_that_stops_posting_fails() {
    let mut steps = intended();
    steps[6] = fired(6, RouteTo::Msi, Some(0x50), 3, 3, &[(0x50, 3)]);
    let r = report(steps, 0);
    fails(
        &r,
        "route-delivery",
        "step 7: route msi is postable and dev0/msi0 is connected, but L1 saw 3 of 3: the IRTE should post",
    );
}

#[test]
fn delivery_on_the_old_vector_fails() {
    let mut steps = intended();
    steps[8] = fired(8, RouteTo::Ioapic, Some(0x53), 3, 3, &[(0x50, 3)]);
    let r = report(steps, 3);
    fails(
        &r,
        "route-delivery",
        "step 9: L2 took 3 on 0x50, which is not route ioapic's vector (0x53)",
    );
    fails(
        &r,
        "route-delivery",
        "step 9: L2 took 0 of 3 on route ioapic's vector 0x53",
    );
}

#[test]
fn an_injection_through_a_removed_route_fails() {
    let mut steps = intended();
    steps[10] = fired(10, RouteTo::None, None, 3, 3, &[]);
    let r = report(steps, 3);
    fails(
        &r,
        "route-delivery",
        "step 11: route none: KVM injected 3, expected 0",
    );
    fails(
        &r,
        "lossless",
        "step 11 dev0/msi0: raised 3 but KVM injected 3",
    );
}

#[test]
fn a_route_the_agent_did_not_take_fails() {
    let mut steps = intended();
    steps[8] = fired(8, RouteTo::Msi, Some(0x53), 0, 0, &[(0x53, 3)]);
    let r = report(steps, 6);
    fails(
        &r,
        "route-delivery",
        "step 9: fired through route msi but the scenario's is ioapic",
    );
}
