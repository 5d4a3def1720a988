//! Checks and rendering against synthetic agent reports.

use std::path::Path;

use wire::{BypassEvent as E, Done, Platform, StepReport, VectorCount};

use super::*;
use crate::scenario::{self, Expectation};

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
        iommufd: false,
        tracing_failed: vec![],
        boot_warnings: vec![],
        ipiv: Some(true),
        x2avic: None,
        posted_msi: None,
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

/// A step's report with these bypass events and nothing else (shared
/// with the other report modules' tests).
pub(super) fn step(index: usize, bypass: Vec<E>) -> StepReport {
    StepReport {
        index,
        error: None,
        bypass,
        interrupts: vec![],
        kernel_warnings: vec![],
        l2: None,
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
        resampled: None,
        eoi_trapped: None,
        route: None,
        unmasked: None,
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
        kernel_warnings: vec![],
        l1_msi: None,
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
    assert!(
        body.contains("pass  connected-iff-posting vm0 dev0/msi0: platform can post; consumer registered; connected")
    );
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
    assert!(
        body.contains("   step 4  dev0/msi0  raised 3  L1 3 (IR-PCI-MSI)  injected by KVM 0  eventfd signalled 3\n"),
        "{body}"
    );
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

#[test]
fn irqfd_refused_passes_only_where_kvm_refused_the_irqfd() {
    let refused = Expectation::IrqfdRefused {
        vm: "vm0".into(),
        vector: "dev0/msi0".into(),
    };
    let mut steps = stock_steps();
    steps.truncate(4);
    steps[3].error = Some("KVM_IRQFD: Device or resource busy (os error 16)".into());
    let r = report(stock(), steps, done());
    assert_eq!(super::checks::check(&r, &refused), (true, String::new()));
    // accepted: the check fails and says where
    let r = report(stock(), stock_steps(), done());
    let (passed, detail) = super::checks::check(&r, &refused);
    assert!(!passed);
    assert_eq!(
        detail,
        "KVM accepted the irqfd of vm0 on dev0/msi0 (step 4)"
    );
    assert_eq!(refused.to_string(), "irqfd-refused vm0 dev0/msi0");
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
    fails(
        &r,
        "pairing",
        "step 4: connected dev0/msi0 -> vm0:dev0/msi0 but consumer vm0:dev0/msi0 was not registered",
    );
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
        kernel_warnings: vec![],
        l1_msi: None,
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
    fails(
        &r,
        "consumer-registered",
        "consumer vm0:dev0/msi0 not registered: KVM has no device-posted IRQs (apicv off, IOMMU cannot post)",
    );
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
        normalize(
            "[   12.345678] BUG: unable to handle page fault at ffff888003c1e000 (RIP 0xffffffff81000000), step 3"
        ),
        "[time] BUG: unable to handle page fault at <addr> (RIP <addr>), step 3"
    );
    assert_eq!(normalize("KVM_IRQFD: EINVAL"), "KVM_IRQFD: EINVAL");
}

#[test]
fn normalize_warning_strips_what_differs_between_runs() {
    assert_eq!(
        normalize_warning(
            "WARNING: CPU: 0 PID: 138 at arch/x86/kvm/svm/svm.c:1316 svm_vcpu_free+0x99/0xb0 [kvm_amd]"
        ),
        "WARNING: at arch/x86/kvm/svm/svm.c:1316 svm_vcpu_free [kvm_amd]"
    );
    assert_eq!(
        normalize_warning("Oops: invalid opcode: 0000 [#1] SMP NOPTI"),
        "Oops: invalid opcode: 0000 SMP NOPTI"
    );
    assert_eq!(
        normalize_warning("kernel BUG at lib/list_debug.c:29!"),
        "kernel BUG at lib/list_debug.c:29!"
    );
    assert_eq!(
        normalize_warning("list_add corruption. prev->next should be next (ffff888006eab890), but was ffff888006ea9cb0."),
        "list_add corruption. prev->next should be next (<addr>), but was <addr>."
    );
    // a `+0x` that is no offset stays
    assert_eq!(normalize_warning("BUG: a+0xg"), "BUG: a+0xg");
}

#[test]
fn a_kernel_warning_fails_the_scenario_where_it_was_printed() {
    let quiet = report(posting_platform(), posted_steps(), done());
    assert!(quiet
        .checks()
        .iter()
        .all(|c| c.expectation != "kernel-quiet"));
    assert!(!quiet.body().contains("kernel warnings"));

    let mut steps = posted_steps();
    steps[6].kernel_warnings = vec![
        "WARNING: CPU: 0 PID: 138 at arch/x86/kvm/svm/svm.c:1316 svm_vcpu_free+0x99/0xb0 [kvm_amd]"
            .into(),
    ];
    let mut d = done().unwrap();
    d.kernel_warnings =
        vec!["BUG: kernel NULL pointer dereference, address: 0000000000000008".into()];
    let r = report(posting_platform(), steps, Some(d));
    assert!(!r.all_passed());
    fails(
        &r,
        "kernel-quiet",
        "the kernel warned 2 times: step 7 destroy-vm: WARNING: at arch/x86/kvm/svm/svm.c:1316 svm_vcpu_free [kvm_amd]; \
         cleanup: BUG: kernel NULL pointer dereference, address: <addr>",
    );
    let body = r.body();
    assert!(
        body.contains(
            "kernel warnings\n   step 7 destroy-vm: WARNING: at arch/x86/kvm/svm/svm.c:1316 svm_vcpu_free [kvm_amd]\n"
        ),
        "{body}"
    );
    assert!(
        body.contains("FAIL  kernel-quiet: the kernel warned 2 times"),
        "{body}"
    );
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
    l2_scenario_with(mode_lines, "")
}

fn l2_scenario_with(mode_lines: &str, extra: &str) -> Scenario {
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
{extra}"#
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
        body.contains("step 6  dev0/msi0  raised 50  L1 50 (IR-PCI-MSI)  injected by KVM 50  delivered in L2 50\n"),
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
    assert_eq!(
        step_line(&s.steps[4]),
        "start-vm vm0 (alternate, 20 ms phases)"
    );
    let s = l2_scenario("mode = \"alternate\"");
    assert_eq!(
        step_line(&s.steps[4]),
        "start-vm vm0 (alternate, 5 ms phases)"
    );
    let s = l2_scenario("mode = \"halted\"");
    assert_eq!(step_line(&s.steps[4]), "start-vm vm0 (halted)");
    let s = l2_scenario("");
    assert_eq!(
        step_line(&s.steps[4]),
        "start-vm vm0 (running)",
        "running is the default"
    );
    let running = l2_running_before_each_step(&s);
    assert!(running[4].is_empty() && running[5].contains("vm0") && running[7].is_empty());
}

// ---- posted interrupts: the IOMMU's counters ----

fn iommu(posted: u64, running: u64, logged: u64) -> Option<Result<IommuCounts, String>> {
    Some(Ok(IommuCounts {
        posted,
        posted_running: running,
        posted_logged: logged,
        posted_idle: posted.saturating_sub(running + logged),
        remapped: 17,
        ..Default::default()
    }))
}

/// edu-l2-running's shape on a posting platform: 50 fired into a running
/// L2, then 2 while it is stopped; none of them seen by L1 or KVM.
fn posted_l2_report(
    step6: VectorCount,
    step8: VectorCount,
    counts: Option<Result<IommuCounts, String>>,
) -> Report {
    let s = l2_scenario("mode = \"running\"");
    let mut steps: Vec<StepReport> = (0..8).map(|i| step(i, vec![])).collect();
    steps[5].interrupts = vec![step6];
    steps[7].interrupts = vec![step8];
    Report::from_parts(&s, header(), posting_platform(), steps, done(), None).with_iommu(counts)
}

fn posted(raised: u64, delivered: Option<u64>) -> VectorCount {
    VectorCount {
        delivered,
        ..fired(raised, 0, 0, None)
    }
}

#[test]
fn posted_interrupts_are_accounted_by_the_iommu() {
    let r = posted_l2_report(posted(50, Some(50)), posted(2, None), iommu(52, 40, 10));
    let c = check_of(&r, "lossless");
    assert!(c.passed, "{}", c.detail);
    assert_eq!(c.detail, "52 posted by the IOMMU, 0 through L1");
    let body = r.body();
    assert!(body.contains("   iommu  posted 52\n"), "{body}");
    assert!(
        body.contains("step 6  dev0/msi0  raised 50  L1 0 (IR-PCI-MSI)  injected by KVM 0  delivered in L2 50\n"),
        "{body}"
    );
    // the split depends on scheduling: it is metadata, not body
    let other = posted_l2_report(posted(50, Some(50)), posted(2, None), iommu(52, 2, 3));
    assert_eq!(body, other.body());
    assert_ne!(r.info(), other.info());
    let json = r.to_json();
    assert_eq!(json["iommu"]["posted"], 52);
    assert_eq!(json["iommu"]["posted_logged"], 10);
    assert_eq!(json["iommu"]["remapped"], 17);
}

#[test]
fn lossless_fails_on_a_lost_posted_interrupt() {
    // the stopped L2 cannot show the loss; only the IOMMU's count can
    let r = posted_l2_report(posted(50, Some(50)), posted(2, None), iommu(51, 40, 10));
    fails(
        &r,
        "lossless",
        "the IOMMU posted 51 but 52 raised interrupts did not pass through L1 (the rest were lost)",
    );
}

#[test]
fn lossless_fails_on_an_interrupt_counted_twice() {
    // L1 saw (and KVM injected) the 2 of step 8, and the IOMMU posted them too
    let r = posted_l2_report(
        posted(50, Some(50)),
        fired(2, 2, 2, None),
        iommu(52, 40, 10),
    );
    fails(
        &r,
        "lossless",
        "the IOMMU posted 52 but 50 raised interrupts did not pass through L1 (some were counted twice",
    );
    // the same split with the IOMMU agreeing passes: 50 posted, 2 through L1
    let r = posted_l2_report(
        posted(50, Some(50)),
        fired(2, 2, 2, None),
        iommu(50, 40, 10),
    );
    let c = check_of(&r, "lossless");
    assert!(c.passed, "{}", c.detail);
    assert_eq!(c.detail, "50 posted by the IOMMU, 2 through L1");
}

#[test]
fn lossless_on_a_posting_platform_still_checks_l1_kvm_and_l2() {
    // L1 saw more than raised
    let r = posted_l2_report(posted(50, Some(50)), fired(2, 3, 3, None), iommu(50, 0, 0));
    fails(
        &r,
        "lossless",
        "step 8 dev0/msi0: raised 2 but L1 saw 3, more than raised",
    );
    // what went through L1 must be injected by KVM where an irqfd holds it
    let r = posted_l2_report(posted(50, Some(50)), fired(2, 1, 0, None), iommu(51, 0, 0));
    fails(
        &r,
        "lossless",
        "step 8 dev0/msi0: L1 saw 1 of 2 raised but KVM injected 0 (irqfd of vm0)",
    );
    // a posted interrupt must still arrive in the running L2
    let r = posted_l2_report(posted(50, Some(49)), posted(2, None), iommu(52, 0, 0));
    fails(
        &r,
        "lossless",
        "step 6 dev0/msi0: raised 50 but L2 received 49 (L2 of vm0)",
    );
    // unreadable counters: nothing can be accounted
    let r = posted_l2_report(
        posted(50, Some(50)),
        posted(2, None),
        Some(Err(
            "qom-get /machine/peripheral/iommu0 ga-posted: no such property".into(),
        )),
    );
    fails(
        &r,
        "lossless",
        "cannot account for posted interrupts: qom-get",
    );
    assert!(
        r.body().contains("   iommu  counters not read: qom-get"),
        "{}",
        r.body()
    );
}

#[test]
fn stock_reports_have_no_iommu_line() {
    let r = l2_report(Some(50));
    assert!(!r.body().contains("iommu"), "{}", r.body());
    assert_eq!(check_of(&r, "lossless").detail, "");
    assert!(r.to_json()["iommu"].is_null());
}

fn with_expect(s: &str, extra: &str) -> Scenario {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scenarios")
            .join(s),
    )
    .unwrap();
    scenario::parse(Path::new("scenarios/x.toml"), &format!("{text}\n{extra}")).unwrap()
}

#[test]
fn ga_log_wakeups_needs_a_logged_post_where_the_platform_posts() {
    let s = l2_scenario_with(
        "mode = \"alternate\"",
        "\n[[expect]]\ncheck = \"ga-log-wakeups\"\n",
    );
    let mut steps: Vec<StepReport> = (0..8).map(|i| step(i, vec![])).collect();
    steps[5].interrupts = vec![posted(50, Some(50))];
    steps[7].interrupts = vec![posted(2, None)];
    let make = |platform: Platform, counts| {
        Report::from_parts(&s, header(), platform, steps.clone(), done(), None).with_iommu(counts)
    };
    passes(
        &make(posting_platform(), iommu(52, 30, 5)),
        "ga-log-wakeups",
    );
    fails(
        &make(posting_platform(), iommu(52, 52, 0)),
        "ga-log-wakeups",
        "the IOMMU posted 52 interrupts but logged none in the GA log",
    );
    fails(
        &make(posting_platform(), Some(Err("gone".into()))),
        "ga-log-wakeups",
        "cannot tell: gone",
    );
    fails(
        &make(posting_platform(), None),
        "ga-log-wakeups",
        "the platform can post but its IOMMU has no counters",
    );
    let stock = make(stock(), None);
    let c = check_of(&stock, "ga-log-wakeups");
    assert!(c.passed);
    assert_eq!(
        c.detail,
        "not applicable: platform cannot post (apicv off, IOMMU cannot post)"
    );
}

#[test]
fn signal_steps_are_kvm_injections_without_a_device() {
    let s = with_expect("edu-kvm-injects.toml", "");
    let fire_at = s
        .steps
        .iter()
        .position(|st| matches!(st, Step::Fire { .. }))
        .unwrap();
    let mut steps: Vec<StepReport> = (0..s.steps.len()).map(|i| step(i, vec![])).collect();
    let mut total_posted = 0;
    for (i, st) in s.steps.iter().enumerate() {
        let running = l2_running_before_each_step(&s)[i].contains("vm0");
        match st {
            Step::Signal { count, .. } => {
                let c = u64::from(*count);
                steps[i].interrupts = vec![VectorCount {
                    host_chip: None,
                    delivered: running.then_some(c),
                    ..fired(c, 0, c, None)
                }];
            }
            Step::Fire { count, .. } => {
                let c = u64::from(*count);
                total_posted += c;
                steps[i].interrupts = vec![posted(c, running.then_some(c))];
            }
            _ => {}
        }
    }
    let r = Report::from_parts(
        &s,
        header(),
        posting_platform(),
        steps.clone(),
        done(),
        None,
    )
    .with_iommu(iommu(total_posted, total_posted, 0));
    passes(&r, "lossless");
    let body = r.body();
    assert!(body.contains("  written to the eventfd "), "{body}");
    assert!(body.contains("signal dev0/msi0 x"), "{body}");
    // a signal KVM did not inject is a loss
    let first_signal = s
        .steps
        .iter()
        .position(|st| matches!(st, Step::Signal { .. }))
        .unwrap();
    let mut lossy = steps.clone();
    lossy[first_signal].interrupts[0].injected -= 1;
    let r = Report::from_parts(&s, header(), posting_platform(), lossy, done(), None)
        .with_iommu(iommu(total_posted, total_posted, 0));
    fails(&r, "lossless", &format!("step {}", first_signal + 1));
    fails(&r, "lossless", "but KVM injected");
    // signals are not posted: counting them as posted fails the scenario sum
    let r = Report::from_parts(&s, header(), posting_platform(), steps, done(), None)
        .with_iommu(iommu(total_posted + 1, total_posted, 0));
    fails(&r, "lossless", "the IOMMU posted");
    assert!(fire_at > first_signal);
}

const IPI: &str = r#"
description = "the L2 sends itself IPIs"

[[device]]
name = "dev0"
model = "edu"

[[step]]
action = "create-vm"
vm = "vm0"

[[step]]
action = "start-vm"
vm = "vm0"

[[step]]
action = "ipi"
vm = "vm0"
vector = 0x31
count = 50

[[step]]
action = "stop-vm"
vm = "vm0"

[[expect]]
check = "lossless"
"#;

fn ipi_report(sent: u64, delivered: Option<u64>) -> Report {
    let s = scenario::parse(Path::new("scenarios/edu-l2-ipi.toml"), IPI).unwrap();
    let mut steps: Vec<StepReport> = (0..4).map(|i| step(i, vec![])).collect();
    steps[2].interrupts = vec![VectorCount {
        vector: "0x31".into(),
        raised: sent,
        signalled: None,
        host_irq: 0,
        host_chip: None,
        injected: 0,
        delivered,
        resampled: None,
        eoi_trapped: None,
        route: None,
        unmasked: None,
    }];
    Report::from_parts(&s, header(), posting_platform(), steps, done(), None)
}

#[test]
fn ipi_is_rendered_and_checked() {
    let r = ipi_report(50, Some(50));
    passes(&r, "lossless");
    let body = r.body();
    assert!(body.contains("   3 ipi vm0 0x31 x50\n"), "{body}");
    assert!(
        body.contains("   step 3  vm0 ipi 0x31  sent 50  delivered in L2 50\n"),
        "{body}"
    );
    assert_eq!(step_line(&r.scenario.steps[2]), "ipi vm0 0x31 x50");
}

#[test]
fn lossless_fails_on_a_lost_ipi() {
    let r = ipi_report(50, Some(48));
    fails(
        &r,
        "lossless",
        "step 3 vm0 ipi 0x31: sent 50 but L2 received 48",
    );
    let r = ipi_report(49, Some(49));
    fails(&r, "lossless", "step 3 vm0 ipi 0x31: the L2 sent 49 of 50");
    let r = ipi_report(50, None);
    fails(
        &r,
        "lossless",
        "step 3 vm0 ipi 0x31: the L2 reported no deliveries",
    );
    let mut r = ipi_report(50, Some(50));
    r.steps[2].interrupts.clear();
    r.steps[2].error = Some("vm0: L2 did not finish sending IPIs".into());
    fails(
        &r,
        "lossless",
        "step 3 (vm0 ipi 0x31) failed: vm0: L2 did not finish sending IPIs",
    );
}

const MASKED: &str = r#"
description = "igb: fire while masked, then unmask"

[[device]]
name = "nic0"
model = "igb"

[[step]]
action = "bind"
device = "nic0"

[[step]]
action = "enable-msix"
device = "nic0"
vectors = 2

[[step]]
action = "create-vm"
vm = "vm0"

[[step]]
action = "irqfd"
vm = "vm0"
vector = "nic0/msix1"

[[step]]
action = "mask"
vector = "nic0/msix1"

[[step]]
action = "fire"
vector = "nic0/msix1"
count = 3

[[step]]
action = "unmask"
vector = "nic0/msix1"

[[step]]
action = "mask"
vector = "nic0/msix1"

[[step]]
action = "unmask"
vector = "nic0/msix1"

[[expect]]
check = "lossless"
"#;

fn masked_report(held: VectorCount, released: VectorCount, empty: VectorCount) -> Report {
    let s = scenario::parse(Path::new("masked.toml"), MASKED).unwrap();
    let at = |i, c: Option<VectorCount>| StepReport {
        interrupts: c.into_iter().collect(),
        ..step(i, vec![])
    };
    let steps = vec![
        at(0, None),
        at(1, None),
        at(2, None),
        at(3, None),
        at(4, None),
        at(5, Some(held)),
        at(6, Some(released)),
        at(7, None),
        at(8, Some(empty)),
    ];
    Report::from_parts(&s, header(), stock(), steps, done(), None)
}

fn msix1(raised: u64, seen: u64) -> VectorCount {
    VectorCount {
        vector: "nic0/msix1".into(),
        host_chip: Some("IR-PCI-MSIX".into()),
        ..fired(raised, seen, seen, None)
    }
}

#[test]
fn masks_hold_raises_and_unmask_releases_one() {
    let s = scenario::parse(Path::new("masked.toml"), MASKED).unwrap();
    let held = held_by_mask(&s);
    assert_eq!(held[5], Some(true), "fire while masked");
    assert_eq!(held[6], Some(true), "unmask with a raise pending");
    assert_eq!(held[8], Some(false), "unmask with nothing pending");
    assert_eq!(held[4], None);
    passes(
        &masked_report(msix1(3, 0), msix1(1, 1), msix1(0, 0)),
        "lossless",
    );
}

#[test]
fn lossless_fails_when_a_masked_vector_leaks_or_an_unmask_sends_twice() {
    fails(
        &masked_report(msix1(3, 1), msix1(1, 1), msix1(0, 0)),
        "lossless",
        "step 6 nic0/msix1: masked at the device, yet L1 saw 1",
    );
    fails(
        &masked_report(msix1(3, 0), msix1(1, 2), msix1(0, 0)),
        "lossless",
        "step 7 nic0/msix1: raised 1 but L1 saw 2",
    );
    fails(
        &masked_report(msix1(3, 0), msix1(1, 1), msix1(0, 1)),
        "lossless",
        "step 9 nic0/msix1: raised 0 but L1 saw 1",
    );
}

#[test]
fn events_of_different_vectors_are_ordered_by_vector_keeping_each_vectors_order() {
    let mut a = vec![
        cunreg("vm0:nic0/msix3"),
        disc("nic0/msix3", "vm0:nic0/msix3"),
        cunreg("vm0:nic0/msix1"),
        disc("nic0/msix1", "vm0:nic0/msix1"),
    ];
    let mut b = vec![
        cunreg("vm0:nic0/msix1"),
        disc("nic0/msix1", "vm0:nic0/msix1"),
        cunreg("vm0:nic0/msix3"),
        disc("nic0/msix3", "vm0:nic0/msix3"),
    ];
    by_vector(&mut a);
    by_vector(&mut b);
    assert_eq!(
        a, b,
        "the interleaving of two vectors' teardown is not behaviour"
    );
    // within a vector the kernel's order stays, whatever it is
    let mut c = vec![
        disc("nic0/msix1", "vm0:nic0/msix1"),
        punreg("nic0/msix1"),
        preg("nic0/msix0"),
    ];
    by_vector(&mut c);
    assert_eq!(
        c,
        vec![
            preg("nic0/msix0"),
            disc("nic0/msix1", "vm0:nic0/msix1"),
            punreg("nic0/msix1")
        ]
    );
}

// ---- vDPA: no-producer, and lossless where the device has no IRQ of its own

const VDPA_SIM: &str = r#"
description = "vdpa_sim_net: no per-queue IRQ"

[[device]]
name = "vdpa0"
model = "vdpa-sim-net"

[[step]]
action = "bind"
device = "vdpa0"

[[step]]
action = "create-vm"
vm = "vm0"

[[step]]
action = "irqfd"
vm = "vm0"
vector = "vdpa0/vq1"

[[step]]
action = "enable-vqs"
device = "vdpa0"
vectors = 2

[[step]]
action = "fire"
vector = "vdpa0/vq1"
count = 5

[[step]]
action = "close-device"
device = "vdpa0"

[[expect]]
check = "lossless"

[[expect]]
check = "no-producer"
vector = "vdpa0/vq1"
"#;

fn vdpa_sim_report(enable: Vec<E>, fire: VectorCount) -> Report {
    let s = scenario::parse(Path::new("built-kernel/vdpa-sim.toml"), VDPA_SIM).unwrap();
    let steps = vec![
        step(0, vec![]),
        step(1, vec![]),
        step(
            2,
            vec![E::ConsumerNotRegistered {
                consumer: "vm0:vdpa0/vq1".into(),
            }],
        ),
        step(3, enable),
        StepReport {
            interrupts: vec![fire],
            ..step(4, vec![])
        },
        step(5, vec![]),
    ];
    Report::from_parts(&s, header(), stock(), steps, done(), None)
}

/// vdpa_sim signals the eventfd from kernel code: no L1 IRQ line.
fn sim_fired(host_irq: u64, injected: u64) -> VectorCount {
    VectorCount {
        vector: "vdpa0/vq1".into(),
        raised: 5,
        signalled: None,
        host_irq,
        host_chip: None,
        injected,
        delivered: None,
        resampled: None,
        eoi_trapped: None,
        route: None,
        unmasked: None,
    }
}

#[test]
fn no_producer_passes_without_one_and_fails_on_any() {
    let r = vdpa_sim_report(vec![], sim_fired(0, 5));
    passes(&r, "no-producer");
    passes(&r, "lossless");

    let r = vdpa_sim_report(vec![preg("vdpa0/vq1")], sim_fired(0, 5));
    fails(
        &r,
        "no-producer",
        "producer vdpa0/vq1 registered at step 4 (ret 0)",
    );

    let r = vdpa_sim_report(vec![preg(wire::UNKNOWN_NAME)], sim_fired(0, 5));
    fails(
        &r,
        "no-producer",
        "a producer nobody expected registered at step 4",
    );

    // "no producer" because the wiring step failed proves nothing
    let s = scenario::parse(Path::new("built-kernel/vdpa-sim.toml"), VDPA_SIM).unwrap();
    let mut steps = vec![
        step(0, vec![]),
        step(1, vec![]),
        step(2, vec![]),
        step(3, vec![]),
    ];
    steps[3].error = Some("VHOST_VDPA_SET_STATUS(0xf): Invalid argument (os error 22)".into());
    let r = Report::from_parts(&s, header(), stock(), steps, done(), None);
    fails(
        &r,
        "no-producer",
        "cannot tell: step 4 (enable-vqs vdpa0 (vq0, vq1)) failed",
    );
}

const VDPA_SIM_L2: &str = r#"
description = "vdpa_sim_net to a real L2"

[[device]]
name = "vdpa0"
model = "vdpa-sim-net"

[[step]]
action = "start-l2"
l2 = "l2"
devices = ["vdpa0"]

[[step]]
action = "stop-l2"
l2 = "l2"

[[expect]]
check = "no-producer"
vector = "vdpa0/vq0"
"#;

#[test]
fn no_producer_counts_start_l2_as_wiring_a_vdpa_device() {
    let s = scenario::parse(Path::new("built-kernel/vdpa-sim-l2.toml"), VDPA_SIM_L2).unwrap();
    let r = Report::from_parts(
        &s,
        header(),
        stock(),
        vec![step(0, vec![]), step(1, vec![])],
        done(),
        None,
    );
    passes(&r, "no-producer");
    // L1's QEMU made vhost-vdpa register one after all
    let r = Report::from_parts(
        &s,
        header(),
        stock(),
        vec![step(0, vec![preg("vdpa0/vq0")]), step(1, vec![])],
        done(),
        None,
    );
    fails(
        &r,
        "no-producer",
        "producer vdpa0/vq0 registered at step 1 (ret 0)",
    );
    // the L2 never started: nothing was wired
    let mut steps = vec![step(0, vec![])];
    steps[0].error = Some("l2: no answer from L2".into());
    let r = Report::from_parts(&s, header(), stock(), steps, done(), None);
    fails(
        &r,
        "no-producer",
        "cannot tell: step 1 (start-l2 l2 with vdpa0",
    );
}

#[test]
fn lossless_of_a_device_without_its_own_irq() {
    // an L1 line for a device that has none is a miscount
    let r = vdpa_sim_report(vec![], sim_fired(5, 5));
    fails(
        &r,
        "lossless",
        "step 5 vdpa0/vq1: signalled by a device without an IRQ of its own but L1 saw 5 device interrupts",
    );
    let r = vdpa_sim_report(vec![], sim_fired(0, 4));
    fails(
        &r,
        "lossless",
        "step 5 vdpa0/vq1: raised 5 but KVM injected 4 (irqfd of vm0)",
    );
}
