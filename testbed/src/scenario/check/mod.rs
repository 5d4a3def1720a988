//! The static simulation of a scenario's steps: what is declared, bound,
//! enabled, attached and running after each step, so that a mistake is an
//! error at its line before anything runs. The steps themselves are checked
//! per family: `devices.rs` (VFIO and vDPA devices: bind, interrupts,
//! masks, fire, hot-plug), `kvm.rs` (VMs, irqfds, the tiny L2 in a KVM VM),
//! `nested.rs` (real L2 Linux guests under L1's QEMU), `route.rs` (GSI
//! routes changed under a live irqfd).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use toml::Spanned;
use wire::{DeviceModel, IrqKind, Step};

use super::source::Source;
use super::{name_problem, valid_bdf, Expectation, ScenarioDevice, ScenarioError};

mod devices;
mod inhibit;
mod kvm;
mod l2ctl;
mod nested;
mod route;

pub(crate) use route::routes_before_each_step;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::scenario) enum DevState {
    Declared,
    Bound,
    /// MSI or MSI-X enabled with these vectors wired, at this step (1-based).
    Enabled {
        vectors: BTreeSet<u32>,
        step: usize,
    },
    Closed {
        step: usize,
    },
    /// Unbound from vfio-pci after a close.
    Unbound {
        step: usize,
    },
    /// Hot-unplugged from L1.
    Unplugged {
        step: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::scenario) enum VmState {
    Live,
    Destroyed { step: usize },
}

pub(in crate::scenario) struct DevInfo {
    pub(in crate::scenario) model: DeviceModel,
    pub(in crate::scenario) state: DevState,
    /// Every vector some enable step wired.
    pub(in crate::scenario) ever_wired: BTreeSet<u32>,
    /// The enable-intx step in force, if any.
    pub(in crate::scenario) intx: Option<usize>,
}

/// Simulates the steps' state to find mistakes before anything runs.
pub(in crate::scenario) struct Checker<'s, 'a> {
    pub(in crate::scenario) src: &'s Source<'a>,
    pub(in crate::scenario) devices: BTreeMap<String, DevInfo>,
    /// Fixed addresses: bdf -> device.
    pub(in crate::scenario) bdfs: BTreeMap<String, String>,
    /// Each device's hub.
    pub(in crate::scenario) hubs: BTreeMap<String, Option<String>>,
    pub(in crate::scenario) vms: BTreeMap<String, VmState>,
    /// Attached irqfds: (vm, vector) -> step that attached it.
    pub(in crate::scenario) irqfds: BTreeMap<(String, String), usize>,
    /// Every (vm, vector) that some irqfd step attached.
    pub(in crate::scenario) ever_attached: BTreeMap<(String, String), usize>,
    /// VMs whose L2 runs: vm -> the start-vm step.
    pub(in crate::scenario) l2_running: BTreeMap<String, usize>,
    /// VMs whose L2 last started in mode `halted`.
    pub(in crate::scenario) l2_halted: BTreeSet<String>,
    /// Whether any step is an `l2-traffic` or an `l2-link`: counts what
    /// a real L2's devices raised.
    pub(in crate::scenario) l2_counted: bool,
    /// Running real L2s (`start-l2`): name -> (step, devices).
    pub(in crate::scenario) linux_l2s: BTreeMap<String, (usize, Vec<String>)>,
    /// Unplugged and paused L2s (`l2ctl`).
    pub(in crate::scenario) l2ctl: l2ctl::L2Ctl,
    /// (vm, vector) irqfds whose route a `route` step changed -> the first
    /// such step.
    pub(in crate::scenario) rerouted: BTreeMap<(String, String), usize>,
    /// Resample irqfds: (vm, INTx vector) -> the irqfd step.
    pub(in crate::scenario) resample: BTreeMap<(String, String), usize>,
    /// Whether any step fires (or signals).
    pub(in crate::scenario) fired: bool,
    /// Vectors masked at the device: vector -> the mask step.
    pub(in crate::scenario) masked: BTreeMap<String, usize>,
    /// Vectors whose eventfd the agent has made (an irqfd or enable-msi ran).
    pub(in crate::scenario) eventfds: std::collections::BTreeSet<String>,
    /// PIT reinjection (the PIT_REINJ inhibit) per VM.
    pub(in crate::scenario) inhibits: BTreeMap<String, inhibit::Inhibit>,
    /// (vm, vector) -> fires of the vector held by the VM's irqfd, by inhibit.
    pub(in crate::scenario) fires_by_inhibit: BTreeMap<(String, String), inhibit::FiresByInhibit>,
    /// How many steps the scenario has.
    pub(in crate::scenario) step_count: usize,
    /// Where the current table is, for errors.
    pub(in crate::scenario) span: Range<usize>,
    pub(in crate::scenario) context: String,
}

impl<'s, 'a> Checker<'s, 'a> {
    pub(in crate::scenario) fn new(src: &'s Source<'a>) -> Self {
        Checker {
            src,
            devices: BTreeMap::new(),
            bdfs: BTreeMap::new(),
            hubs: BTreeMap::new(),
            vms: BTreeMap::new(),
            irqfds: BTreeMap::new(),
            ever_attached: BTreeMap::new(),
            l2_running: BTreeMap::new(),
            l2_halted: BTreeSet::new(),
            linux_l2s: BTreeMap::new(),
            l2ctl: Default::default(),
            l2_counted: false,
            resample: BTreeMap::new(),
            rerouted: BTreeMap::new(),
            fired: false,
            masked: BTreeMap::new(),
            eventfds: Default::default(),
            inhibits: BTreeMap::new(),
            fires_by_inhibit: BTreeMap::new(),
            step_count: 0,
            span: 0..0,
            context: String::new(),
        }
    }

    /// An error at `key` of the current table (or the table, for "").
    pub(in crate::scenario) fn err(&self, key: &str, message: String) -> ScenarioError {
        let span = if key.is_empty() {
            self.span.clone()
        } else {
            self.src.key_span(&self.span, key)
        };
        self.src.error(span, format!("{}: {message}", self.context))
    }

    pub(in crate::scenario) fn declare_device(
        &mut self,
        dev: &Spanned<ScenarioDevice>,
    ) -> Result<(), ScenarioError> {
        self.span = dev.span();
        let d = dev.get_ref();
        self.context = format!("device {:?}", d.name);
        if let Some(p) = name_problem(&d.name) {
            return Err(self.err("name", p));
        }
        if self.devices.contains_key(&d.name) {
            return Err(self.err("name", "declared twice".into()));
        }
        if let Some(bdf) = &d.bdf {
            if d.model.qemu_driver().is_none() {
                return Err(self.err(
                    "bdf",
                    format!("{} is not a PCI device: it has no bdf", d.model.label()),
                ));
            }
            if !valid_bdf(bdf) {
                return Err(self.err(
                    "bdf",
                    format!("bad bdf {bdf:?}: expected the full form, e.g. \"0000:00:05.0\""),
                ));
            }
            let key = bdf.to_ascii_lowercase();
            if let Some(other) = self.bdfs.get(&key) {
                return Err(self.err("bdf", format!("bdf {bdf} already used by {other}")));
            }
            self.bdfs.insert(key, d.name.clone());
        }
        if let Some(hub) = &d.hub {
            if !matches!(d.model, DeviceModel::Igb | DeviceModel::E1000e) {
                return Err(self.err(
                    "hub",
                    format!("{} is not a NIC: it has no hub", d.model.label()),
                ));
            }
            if let Some(p) = name_problem(hub) {
                return Err(self.err("hub", p));
            }
        }
        self.hubs.insert(d.name.clone(), d.hub.clone());
        self.devices.insert(
            d.name.clone(),
            DevInfo {
                model: d.model,
                state: DevState::Declared,
                ever_wired: BTreeSet::new(),
                intx: None,
            },
        );
        Ok(())
    }

    fn declared(&self) -> String {
        if self.devices.is_empty() {
            "no [[device]] declared".into()
        } else {
            let names: Vec<&str> = self.devices.keys().map(String::as_str).collect();
            format!("declared: {}", names.join(", "))
        }
    }

    fn device(&self, key: &str, name: &str) -> Result<&DevInfo, ScenarioError> {
        self.devices.get(name).ok_or_else(|| {
            self.err(
                key,
                format!("unknown device {name:?} ({})", self.declared()),
            )
        })
    }

    /// Resolve `<device>/msi<n>` (or `msix<n>`) to (device, n), checking the model has it.
    fn vector(&self, key: &str, vector: &str) -> Result<(String, u32), ScenarioError> {
        let Some((dev, rest)) = vector.split_once('/') else {
            return Err(self.err(
                key,
                format!("bad vector {vector:?}: expected <device>/msi<n>, <device>/msix<n> or <device>/vq<n>, e.g. \"dev0/msi0\""),
            ));
        };
        let Some(info) = self.devices.get(dev) else {
            return Err(self.err(
                key,
                format!(
                    "unknown device {dev:?} in vector {vector:?} ({})",
                    self.declared()
                ),
            ));
        };
        if rest == "intx0" && info.model.spec().intx {
            return Ok((dev.to_string(), 0));
        }
        let n = rest
            .strip_prefix(info.model.irq().prefix())
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .filter(|d| d.len() == 1 || !d.starts_with('0'))
            .and_then(|d| d.parse::<u32>().ok())
            .filter(|&n| n < info.model.vectors());
        match n {
            Some(n) => Ok((dev.to_string(), n)),
            None => Err(self.err(
                key,
                format!(
                    "unknown vector {vector:?}: {dev} ({}) has vectors {}{}",
                    info.model.label(),
                    vector_range(info.model),
                    if info.model.spec().intx {
                        " and intx0"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }

    /// The vector exists and an enable step still in force wired it.
    fn enabled_vector(&self, key: &str, vector: &str) -> Result<(String, u32), ScenarioError> {
        let (dev, n) = self.vector(key, vector)?;
        if wire::is_intx(vector) {
            return match (&self.devices[&dev].state, self.devices[&dev].intx) {
                (DevState::Bound | DevState::Enabled { .. }, Some(_)) => Ok((dev, n)),
                (
                    DevState::Closed { step }
                    | DevState::Unbound { step }
                    | DevState::Unplugged { step },
                    _,
                ) => Err(self.err(
                    key,
                    format!("vector {vector:?} used after {dev} was closed (step {step})"),
                )),
                _ => Err(self.err(
                    key,
                    format!("vector {vector:?} is not enabled: no enable-intx {dev} in force"),
                )),
            };
        }
        let enable = enable_action(self.devices[&dev].model);
        match &self.devices[&dev].state {
            DevState::Enabled { vectors, .. } if vectors.contains(&n) => Ok((dev, n)),
            DevState::Enabled { vectors, step } => Err(self.err(
                key,
                format!(
                    "vector {vector:?} is not wired: {enable} at step {step} wired {}",
                    describe_set(self.devices[&dev].model, vectors)
                ),
            )),
            DevState::Closed { step }
            | DevState::Unbound { step }
            | DevState::Unplugged { step } => Err(self.err(
                key,
                format!("vector {vector:?} used after {dev} was closed (step {step})"),
            )),
            DevState::Declared | DevState::Bound => Err(self.err(
                key,
                format!("vector {vector:?} is not enabled: no {enable} {dev} in force"),
            )),
        }
    }

    /// The vector exists on a bound, open device. Its MSI need not be
    /// enabled: an irqfd may come first (the agent then makes the eventfd).
    fn bound_vector(&self, key: &str, vector: &str) -> Result<(String, u32), ScenarioError> {
        let (dev, n) = self.vector(key, vector)?;
        match self.devices[&dev].state {
            DevState::Bound | DevState::Enabled { .. } => Ok((dev, n)),
            DevState::Declared => Err(self.err(key, format!("{dev} is not bound: bind it first"))),
            DevState::Closed { step } | DevState::Unbound { step } | DevState::Unplugged { step } => Err(self.err(
                key,
                format!("vector {vector:?} used after {dev} was closed (step {step}): bind it again first"),
            )),
        }
    }

    fn live_vm(&self, key: &str, vm: &str) -> Result<(), ScenarioError> {
        match self.vms.get(vm) {
            Some(VmState::Live) => Ok(()),
            Some(VmState::Destroyed { step }) => Err(self.err(
                key,
                format!("vm {vm:?} used after destroy-vm at step {step}"),
            )),
            None => Err(self.err(key, format!("unknown vm {vm:?}: no earlier create-vm {vm}"))),
        }
    }

    pub(in crate::scenario) fn step(
        &mut self,
        index: usize,
        step: &Spanned<Step>,
    ) -> Result<(), ScenarioError> {
        let k = index + 1;
        self.span = step.span();
        self.context = format!("step {k} ({})", step.get_ref().action());
        // one family of steps per file: a new step goes to its family's match
        match step.get_ref() {
            Step::Bind { .. }
            | Step::Unplug { .. }
            | Step::Replug { .. }
            | Step::Unbind { .. }
            | Step::EnableMsi { .. }
            | Step::EnableMsix { .. }
            | Step::EnableVqs { .. }
            | Step::DisableMsi { .. }
            | Step::DisableMsix { .. }
            | Step::Mask { .. }
            | Step::Unmask { .. }
            | Step::Fire { .. }
            | Step::Signal { .. }
            | Step::EnableIntx { .. }
            | Step::CloseDevice { .. } => {
                self.device_step(k, step.get_ref())?;
                if let Step::Fire { vector, .. } = step.get_ref() {
                    self.note_fire_by_inhibit(vector);
                }
                Ok(())
            }
            Step::CreateVm { .. }
            | Step::Irqfd { .. }
            | Step::IrqfdDeassign { .. }
            | Step::DestroyVm { .. }
            | Step::StartVm { .. }
            | Step::StopVm { .. }
            | Step::Ipi { .. }
            | Step::IntxUnmask { .. } => self.kvm_step(k, step.get_ref()),
            Step::ReloadKvm | Step::PitReinject { .. } => self.inhibit_step(step.get_ref()),
            Step::Route { .. } => self.route_step(k, step.get_ref()),
            Step::StartL2 { .. }
            | Step::L2Traffic { .. }
            | Step::L2Link { .. }
            | Step::StopL2 { .. } => self.nested_step(k, step.get_ref()),
            Step::L2Unplug { .. }
            | Step::L2Replug { .. }
            | Step::L2Pause { .. }
            | Step::KillL2 { .. }
            | Step::L2Resume { .. } => self.l2_control(k, step.get_ref()),
            Step::PanicL1 => {
                if index + 1 != self.step_count {
                    return Err(self.err(
                        "action",
                        "panic-l1 must be the last step: nothing runs after it".into(),
                    ));
                }
                Ok(())
            }
        }
    }

    fn set_dev(&mut self, device: &str, state: DevState) {
        if let Some(d) = self.devices.get_mut(device) {
            if !matches!(state, DevState::Bound | DevState::Enabled { .. }) {
                d.intx = None;
            }
            if !matches!(state, DevState::Enabled { .. }) {
                // masks live in the device's interrupt setup: they go with it
                let prefix = format!("{device}/");
                self.masked.retain(|v, _| !v.starts_with(&prefix));
            }
            d.state = state;
        }
    }

    /// An enable step wired exactly `set` of the device's vectors.
    fn wire_vectors(&mut self, device: &str, set: BTreeSet<u32>, step: usize) {
        let model = self.devices[device].model;
        self.eventfds
            .extend(set.iter().map(|n| model.vector_name(device, *n)));
        let unwired: Vec<String> = self
            .masked
            .keys()
            .filter(|v| {
                v.strip_prefix(&format!("{device}/{}", model.irq().prefix()))
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| !set.contains(&n))
            })
            .cloned()
            .collect();
        for v in unwired {
            self.masked.remove(&v);
        }
        let d = self.devices.get_mut(device).expect("declared");
        d.ever_wired.extend(set.iter().copied());
        d.state = DevState::Enabled { vectors: set, step };
    }

    pub(in crate::scenario) fn expectation(
        &mut self,
        index: usize,
        exp: &Spanned<Expectation>,
    ) -> Result<(), ScenarioError> {
        self.span = exp.span();
        self.context = format!("expect {} ({})", index + 1, exp.get_ref().check());
        match exp.get_ref() {
            Expectation::Lossless if !self.fired => {
                Err(self.err("check", "no fire step: nothing to check".into()))
            }
            Expectation::GaLogWakeups if !self.fired => {
                Err(self.err("check", "no fire step: nothing can be posted".into()))
            }
            Expectation::L2Lossless if !self.l2_counted => Err(self.err(
                "check",
                "no l2-traffic or l2-link step: nothing to check".into(),
            )),
            Expectation::Lossless
            | Expectation::Pairing
            | Expectation::GaLogWakeups
            | Expectation::L2Lossless => Ok(()),
            Expectation::ProducerRegistered { vector } | Expectation::NoProducer { vector } => {
                let (dev, n) = self.vector("vector", vector)?;
                if wire::is_intx(vector) {
                    return Err(self.err(
                        "vector",
                        format!("{vector} is INTx: VFIO registers no irqbypass producer for it"),
                    ));
                }
                if !self.devices[&dev].ever_wired.contains(&n) {
                    return Err(self.err(
                        "vector",
                        format!(
                            "no {} step ever wires {vector}",
                            enable_action(self.devices[&dev].model)
                        ),
                    ));
                }
                Ok(())
            }
            Expectation::ConsumerRegistered { vm, vector }
            | Expectation::Connected { vm, vector }
            | Expectation::ConnectedIffPosting { vm, vector }
            | Expectation::IrqfdRefused { vm, vector }
            | Expectation::InhibitRoutes { vm, vector }
            | Expectation::RouteDelivery { vm, vector } => {
                if !self.vms.contains_key(vm) {
                    return Err(self.err("vm", format!("unknown vm {vm:?}: no create-vm {vm}")));
                }
                self.vector("vector", vector)?;
                if !self
                    .ever_attached
                    .contains_key(&(vm.clone(), vector.clone()))
                {
                    return Err(
                        self.err("vector", format!("no irqfd step attaches {vector} to {vm}"))
                    );
                }
                if let Expectation::InhibitRoutes { vm, vector } = exp.get_ref() {
                    self.inhibit_routes(vm, vector)?;
                }
                let key = (vm.clone(), vector.clone());
                if matches!(exp.get_ref(), Expectation::RouteDelivery { .. })
                    && !self.rerouted.contains_key(&key)
                {
                    return Err(self.err(
                        "vector",
                        format!("no route step changes {vm}'s route of {vector}: nothing to check"),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// `msi0..msi0` for a model's vectors.
fn vector_range(model: DeviceModel) -> String {
    let p = model.irq().prefix();
    format!("{p}0..{p}{}", model.vectors().saturating_sub(1))
}

fn enable_action(model: DeviceModel) -> &'static str {
    match model.irq() {
        IrqKind::Msi => "enable-msi",
        IrqKind::Msix => "enable-msix",
        IrqKind::Vq => "enable-vqs",
    }
}

fn irq_kind_name(kind: IrqKind) -> &'static str {
    match kind {
        IrqKind::Msi => "MSI",
        IrqKind::Msix => "MSI-X",
        IrqKind::Vq => "virtqueues",
    }
}

/// `msix0, msix3` for a set of a model's vectors.
fn describe_set(model: DeviceModel, set: &BTreeSet<u32>) -> String {
    let p = model.irq().prefix();
    set.iter()
        .map(|n| format!("{p}{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
