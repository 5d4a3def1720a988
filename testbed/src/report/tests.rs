//! Checks and rendering against synthetic agent reports.

use std::path::Path;

use wire::{BypassEvent as E, Done, Platform, StepReport, VectorCount};

use super::*;
use crate::scenario;

const PRODUCER_FIRST: &str = r#"
description = "MSI producer registered before the KVM irqfd consumer; producer torn down first"

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
action = "fire"
vector = "dev0/msi0"
count = 5

[[step]]
action = "close-device"
device = "dev0"

[[step]]
action = "destroy-vm"
vm = "vm0"

[[expect]]
check = "lossless"

[[expect]]
check = "pairing"

[[expect]]
check = "producer-registered"
vector = "dev0/msi0"

[[expect]]
check = "consumer-registered"
vm = "vm0"
vector = "dev0/msi0"

[[expect]]
check = "connected"
vm = "vm0"
vector = "dev0/msi0"

[[expect]]
check = "connected-iff-posting"
vm = "vm0"
vector = "dev0/msi0"
"#;

fn scenario() -> Scenario {
    scenario::parse(
        Path::new("scenarios/edu-producer-first.toml"),
        PRODUCER_FIRST,
    )
    .unwrap()
}

/// Stock QEMU on TCG: no AVIC, no IOMMU posting.
fn stock() -> Platform {
    Platform {
        kernel_release: "6.12.48+deb13-amd64".into(),
        modules_loaded: vec!["irqbypass".into(), "kvm".into(), "kvm_amd".into()],
        modules_failed: vec![],
        kvm_vendor: Some("kvm_amd".into()),
        apicv: Some(false),
        device_posted_irqs: None,
        irq_remapping: Some("intel x2apic".into()),
        irq_posting: false,
        tracing_failed: vec![],
    }
}

/// The posted-interrupt variant: AVIC and GA logging.
fn posting_platform() -> Platform {
    Platform {
        apicv: Some(true),
        device_posted_irqs: Some(true),
        irq_posting: true,
        irq_remapping: Some("amd".into()),
        ..stock()
    }
}

fn header() -> Header {
    Header {
        variant: "intel-ir".into(),
        kernel_release: "6.12.48+deb13-amd64".into(),
        qemu_version: "10.0.2".into(),
    }
}

fn step(index: usize, bypass: Vec<E>) -> StepReport {
    StepReport {
        index,
        error: None,
        bypass,
        interrupts: vec![],
    }
}

fn preg(v: &str) -> E {
    E::ProducerRegistered {
        producer: v.into(),
        ret: 0,
    }
}
fn punreg(v: &str) -> E {
    E::ProducerUnregistered { producer: v.into() }
}
fn creg(c: &str) -> E {
    E::ConsumerRegistered {
        consumer: c.into(),
        ret: 0,
    }
}
fn cunreg(c: &str) -> E {
    E::ConsumerUnregistered { consumer: c.into() }
}
fn conn(p: &str, c: &str) -> E {
    E::Connected {
        producer: p.into(),
        consumer: c.into(),
        ret: 0,
    }
}
fn disc(p: &str, c: &str) -> E {
    E::Disconnected {
        producer: p.into(),
        consumer: c.into(),
    }
}

fn fired(raised: u64, host_irq: u64, injected: u64, signalled: Option<u64>) -> VectorCount {
    VectorCount {
        vector: "dev0/msi0".into(),
        raised,
        signalled,
        host_irq,
        host_chip: Some("IR-PCI-MSI".into()),
        injected,
        delivered: None,
    }
}

/// What stock QEMU gives today: the producer registers, KVM does not.
fn stock_steps() -> Vec<StepReport> {
    vec![
        step(0, vec![]),
        step(1, vec![preg("dev0/msi0")]),
        step(2, vec![]),
        step(
            3,
            vec![E::ConsumerNotRegistered {
                consumer: "vm0:dev0/msi0".into(),
            }],
        ),
        StepReport {
            interrupts: vec![fired(5, 5, 5, None)],
            ..step(4, vec![])
        },
        step(5, vec![punreg("dev0/msi0")]),
        step(6, vec![]),
    ]
}

/// What a posting platform should give.
fn posted_steps() -> Vec<StepReport> {
    vec![
        step(0, vec![]),
        step(1, vec![preg("dev0/msi0")]),
        step(2, vec![]),
        step(
            3,
            vec![conn("dev0/msi0", "vm0:dev0/msi0"), creg("vm0:dev0/msi0")],
        ),
        StepReport {
            interrupts: vec![fired(5, 5, 5, None)],
            ..step(4, vec![])
        },
        step(
            5,
            vec![punreg("dev0/msi0"), disc("dev0/msi0", "vm0:dev0/msi0")],
        ),
        step(6, vec![cunreg("vm0:dev0/msi0")]),
    ]
}

fn done() -> Option<Done> {
    Some(Done {
        cleanup: vec![],
        cleanup_error: None,
    })
}

fn report(platform: Platform, steps: Vec<StepReport>, done: Option<Done>) -> Report {
    Report::from_parts(&scenario(), header(), platform, steps, done, None)
}

fn check_of(r: &Report, name: &str) -> CheckResult {
    r.checks()
        .into_iter()
        .find(|c| c.expectation.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no check {name}"))
}

fn passes(r: &Report, name: &str) {
    let c = check_of(r, name);
    assert!(c.passed, "{name} should pass: {}", c.detail);
}

fn fails(r: &Report, name: &str, detail: &str) {
    let c = check_of(r, name);
    assert!(!c.passed, "{name} should fail");
    assert!(
        c.detail.contains(detail),
        "{name}: detail {:?} lacks {detail:?}",
        c.detail
    );
}

#[test]
fn stock_platform_body() {
    let r = report(stock(), stock_steps(), done());
    let body = r.body();
    println!("{body}");
    assert_eq!(
        body,
        "\
edu-producer-first: MSI producer registered before the KVM irqfd consumer; producer torn down first

devices
   dev0 edu

steps
   1 bind dev0
   2 enable-msi dev0 (1 vector)
       producer dev0/msi0 registered (ret 0)
   3 create-vm vm0
   4 irqfd vm0 dev0/msi0
       consumer vm0:dev0/msi0 not registered: KVM has no device-posted IRQs (apicv off, IOMMU cannot post)
   5 fire dev0/msi0 x5
   6 close-device dev0
       producer dev0/msi0 unregistered
   7 destroy-vm vm0

cleanup
   nothing left open

interrupts
   step 5  dev0/msi0  raised 5  L1 5 (IR-PCI-MSI)  injected by KVM 5

connections
   none formed

checks
   pass  lossless
   pass  pairing: no connection formed; nothing left registered
   pass  producer-registered dev0/msi0
   FAIL  consumer-registered vm0 dev0/msi0: consumer vm0:dev0/msi0 not registered: KVM has no device-posted IRQs (apicv off, IOMMU cannot post)
   FAIL  connected vm0 dev0/msi0: dev0/msi0 -> vm0:dev0/msi0 never connected: consumer vm0:dev0/msi0 not registered: KVM has no device-posted IRQs (apicv off, IOMMU cannot post)
   pass  connected-iff-posting vm0 dev0/msi0: platform cannot post (apicv off, IOMMU cannot post); consumer not registered; no connection
"
    );
}

#[test]
fn body_does_not_depend_on_the_kernel_or_qemu() {
    let a = report(stock(), stock_steps(), done());
    let mut p = stock();
    // 7.x has kvm.enable_device_posted_irqs; same behaviour, same body
    p.device_posted_irqs = Some(false);
    p.kernel_release = "7.2.1-amd64".into();
    let mut b = report(p, stock_steps(), done());
    b.header.qemu_version = "10.2.0".into();
    b.header.kernel_release = "7.2.1-amd64".into();
    assert_eq!(a.body(), b.body());
}

#[test]
fn posting_platform_passes_everything() {
    let r = report(posting_platform(), posted_steps(), done());
    for c in r.checks() {
        assert!(c.passed, "{}: {}", c.expectation, c.detail);
    }
    let body = r.body();
    assert!(body.contains(
        "connections\n   step 4   connected dev0/msi0 -> vm0:dev0/msi0 (ret 0)\n   step 6   disconnected dev0/msi0 -> vm0:dev0/msi0\n"
    ), "{body}");
    assert!(body.contains("pass  connected-iff-posting vm0 dev0/msi0: platform can post; consumer registered; connected"));
}

// ---- lossless

#[test]
fn lossless_fails_when_l1_misses_interrupts() {
    let mut steps = stock_steps();
    steps[4].interrupts = vec![fired(5, 4, 4, None)];
    let r = report(stock(), steps, done());
    fails(&r, "lossless", "step 5 dev0/msi0: raised 5 but L1 saw 4");
    fails(&r, "lossless", "raised 5 but KVM injected 4 (irqfd of vm0)");
}

#[test]
fn lossless_fails_when_kvm_injects_fewer() {
    let mut steps = stock_steps();
    steps[4].interrupts = vec![fired(5, 5, 3, None)];
    let r = report(stock(), steps, done());
    fails(
        &r,
        "lossless",
        "step 5 dev0/msi0: raised 5 but KVM injected 3 (irqfd of vm0)",
    );
}

#[test]
fn lossless_uses_the_eventfd_where_no_irqfd_holds_the_vector() {
    // consumer-first fires once before the irqfd and once while it holds
    let s = scenario::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/scenarios/edu-consumer-first.toml"),
    )
    .unwrap();
    let mk = |before: VectorCount, after: VectorCount| {
        let steps = vec![
            step(0, vec![]),
            step(1, vec![]),
            step(2, vec![preg("dev0/msi0")]),
            StepReport {
                interrupts: vec![before],
                ..step(3, vec![])
            },
            step(
                4,
                vec![E::ConsumerNotRegistered {
                    consumer: "vm0:dev0/msi0".into(),
                }],
            ),
            StepReport {
                interrupts: vec![after],
                ..step(5, vec![])
            },
            step(6, vec![]),
            step(7, vec![]),
        ];
        Report::from_parts(&s, header(), stock(), steps, done(), None)
    };
    let ok = mk(fired(3, 3, 0, Some(3)), fired(2, 2, 2, None));
    passes(&ok, "lossless");
    let bad = mk(fired(3, 3, 0, Some(2)), fired(2, 2, 2, None));
    fails(
        &bad,
        "lossless",
        "step 4 dev0/msi0: raised 3 but the eventfd counted 2 (no irqfd holds it)",
    );
    let unread = mk(fired(3, 3, 0, None), fired(2, 2, 2, None));
    fails(&unread, "lossless", "raised 3 but the eventfd was not read");
    let body = ok.body();
    assert!(body.contains("   step 4  dev0/msi0  raised 3  L1 3 (IR-PCI-MSI)  injected by KVM 0  eventfd signalled 3\n"), "{body}");
    assert!(
        body.contains("cleanup\n   closed what the scenario left open: dev0\n"),
        "{body}"
    );
    assert!(body.contains("   dev0 edu at 0000:00:05.0\n"), "{body}");
}

#[test]
fn lossless_fails_when_fewer_raised_or_counts_missing() {
    let mut steps = stock_steps();
    steps[4].interrupts = vec![fired(4, 4, 4, None)];
    fails(&report(stock(), steps, done()), "lossless", "raised 4 of 5");

    let mut steps = stock_steps();
    steps[4].interrupts.clear();
    fails(
        &report(stock(), steps, done()),
        "lossless",
        "step 5: no interrupt counts for dev0/msi0",
    );
}

#[test]
fn lossless_fails_when_the_fire_step_did_not_run() {
    let mut steps = stock_steps();
    steps.truncate(4);
    let r = Report::from_parts(
        &scenario(),
        header(),
        stock(),
        steps,
        None,
        Some("timeout: the agent said nothing for 60 s".into()),
    );
    fails(&r, "lossless", "step 5 (fire dev0/msi0) did not run");
    let body = r.body();
    assert!(
        body.contains("   5 fire dev0/msi0 x5  (not run)\n"),
        "{body}"
    );
    assert!(
        body.contains("   run ended early: timeout: the agent said nothing for 60 s\n"),
        "{body}"
    );
    assert!(body.contains("cleanup\n   not reached\n"), "{body}");
}

#[test]
fn failed_step_and_skipped_steps() {
    let mut steps = stock_steps();
    steps.truncate(4);
    steps[3].error = Some("KVM_IRQFD: EINVAL".into());
    steps[3].bypass.clear();
    let r = report(stock(), steps, done());
    let body = r.body();
    assert!(body.contains("   4 irqfd vm0 dev0/msi0\n       failed: KVM_IRQFD: EINVAL\n   5 fire dev0/msi0 x5  (skipped: step 4 failed)\n"), "{body}");
    fails(
        &r,
        "connected-iff-posting",
        "cannot tell: step 4 (irqfd vm0 dev0/msi0) failed: KVM_IRQFD: EINVAL",
    );
    fails(
        &r,
        "consumer-registered",
        "step 4 (irqfd vm0 dev0/msi0) failed",
    );
}

// ---- pairing

#[test]
fn pairing_fails_on_a_connection_across_vectors() {
    let mut steps = posted_steps();
    steps[3].bypass = vec![creg("vm0:dev0/msi1"), conn("dev0/msi0", "vm0:dev0/msi1")];
    let r = report(posting_platform(), steps, done());
    fails(
        &r,
        "pairing",
        "step 4: connected dev0/msi0 -> vm0:dev0/msi1, which are different vectors",
    );
}

#[test]
fn pairing_fails_on_a_connection_to_an_unregistered_consumer() {
    let mut steps = posted_steps();
    steps[3].bypass = vec![conn("dev0/msi0", "vm0:dev0/msi0")];
    steps[6].bypass = vec![];
    let r = report(posting_platform(), steps, done());
    fails(&r, "pairing", "step 4: connected dev0/msi0 -> vm0:dev0/msi0 but consumer vm0:dev0/msi0 was not registered");
}

#[test]
fn pairing_fails_when_unregistering_leaves_the_connection() {
    let mut steps = posted_steps();
    // producer unregisters but no disconnect follows
    steps[5].bypass = vec![punreg("dev0/msi0")];
    steps[6].bypass = vec![disc("dev0/msi0", "vm0:dev0/msi0"), cunreg("vm0:dev0/msi0")];
    let r = report(posting_platform(), steps, done());
    fails(
        &r,
        "pairing",
        "step 6: dev0/msi0 -> vm0:dev0/msi0 still connected after producer dev0/msi0 unregistered",
    );
}

#[test]
fn pairing_accepts_disconnect_before_unregister() {
    let mut steps = posted_steps();
    steps[5].bypass = vec![disc("dev0/msi0", "vm0:dev0/msi0"), punreg("dev0/msi0")];
    passes(&report(posting_platform(), steps, done()), "pairing");
}

#[test]
fn pairing_fails_when_something_survives_cleanup() {
    let mut steps = posted_steps();
    steps[6].bypass = vec![];
    let r = report(posting_platform(), steps, done());
    fails(
        &r,
        "pairing",
        "after cleanup consumer vm0:dev0/msi0 is still registered",
    );
    // the same, fixed by the agent's cleanup
    let mut steps = posted_steps();
    steps[6].bypass = vec![];
    let d = Done {
        cleanup: vec![cunreg("vm0:dev0/msi0")],
        cleanup_error: None,
    };
    passes(&report(posting_platform(), steps, Some(d)), "pairing");
}

#[test]
fn pairing_fails_on_double_registration_and_stray_disconnect() {
    let mut steps = stock_steps();
    steps[1].bypass = vec![preg("dev0/msi0"), preg("dev0/msi0")];
    fails(
        &report(stock(), steps, done()),
        "pairing",
        "step 2: producer dev0/msi0 registered twice",
    );
    let mut steps = stock_steps();
    steps[5].bypass.push(disc("dev0/msi0", "vm0:dev0/msi0"));
    fails(
        &report(stock(), steps, done()),
        "pairing",
        "disconnected dev0/msi0 -> vm0:dev0/msi0, which was not connected",
    );
}

#[test]
fn pairing_fails_without_done() {
    let r = report(stock(), stock_steps(), None);
    fails(&r, "pairing", "the run ended before cleanup");
}

// ---- producer-registered

#[test]
fn producer_registered_fails_on_error_or_absence() {
    let mut steps = stock_steps();
    steps[1].bypass = vec![E::ProducerRegistered {
        producer: "dev0/msi0".into(),
        ret: -16,
    }];
    let r = report(stock(), steps, done());
    fails(
        &r,
        "producer-registered",
        "producer dev0/msi0 registration failed (ret -16)",
    );
    assert!(r
        .body()
        .contains("producer dev0/msi0 registration failed (ret -16 EBUSY)"));

    let mut steps = stock_steps();
    steps[1].bypass.clear();
    fails(
        &report(stock(), steps, done()),
        "producer-registered",
        "producer dev0/msi0 never registered (VFIO did not call irq_bypass_register_producer)",
    );
}

// ---- consumer-registered / connected

#[test]
fn consumer_registered_and_connected_fail_on_stock_and_pass_with_posting() {
    let r = report(stock(), stock_steps(), done());
    fails(&r, "consumer-registered", "consumer vm0:dev0/msi0 not registered: KVM has no device-posted IRQs (apicv off, IOMMU cannot post)");
    fails(&r, "connected", "never connected");
    let r = report(posting_platform(), posted_steps(), done());
    passes(&r, "consumer-registered");
    passes(&r, "connected");
}

#[test]
fn connected_fails_on_a_failed_connect() {
    let mut steps = posted_steps();
    steps[3].bypass = vec![
        E::Connected {
            producer: "dev0/msi0".into(),
            consumer: "vm0:dev0/msi0".into(),
            ret: -22,
        },
        creg("vm0:dev0/msi0"),
    ];
    steps[5].bypass = vec![punreg("dev0/msi0")];
    let r = report(posting_platform(), steps, done());
    fails(
        &r,
        "connected",
        "connect dev0/msi0 -> vm0:dev0/msi0 failed (ret -22)",
    );
    fails(
        &r,
        "connected-iff-posting",
        "platform can post but connect dev0/msi0 -> vm0:dev0/msi0 failed (ret -22)",
    );
    passes(&r, "pairing");
    assert!(r
        .body()
        .contains("connect dev0/msi0 -> vm0:dev0/msi0 failed (ret -22 EINVAL)"));
}

#[test]
fn consumer_registered_fails_on_error_ret() {
    let mut steps = posted_steps();
    steps[3].bypass = vec![E::ConsumerRegistered {
        consumer: "vm0:dev0/msi0".into(),
        ret: -12,
    }];
    fails(
        &report(posting_platform(), steps, done()),
        "consumer-registered",
        "registration failed (ret -12)",
    );
}

// ---- connected-iff-posting

#[test]
fn connected_iff_posting_fails_when_posting_platform_does_not_connect() {
    let r = report(posting_platform(), stock_steps(), done());
    fails(
        &r,
        "connected-iff-posting",
        "platform can post but consumer vm0:dev0/msi0 did not register",
    );
    fails(&r, "connected-iff-posting", "never connected");
    // and the reason line says so
    assert!(r
        .body()
        .contains("consumer vm0:dev0/msi0 not registered, although the platform can post"));
}

#[test]
fn connected_iff_posting_fails_when_a_non_posting_platform_connects() {
    let r = report(stock(), posted_steps(), done());
    fails(
        &r,
        "connected-iff-posting",
        "platform cannot post (apicv off, IOMMU cannot post) but consumer vm0:dev0/msi0 registered",
    );
}

#[test]
fn posting_follows_device_posted_irqs_first() {
    // 6.16+: the kvm parameter decides
    let p = Platform {
        device_posted_irqs: Some(false),
        ..posting_platform()
    };
    assert_eq!(
        posting(&p),
        (false, "kvm.enable_device_posted_irqs off".into())
    );
    let p = Platform {
        device_posted_irqs: Some(true),
        ..stock()
    };
    assert!(posting(&p).0);
    // older kernels: apicv && irq_posting
    let p = Platform {
        device_posted_irqs: None,
        ..posting_platform()
    };
    assert!(posting(&p).0);
    let p = Platform {
        device_posted_irqs: None,
        irq_posting: false,
        ..posting_platform()
    };
    assert_eq!(posting(&p), (false, "IOMMU cannot post".into()));
    let p = Platform {
        kvm_vendor: None,
        apicv: None,
        ..stock()
    };
    assert_eq!(
        posting(&p),
        (false, "no KVM vendor module, IOMMU cannot post".into())
    );
}

#[test]
fn normalize_strips_times_and_addresses() {
    assert_eq!(
        normalize("[   12.345678] BUG: unable to handle page fault at ffff888003c1e000 (RIP 0xffffffff81000000), step 3"),
        "[time] BUG: unable to handle page fault at <addr> (RIP <addr>), step 3"
    );
    assert_eq!(normalize("KVM_IRQFD: EINVAL"), "KVM_IRQFD: EINVAL");
}

#[test]
fn json_has_header_steps_interrupts_and_checks() {
    let r = report(stock(), stock_steps(), done());
    let j = r.to_json();
    assert_eq!(j["header"]["variant"], "intel-ir");
    assert_eq!(j["header"]["kernel_release"], "6.12.48+deb13-amd64");
    assert_eq!(j["steps"].as_array().unwrap().len(), 7);
    assert_eq!(j["steps"][4]["step"]["action"], "fire");
    assert_eq!(j["steps"][4]["step"]["count"], 5);
    assert_eq!(j["interrupts"][0]["vector"], "dev0/msi0");
    assert_eq!(j["interrupts"][0]["step"], 4);
    assert_eq!(j["checks"][0]["expectation"], "lossless");
    assert_eq!(j["checks"][0]["passed"], true);
    assert_eq!(j["can_post"], false);
    assert_eq!(j["cannot_post_because"], "apicv off, IOMMU cannot post");
}

#[test]
fn event_checks_fail_when_tracing_is_incomplete() {
    let p = Platform {
        tracing_failed: vec!["kprobe irq_bypass_register_consumer: no such symbol".into()],
        ..stock()
    };
    let r = report(p, stock_steps(), done());
    fails(
        &r,
        "pairing",
        "cannot tell: tracing incomplete (kprobe irq_bypass_register_consumer: no such symbol)",
    );
    fails(
        &r,
        "connected-iff-posting",
        "cannot tell: tracing incomplete",
    );
    passes(&r, "lossless");
    assert!(r
        .body()
        .contains("\nobserved with gaps: kprobe irq_bypass_register_consumer: no such symbol\n"));
}

/// The producer-first wiring with an L2 running around the fire step.
fn l2_scenario(mode_lines: &str) -> Scenario {
    let text = format!(
        r#"
description = "edu MSI delivered into a running L2"

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
{mode_lines}

[[step]]
action = "fire"
vector = "dev0/msi0"
count = 50

[[step]]
action = "stop-vm"
vm = "vm0"

[[step]]
action = "fire"
vector = "dev0/msi0"
count = 2

[[expect]]
check = "lossless"
"#
    );
    scenario::parse(Path::new("scenarios/edu-l2-running.toml"), &text).unwrap()
}

fn l2_report(delivered: Option<u64>) -> Report {
    let s = l2_scenario("mode = \"running\"");
    let mut steps: Vec<StepReport> = (0..8).map(|i| step(i, vec![])).collect();
    steps[5].interrupts = vec![VectorCount {
        delivered,
        ..fired(50, 50, 50, None)
    }];
    steps[7].interrupts = vec![fired(2, 2, 2, None)];
    Report::from_parts(&s, header(), stock(), steps, done(), None)
}

#[test]
fn l2_delivery_is_rendered_and_checked() {
    let r = l2_report(Some(50));
    passes(&r, "lossless");
    let body = r.body();
    assert!(body.contains("   5 start-vm vm0 (running)\n"), "{body}");
    assert!(body.contains("   7 stop-vm vm0\n"), "{body}");
    assert!(
        body.contains(
            "step 6  dev0/msi0  raised 50  L1 50 (IR-PCI-MSI)  injected by KVM 50  delivered in L2 50\n"
        ),
        "{body}"
    );
    // no L2 ran during step 8: nothing about delivery
    assert!(
        body.contains("step 8  dev0/msi0  raised 2  L1 2 (IR-PCI-MSI)  injected by KVM 2\n"),
        "{body}"
    );
}

#[test]
fn lossless_fails_on_a_lost_l2_delivery() {
    let r = l2_report(Some(49));
    fails(
        &r,
        "lossless",
        "step 6 dev0/msi0: raised 50 but L2 received 49 (L2 of vm0)",
    );
    // everything else was fine: only the delivery is blamed
    let c = check_of(&r, "lossless");
    assert!(!c.detail.contains("injected"), "{}", c.detail);
}

#[test]
fn lossless_fails_when_a_running_l2_reports_nothing() {
    let r = l2_report(None);
    fails(
        &r,
        "lossless",
        "step 6 dev0/msi0: the L2 of vm0 was running but reported no deliveries",
    );
}

#[test]
fn start_vm_lines_name_the_mode() {
    let s = l2_scenario("mode = \"alternate\"\nperiod_ms = 20");
    assert_eq!(step_line(&s.steps[4]), "start-vm vm0 (alternate, 20 ms phases)");
    let s = l2_scenario("mode = \"alternate\"");
    assert_eq!(step_line(&s.steps[4]), "start-vm vm0 (alternate, 5 ms phases)");
    let s = l2_scenario("mode = \"halted\"");
    assert_eq!(step_line(&s.steps[4]), "start-vm vm0 (halted)");
    let s = l2_scenario("");
    assert_eq!(step_line(&s.steps[4]), "start-vm vm0 (running)", "running is the default");
    let running = l2_running_before_each_step(&s);
    assert!(running[4].is_empty() && running[5].contains("vm0") && running[7].is_empty());
}
