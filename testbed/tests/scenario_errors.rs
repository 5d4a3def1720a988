//! Every bad scenario fixture fails to load with a message that names the
//! file, line and column and says what is wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use testbed::scenario::{self, Expectation, ScenarioError};

fn fixtures(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
}

/// Fixture name -> the error after `<path>:`.
const BAD: &[(&str, &str)] = &[
        ("bad-bdf", r#"6:1: device "dev0": bad bdf "00:05.0": expected the full form, e.g. "0000:00:05.0""#),
        ("bad-device-name", r#"4:1: device "dev/0": bad name "dev/0": use lowercase letters, digits, '-' and '_'"#),
        ("deassign-unattached", "14:1: step 2 (irqfd-deassign): vm0 has no irqfd on dev0/msi0 to deassign"),
        ("duplicate-device", r#"8:1: device "dev0": declared twice"#),
        ("expect-never-attached", "22:1: expect 1 (consumer-registered): no irqfd step attaches dev0/msi0 to vm0"),
        ("expect-unknown-check", "8:1: expect 1 (fast): unknown variant `fast`, expected one of `lossless`, `pairing`, `producer-registered`, `no-producer`, `consumer-registered`, `connected`, `connected-iff-posting`, `irqfd-refused`, `ga-log-wakeups`, `l2-lossless`, `inhibit-routes`, `route-delivery`"),
        ("expect-unknown-vector", r#"17:1: expect 1 (producer-registered): unknown vector "dev0/msi1": dev0 (edu) has vectors msi0..msi0 and intx0"#),
        ("expect-unknown-vm", r#"26:1: expect 1 (connected): unknown vm "vm1": no create-vm vm1"#),
        ("fire-after-disable", r#"21:1: step 4 (fire): vector "dev0/msi0" is not enabled: no enable-msi dev0 in force"#),
        ("fire-before-enable", r#"13:1: step 2 (fire): vector "dev0/msi0" is not enabled: no enable-msi dev0 in force"#),
        ("fire-count-huge", "18:1: step 3 (fire): count = 1000001 out of range 1..=1000000"),
        ("fire-count-negative", "18:1: step 3 (fire): count: invalid value: integer `-1`, expected u32"),
        ("fire-count-zero", "18:1: step 3 (fire): count = 0 out of range 1..=1000000"),
        ("fire-unbound", "9:1: step 1 (fire): dev0 is not bound: bind it first"),
        ("irqfd-after-destroy", r#"25:1: step 5 (irqfd): vm "vm0" used after destroy-vm at step 4"#),
        ("irqfd-no-vm", r#"17:1: step 3 (irqfd): unknown vm "vm0": no earlier create-vm vm0"#),
        ("irqfd-twice", "27:1: step 5 (irqfd): vm0 already has an irqfd on dev0/msi0 (step 4)"),
        ("lossless-nothing-fired", "8:1: expect 1 (lossless): no fire step: nothing to check"),
        ("missing-field", "7:1: step 2 (irqfd): missing field `vector`"),
        ("no-description", "1:1: missing field `description`"),
        ("no-steps", "2:1: no [[step]] tables"),
        ("signal-no-eventfd", "14:1: step 3 (signal): dev0/msi0 has no eventfd to signal: no earlier irqfd or enable-msi made it"),
        ("syntax", "5:6: string values must be quoted, expected literal string"),
        ("too-many-vectors", "14:1: step 2 (enable-msi): vectors = 2 out of range: dev0 (edu) has 1..=1"),
        ("undeclared-device", r#"9:1: step 1 (bind): unknown device "dev1" (declared: dev0)"#),
        ("unknown-action", "4:1: step 1 (explode): unknown variant `explode`, expected one of `bind`, `enable-vqs`, `enable-msi`, `disable-msi`, `enable-msix`, `disable-msix`, `mask`, `unmask`, `unplug`, `replug`, `unbind`, `enable-intx`, `intx-unmask`, `create-vm`, `irqfd`, `irqfd-deassign`, `fire`, `signal`, `close-device`, `destroy-vm`, `start-vm`, `stop-vm`, `ipi`, `pit-reinject`, `reload-kvm`, `route`, `panic-l1`, `start-l2`, `l2-traffic`, `l2-link`, `stop-l2`, `l2-unplug`, `l2-replug`, `l2-pause`, `l2-resume`, `kill-l2`"),
        ("unknown-device-key", "5:1: unknown field `modl`, expected one of `name`, `model`, `bdf`, `hub`"),
        ("unknown-expect-key", "21:1: expect 1 (lossless): unknown field `vector`, expected no other field"),
        ("unknown-model", "5:9: unknown variant `e1000`, expected one of `edu`, `igb`, `igb-vf`, `e1000e`, `vdpa-sim-net`, `vp-vdpa-net`"),
        ("unknown-step-key", "13:1: step 2 (fire): unknown field `vectr`, expected `vector` or `count`"),
        ("unknown-variant-list", r#"2:12: unknown variant "amd-avx" (known: intel-ir, intel-ir-xapic, intel-dma, amd-ir, virtio-iommu, none, amd-ir-patched, amd-avic, amd-x2avic, intel-posted-msi, intel-vmx-posted)"#),
        ("unknown-top-key", "2:1: unknown field `fresh-boot`, expected one of `description`, `fresh_boot`, `variants`, `device`, `step`, `expect`, `regression`"),
        ("unknown-vector", r#"17:1: step 3 (fire): unknown vector "dev0/msi3": dev0 (edu) has vectors msi0..msi0 and intx0"#),
        ("use-after-close", "17:1: step 3 (enable-msi): dev0 used after it was closed (step 2): bind it again first"),
        ("msi-on-msix-device", "16:1: step 2 (enable-msi): nic0 (igb) has MSI-X, not MSI: use enable-msix"),
        ("msix-vector-out-of-range", "18:1: step 2 (enable-msix): vector 10 out of range: nic0 (igb) has msix0..msix9"),
        ("msix-empty-list", "18:1: step 2 (enable-msix): vectors = []: wire at least one vector (disable-msix turns MSI-X off)"),
        ("fire-unwired-msix", r#"22:1: step 3 (fire): vector "nic0/msix2" is not wired: enable-msix at step 2 wired msix1, msix3"#),
        ("msix-same-set", "23:1: step 3 (enable-msix): changes nothing: enable-msix at step 2 wired the same vectors"),
        ("mask-edu", "21:1: step 3 (mask): dev0 (edu) cannot mask a vector at the device"),
        ("unmask-not-masked", "22:1: step 3 (unmask): nic0/msix0 is not masked: no mask nic0/msix0 in force"),
        ("unbind-open", "17:1: step 2 (unbind): nic0 is open: close-device first (vfio-pci would wait for the agent to close it)"),
        ("unplug-never-replugged", "13:1: step 2 (unplug): nic0 is never replugged: a scenario must leave L1's devices in place"),
        ("replug-not-unplugged", "9:1: step 1 (replug): nic0 is not unplugged: no unplug nic0 in force"),
        ("unplug-fixed-bdf", "10:1: step 1 (unplug): nic0 has a fixed bdf on the root bus, which cannot hot-plug: drop its bdf"),
        ("unbind-vf", "17:1: step 3 (unbind): vf0 is a virtual function: closing it disables SR-IOV, so it has nothing to unbind"),
        ("unplug-vf", "9:1: step 1 (unplug): vf0 is a virtual function the agent makes: unplug its PF instead (not supported yet)"),
        ("bind-while-unplugged", "13:1: step 2 (bind): nic0 was unplugged at step 1: replug it first"),
        ("msi-name-on-msix-device", r#"22:1: step 3 (fire): unknown vector "nic0/msi0": nic0 (igb) has vectors msix0..msix9"#),
        ("vm-twice", r#"9:1: step 2 (create-vm): vm "vm0" already exists"#),
        ("vdpa-sim-bdf", r#"6:1: device "vdpa0": vdpa_sim_net is not a PCI device: it has no bdf"#),
        ("vdpa-enable-msix", "12:1: step 2 (enable-msix): vdpa0 (virtio-net-pci) has virtqueues, not MSI-X: use enable-vqs"),
        ("enable-vqs-on-edu", "12:1: step 2 (enable-vqs): dev0 (edu) has MSI, not virtqueues: use enable-msi"),
        ("vdpa-fire-rx-without-backend", r#"18:1: step 3 (fire): vdpa0/vq0 cannot fire: virtio-net-pci has no network backend: nothing arrives on its receive queue"#),
        ("vdpa-enable-vqs-twice", "18:1: step 3 (enable-vqs): virtqueue interrupts of vdpa0 already enabled at step 2: once per bind (DRIVER_OK)"),
        ("vdpa-unplug", "9:1: step 1 (unplug): vdpa0 (virtio-net-pci) is a vDPA device: unplug is for VFIO devices"),
        ("l2-traffic-no-hub", r#"20:1: step 2 (l2-traffic): nic0 and nic1 must sit on the same hub (hub = "..." in both [[device]] tables)"#),
        ("start-l2-edu", "10:1: step 1 (start-l2): dev0 is edu: an L2 drives only NICs with a Linux driver (igb, e1000e through vfio-pci) and vdpa-sim-net (a virtio-net through vhost-vdpa)"),
        ("l2-traffic-to-itself-nic", "13:1: step 2 (l2-traffic): from and to are both nic0: frames go from one NIC to another (only a device that loops frames back, vdpa-sim-net, sends to itself)"),
        ("l2-traffic-vdpa-to-nic", "21:1: step 2 (l2-traffic): vdpa0 is vdpa-sim-net: it is on no network, it loops its own frames back (leave `to` out, or set it to `from`)"),
        ("l2-link-vdpa", "15:1: step 2 (l2-link): vdpa0 is vdpa_sim_net: it has no link L0 can flip (l2-link takes an igb or e1000e)"),
        ("l2-unplug-vdpa", "16:1: step 2 (l2-unplug): vdpa0 is vdpa_sim_net: only a NIC given through vfio-pci can be unplugged from an L2"),
        ("l2-unplug-no-hotplug", "14:1: step 2 (l2-unplug): L2 l2 was started without hotplug = true (its VMM's PCI hotplug needs ACPI in L2)"),
        ("l2-link-not-in-l2", "19:1: step 2 (l2-link): nic1 is not a device of L2 l2 (nic0)"),
        ("l2-link-flaps-zero", "16:1: step 2 (l2-link): flaps = 0 out of range 1..=50"),
        ("l2-lossless-nothing-counted", "17:1: expect 1 (l2-lossless): no l2-traffic or l2-link step: nothing to check"),
        ("l2-traffic-unplugged", "28:1: step 3 (l2-traffic): nic1 was unplugged from L2 l2 at step 2: l2-replug it first"),
        ("l2-stop-paused", "18:1: step 3 (stop-l2): L2 l2 was paused at step 2: l2-resume it first"),
        ("bind-in-l2", "14:1: step 2 (bind): nic0 is assigned to the running L2 l2: stop-l2 first"),
        ("intx-fire-no-irqfd", "17:1: step 3 (fire): dev0/intx0 is level-triggered and no irqfd holds it: nothing would acknowledge it"),
        ("intx-on-igb", "13:1: step 2 (enable-intx): nic0 (igb) has no INTx the testbed can drive"),
        ("intx-pin-out-of-range", "24:1: step 4 (irqfd): pin = 24 out of range 16..=23"),
        ("intx-resample-on-msi", "19:1: step 3 (irqfd): resample is for level-triggered INTx vectors (<device>/intx0), not dev0/msi0"),
        ("intx-unmask-without-resample", "27:1: step 5 (intx-unmask): vm0 has no resample irqfd on dev0/intx0: irqfd with resample = true first"),
        ("create-vm-bad-apic", "12:1: step 2 (create-vm): unknown variant `x3apic`, expected `x2apic` or `xapic`"),
        ("intx-with-msi", "17:1: step 3 (enable-intx): dev0 has MSI enabled (step 2): VFIO uses one interrupt type at a time"),
        ("reload-kvm-vm-open", "8:1: step 2 (reload-kvm): VM vm0 still open: the vendor module cannot go while a VM holds it (destroy-vm first)"),
        ("pit-reinject-off-first", "14:1: step 3 (pit-reinject): vm0 has no PIT yet: the first pit-reinject turns reinjection on"),
        ("pit-reinject-twice", "19:1: step 4 (pit-reinject): vm0's PIT reinjection is already on"),
        ("inhibit-routes-never-cleared", "40:1: expect 1 (inhibit-routes): no fire of dev0/msi0 after vm0's inhibit is cleared (pit-reinject reinject = false)"),
        ("pit-reinject-l2-stopped", "9:1: step 2 (pit-reinject): the L2 of vm0 is not running: start-vm first (a vCPU outside KVM_RUN takes the APICv update only when it next enters)"),
        ("pit-reinject-l2-halted", "14:1: step 3 (pit-reinject): the L2 of vm0 runs halted: its vCPU would take the APICv update only when an interrupt wakes it"),
        ("route-no-irqfd", "18:1: step 3 (route): vm0 has no irqfd on dev0/msi0: route changes a live irqfd's route"),
        ("route-none-with-vector", "25:1: step 4 (route): to = \"none\" removes the route: it has no vector"),
        ("route-then-signal", "28:1: step 5 (signal): vm0's route of dev0/msi0 changed at step 4: fire it instead"),
        ("route-then-mask", "33:1: step 6 (mask): vm0's route of nic0/msix0 changed at step 5: masks and route changes do not mix yet"),
        ("route-delivery-no-route", "23:1: expect 1 (route-delivery): no route step changes vm0's route of dev0/msi0: nothing to check"),
        ("no-producer-never-wired", "18:1: expect 1 (no-producer): no enable-vqs step ever wires vdpa0/vq0"),
];

#[test]
fn every_bad_fixture_fails_with_its_message() {
    let dir = fixtures("bad");
    let expected: HashMap<&str, &str> = BAD.iter().copied().collect();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let Some(want) = expected.get(name.as_str()) else {
            panic!(
                "{}: fixture without an expected error in BAD",
                path.display()
            );
        };
        let err = scenario::load(&path).expect_err(&name);
        assert!(
            matches!(err, ScenarioError::Invalid { .. }),
            "{name}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("{}:{want}", path.display()),
            "{name}"
        );
        seen += 1;
    }
    assert_eq!(
        seen,
        BAD.len(),
        "a fixture in BAD is missing from {}",
        dir.display()
    );
}

#[test]
fn error_names_line_and_column_of_the_key() {
    let text = "description = \"x\"\n\n[[device]]\nname = \"dev0\"\nmodel = \"edu\"\n\n[[step]]\naction = \"bind\"\ndevice = \"dev0\"\n\n[[step]]\naction = \"enable-msi\"\ndevice = \"dev0\"\n\n[[step]]\naction = \"fire\"\n  vector = \"dev0/msi3\"\n";
    let err = scenario::parse(Path::new("scenarios/x.toml"), text).unwrap_err();
    match err {
        ScenarioError::Invalid { line, column, .. } => assert_eq!((line, column), (17, 3)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn inline_tables_are_checked_too() {
    let text = r#"
description = "steps as an inline array"
device = [{ name = "dev0", model = "edu" }]
step = [
  { action = "bind", device = "dev0" },
  { action = "fire", vector = "dev0/msi0", count = 2 },
]
"#;
    let err = scenario::parse(Path::new("inline.toml"), text).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"inline.toml:6:22: step 2 (fire): vector "dev0/msi0" is not enabled: no enable-msi dev0 in force"#
    );
}

#[test]
fn good_fixtures_load() {
    let scenarios = scenario::load_paths(&[fixtures("scenarios")]).unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["edu-consumer-first", "edu-producer-first"]);
    let s = &scenarios[1];
    assert_eq!(
        s.description,
        "MSI producer registered before the KVM irqfd consumer; producer torn down first"
    );
    assert!(!s.fresh_boot);
    assert_eq!(s.steps.len(), 7);
    assert_eq!(
        s.steps[4],
        wire::Step::Fire {
            vector: "dev0/msi0".into(),
            count: 5
        }
    );
    assert_eq!(s.expect[0], Expectation::Lossless);
    assert_eq!(
        s.expect[3],
        Expectation::ConnectedIffPosting {
            vm: "vm0".into(),
            vector: "dev0/msi0".into()
        }
    );
    assert_eq!(
        s.expect[3].to_string(),
        "connected-iff-posting vm0 dev0/msi0"
    );
    // defaults
    assert_eq!(
        s.steps[1],
        wire::Step::EnableMsi {
            device: "dev0".into(),
            vectors: 1
        }
    );
    let c = &scenarios[0];
    assert!(c.fresh_boot);
    assert_eq!(c.devices[0].bdf.as_deref(), Some("0000:00:05.0"));
}

#[test]
fn job_uses_resolved_addresses() {
    let s = scenario::load(&fixtures("scenarios").join("edu-producer-first.toml")).unwrap();
    let bdfs = HashMap::from([("dev0".to_string(), "0000:00:04.0".to_string())]);
    let job = s.job(&bdfs);
    assert_eq!(job.scenario, "edu-producer-first");
    assert_eq!(job.devices.len(), 1);
    assert_eq!(job.devices[0].bdf, "0000:00:04.0");
    assert_eq!(job.devices[0].model, wire::DeviceModel::Edu);
    assert_eq!(job.steps, s.steps);
    // the job is what goes over the wire: it must serialize
    serde_json::to_string(&wire::HostMessage::Run(job)).unwrap();
}

#[test]
fn duplicate_names_across_paths_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    std::fs::create_dir(&a).unwrap();
    let src = fixtures("scenarios").join("edu-producer-first.toml");
    std::fs::copy(&src, a.join("edu-producer-first.toml")).unwrap();
    let err = scenario::load_paths(&[src.clone(), a.clone()]).unwrap_err();
    assert!(
        matches!(err, ScenarioError::DuplicateName { .. }),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .contains("scenario name \"edu-producer-first\" also used by"));

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = scenario::load_paths(&[empty]).unwrap_err();
    assert!(err
        .to_string()
        .ends_with("no scenario files (*.toml) in this directory"));

    let err = scenario::load_paths(&[tmp.path().join("missing.toml")]).unwrap_err();
    assert!(matches!(err, ScenarioError::Io { .. }));
}

#[test]
fn reopening_and_reattaching_follow_the_state() {
    // disable-msi then enable-msi again, deassign then attach again: allowed
    let text = r#"
description = "re-enable and re-attach"
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
action = "irqfd-deassign"
vm = "vm0"
vector = "dev0/msi0"
[[step]]
action = "disable-msi"
device = "dev0"
[[step]]
action = "enable-msi"
device = "dev0"
[[step]]
action = "irqfd"
vm = "vm0"
vector = "dev0/msi0"
[[step]]
action = "destroy-vm"
vm = "vm0"
[[step]]
action = "fire"
vector = "dev0/msi0"
"#;
    scenario::parse(Path::new("ok.toml"), text).unwrap();
}
