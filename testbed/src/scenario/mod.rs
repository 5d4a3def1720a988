//! Scenario files: strict TOML, checked statically before any QEMU starts.
//!
//! A scenario file declares devices (`[[device]]`), the steps the guest agent
//! runs (`[[step]]`, exactly [`wire::Step`]) and what the report must show
//! (`[[expect]]`, [`Expectation`]). The scenario's name is the file stem.
//!
//! Loading is strict: unknown keys are errors, and the steps are simulated to
//! catch use of undeclared devices, vectors that are not enabled, irqfds on VMs
//! that do not exist, anything used after it was closed, and so on. Every error
//! names the file, line and column, e.g.
//! `scenarios/x.toml:14:1: step 3 (fire): unknown vector "dev0/msi3": dev0 (edu) has vectors msi0..msi0 and intx0`.

//!
//! Where things live: this file has the types and the loader; `source.rs`
//! positions and typed conversion of TOML tables; `check/` the static
//! simulation of the steps, one file per family (`check/devices.rs`: VFIO
//! and vDPA devices, `check/kvm.rs`: KVM VMs, irqfds and the tiny L2,
//! `check/nested.rs`: real L2 Linux guests) and the expectations.

mod check;

pub(crate) use check::routes_before_each_step;
mod source;

use check::{Checker, DevState};
use source::Source;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;
use wire::{DeviceModel, Step};

/// Largest `count` a `fire` step may ask for.
pub const MAX_FIRE_COUNT: u32 = 1_000_000;

/// Longest device or VM name.
pub const MAX_NAME_LEN: usize = 32;

/// A loaded and validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The file stem, e.g. `edu-producer-first`.
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    /// Run in its own L1 boot instead of sharing one with other scenarios.
    pub fresh_boot: bool,
    /// The variants this scenario runs on; `None`: every variant. A
    /// scenario that cannot mean anything on some variants, or that trips a
    /// known problem unrelated to what it tests, names where it runs.
    pub variants: Option<Vec<String>>,
    pub devices: Vec<ScenarioDevice>,
    pub steps: Vec<Step>,
    pub expect: Vec<Expectation>,
}

/// A `[[device]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioDevice {
    /// Scenario name, e.g. `dev0`.
    pub name: String,
    pub model: DeviceModel,
    /// A fixed guest PCI address (`0000:00:05.0`); the runner then pins the
    /// device there with `addr=`. Otherwise the address is resolved at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bdf: Option<String>,
    /// A NIC's network: devices naming the same hub are joined by a QEMU
    /// hub in L0 (`-netdev hubport`), so frames one sends reach the
    /// others and nothing else (never QEMU's user-mode network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
}

/// An `[[expect]]` table: a property the report must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Expectation {
    /// For every fired vector: raised == host_irq, and raised == injected
    /// where an irqfd held the vector, or signalled == raised where none did;
    /// where the L2 of a VM holding the vector ran, delivered == raised.
    /// Where the IOMMU posts (its counters were read), a raised interrupt
    /// either passes through L1 (host_irq, then injected) or is posted, and
    /// over the scenario the IOMMU posted exactly raised - host_irq.
    /// `signal` steps: KVM injected every write (no L1 IRQ, nothing posted).
    /// INTx vectors (level): every lap of the loop closes once per raise
    /// (L1 handler, KVM assertion, L2 ack and EOI, resample, at least one
    /// VFIO unmask per EOI); with no L2 running the line is taken once
    /// (`report/level.rs`).
    Lossless,
    /// `connected` only between a registered producer and a registered consumer
    /// of the same vector; every connection is disconnected before or when
    /// either end unregisters; after cleanup nothing is registered or connected.
    Pairing,
    /// The vector's producer registered with ret 0.
    ProducerRegistered { vector: String },
    /// The step that wires the vector ran, and no irqbypass producer
    /// registered for it (nor one nobody expected): e.g. a vDPA parent
    /// without per-queue IRQs.
    NoProducer { vector: String },
    /// KVM registered the consumer for `vm`'s irqfd on `vector` with ret 0.
    ConsumerRegistered { vm: String, vector: String },
    /// The producer of `vector` connected to `vm`'s consumer with ret 0.
    Connected { vm: String, vector: String },
    /// Where the platform can post, the consumer registers and connects;
    /// elsewhere it does not register and no connection forms.
    ConnectedIffPosting { vm: String, vector: String },
    /// KVM refused `vm`'s irqfd on `vector` (its `irqfd` step failed), e.g.
    /// EBUSY for a second irqfd on an eventfd since 6.17. The steps after a
    /// failed one do not run, so nothing may follow it that must run.
    IrqfdRefused { vm: String, vector: String },
    /// Where the IOMMU posts device interrupts (its counters were read), it
    /// logged at least one posted interrupt for a vCPU that was not running
    /// (GA log: the wake-up path of halted vCPUs). Not applicable, and so
    /// passing, where the platform cannot post.
    GaLogWakeups,
    /// Every `l2-traffic` and `l2-link` step: KVM injected into the L2
    /// exactly what the devices' L1 host IRQ lines took; no vector ran its
    /// L2 handler more often than L1 saw it raised (plus what the IOMMU
    /// posted, where it posts), and one raised at all ran at least once.
    /// `l2-traffic`: every frame sent arrived and the receiving NIC's
    /// queue vectors took interrupts. `l2-link`: the host made every link
    /// change, and the NIC's link vector was delivered in L2 exactly once
    /// per change, each taken by L1's line (or L1's and the IOMMU's posts).
    L2Lossless,
    /// `vm`'s APICv/AVIC inhibit (`pit-reinject`) moves `vector` between
    /// posting and injection without losing any: every `fire` of it while
    /// the inhibit is set passed through L1 and KVM injected each one;
    /// every `fire` after the inhibit was cleared again was posted by the
    /// IOMMU (nothing seen by L1) where the platform can post and the
    /// vector's producer connected to `vm`'s consumer, and passed through
    /// L1 elsewhere.
    InhibitRoutes { vm: String, vector: String },
    /// Every `fire` of `vector` while `vm`'s irqfd holds it and a `route`
    /// step has changed its route went where the route says, as upstream
    /// KVM intends (`kvm_arch_update_irqfd_routing`): a postable MSI
    /// route on a platform that posts and a connected irqfd: nothing
    /// through L1, delivered on the route's vector; any other route: the
    /// IRTE back under host control, so L1 sees every interrupt, and KVM
    /// injects through the route (an MSI to no vCPU or an IOAPIC pin; a
    /// removed route injects nothing); a running L2 takes them on the
    /// route's vector only (none where the route reaches no vCPU).
    RouteDelivery { vm: String, vector: String },
}

impl Scenario {
    /// Whether the scenario starts a real L2 (its boot then carries a VMM).
    pub fn needs_l2(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::StartL2 { .. }))
    }

    /// Some `start-l2` gives its L2 a vDPA device (a virtio-net in L2).
    pub fn l2_has_vdpa(&self) -> bool {
        self.steps.iter().any(|s| match s {
            Step::StartL2 { devices, .. } => devices.iter().any(|d| {
                self.devices
                    .iter()
                    .any(|x| x.name == *d && x.model.vdpa().is_some())
            }),
            _ => false,
        })
    }
}

impl Expectation {
    /// The `check` name as written in scenario files.
    pub fn check(&self) -> &'static str {
        match self {
            Expectation::Lossless => "lossless",
            Expectation::Pairing => "pairing",
            Expectation::ProducerRegistered { .. } => "producer-registered",
            Expectation::NoProducer { .. } => "no-producer",
            Expectation::ConsumerRegistered { .. } => "consumer-registered",
            Expectation::Connected { .. } => "connected",
            Expectation::ConnectedIffPosting { .. } => "connected-iff-posting",
            Expectation::IrqfdRefused { .. } => "irqfd-refused",
            Expectation::GaLogWakeups => "ga-log-wakeups",
            Expectation::L2Lossless => "l2-lossless",
            Expectation::InhibitRoutes { .. } => "inhibit-routes",
            Expectation::RouteDelivery { .. } => "route-delivery",
        }
    }
}

impl fmt::Display for Expectation {
    /// `check` followed by its arguments, e.g. `connected vm0 dev0/msi0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.check())?;
        match self {
            Expectation::Lossless
            | Expectation::Pairing
            | Expectation::GaLogWakeups
            | Expectation::L2Lossless => Ok(()),
            Expectation::ProducerRegistered { vector } | Expectation::NoProducer { vector } => {
                write!(f, " {vector}")
            }
            Expectation::ConsumerRegistered { vm, vector }
            | Expectation::Connected { vm, vector }
            | Expectation::ConnectedIffPosting { vm, vector }
            | Expectation::IrqfdRefused { vm, vector }
            | Expectation::InhibitRoutes { vm, vector }
            | Expectation::RouteDelivery { vm, vector } => write!(f, " {vm} {vector}"),
        }
    }
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A syntax, type or semantic error at a position in the file.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: scenario name {name:?} also used by {}", path.display(), other.display())]
    DuplicateName {
        name: String,
        path: PathBuf,
        other: PathBuf,
    },
    #[error("{}: not a .toml file or a directory", path.display())]
    NotAScenario { path: PathBuf },
    #[error("{}: no scenario files (*.toml) in this directory", path.display())]
    EmptyDirectory { path: PathBuf },
}

/// Load and validate one scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Load scenario files; directories expand to their `*.toml` files sorted by
/// name (not recursive). Two scenarios with the same name are an error.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Scenario>, ScenarioError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| ScenarioError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| ScenarioError::Io {
                path: path.clone(),
                source,
            })?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| ScenarioError::Io {
                    path: path.clone(),
                    source,
                })?;
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
                    found.push(p);
                }
            }
            if found.is_empty() {
                return Err(ScenarioError::EmptyDirectory { path: path.clone() });
            }
            found.sort();
            files.extend(found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            files.push(path.clone());
        } else {
            return Err(ScenarioError::NotAScenario { path: path.clone() });
        }
    }
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let scenario = load(&file)?;
        if let Some(other) = seen.get(&scenario.name) {
            return Err(ScenarioError::DuplicateName {
                name: scenario.name,
                path: file,
                other: other.clone(),
            });
        }
        seen.insert(scenario.name.clone(), file);
        out.push(scenario);
    }
    Ok(out)
}

impl Scenario {
    /// The job the guest agent runs, with device addresses resolved by the
    /// host (`bdfs`: device name to full BDF). A device missing from `bdfs`
    /// falls back to its fixed `bdf`, or an empty string.
    /// Whether the scenario runs on `variant`.
    pub fn runs_on(&self, variant: &str) -> bool {
        self.variants
            .as_ref()
            .is_none_or(|v| v.iter().any(|n| n == variant))
    }

    pub fn job(&self, bdfs: &HashMap<String, String>) -> wire::Job {
        wire::Job {
            scenario: self.name.clone(),
            devices: self
                .devices
                .iter()
                .map(|d| wire::JobDevice {
                    name: d.name.clone(),
                    model: d.model,
                    // a device QEMU does not provide has no address, even
                    // where a scenario in the same boot has a PCI device of
                    // the same name
                    bdf: match d.model.qemu_driver() {
                        Some(_) => bdfs
                            .get(&d.name)
                            .cloned()
                            .or_else(|| d.bdf.clone())
                            .unwrap_or_default(),
                        None => String::new(),
                    },
                })
                .collect(),
            steps: self.steps.clone(),
        }
    }

    /// The device a vector such as `dev0/msi0` belongs to.
    pub fn device_of_vector(&self, vector: &str) -> Option<&ScenarioDevice> {
        let (dev, _) = vector.split_once('/')?;
        self.devices.iter().find(|d| d.name == dev)
    }
}

/// Parse and validate scenario text; `path` names the file in errors and gives
/// the scenario its name.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let src = Source { path, text };
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    if !valid_scenario_name(&name) {
        return Err(src.error(
            0..0,
            format!(
                "bad scenario name {name:?} (file stem): use letters, digits, '-', '_' and '.'"
            ),
        ));
    }
    let raw: RawScenario =
        toml::from_str(text).map_err(|e| src.toml_error(e.span(), e.message()))?;

    let description = raw.description.get_ref().trim().to_string();
    if description.is_empty() {
        return Err(src.error(raw.description.span(), "description is empty".into()));
    }

    if let Some(variants) = &raw.variants {
        if variants.get_ref().is_empty() {
            return Err(src.error(
                variants.span(),
                "variants is empty: leave it out to run everywhere".into(),
            ));
        }
        for name in variants.get_ref() {
            if let Err(e) = crate::variant::lookup(name) {
                return Err(src.error(variants.span(), e.to_string()));
            }
        }
    }

    let mut checker = Checker::new(&src);
    for dev in &raw.devices {
        checker.declare_device(dev)?;
    }
    if raw.steps.is_empty() {
        return Err(src.error(text.len()..text.len(), "no [[step]] tables".into()));
    }
    // Steps and expectations are internally tagged enums: serde buffers them,
    // which loses toml's positions, and it ignores extra keys on unit variants.
    // So each table is converted on its own, with its own position.
    let steps: Vec<Spanned<Step>> = raw
        .steps
        .iter()
        .enumerate()
        .map(|(i, t)| src.typed("step", i + 1, "action", t))
        .collect::<Result<_, _>>()?;
    let expect: Vec<Spanned<Expectation>> = raw
        .expect
        .iter()
        .enumerate()
        .map(|(i, t)| src.typed("expect", i + 1, "check", t))
        .collect::<Result<_, _>>()?;
    checker.step_count = steps.len();
    for (i, step) in steps.iter().enumerate() {
        checker.step(i, step)?;
    }
    // later scenarios in the same boot expect the device where it was
    let unplugged = checker.devices.iter().find_map(|(name, d)| match d.state {
        DevState::Unplugged { step } => Some((name.clone(), step)),
        _ => None,
    });
    if let Some((device, k)) = unplugged {
        checker.span = steps[k - 1].span();
        checker.context = format!("step {k} (unplug)");
        return Err(checker.err(
            "device",
            format!("{device} is never replugged: a scenario must leave L1's devices in place"),
        ));
    }
    for (i, exp) in expect.iter().enumerate() {
        checker.expectation(i, exp)?;
    }

    Ok(Scenario {
        name,
        path: path.to_path_buf(),
        description,
        fresh_boot: raw.fresh_boot,
        variants: raw.variants.map(Spanned::into_inner),
        devices: raw.devices.into_iter().map(Spanned::into_inner).collect(),
        steps: steps.into_iter().map(Spanned::into_inner).collect(),
        expect: expect.into_iter().map(Spanned::into_inner).collect(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: Spanned<String>,
    #[serde(default)]
    fresh_boot: bool,
    #[serde(default)]
    variants: Option<Spanned<Vec<String>>>,
    #[serde(default, rename = "device")]
    devices: Vec<Spanned<ScenarioDevice>>,
    #[serde(default, rename = "step")]
    steps: Vec<Spanned<toml::Table>>,
    #[serde(default, rename = "expect")]
    expect: Vec<Spanned<toml::Table>>,
    /// A regression corpus entry's record of the bug (`regressions/`):
    /// checked by `crate::regression`, not part of the scenario.
    #[serde(default)]
    #[allow(dead_code)]
    regression: Option<toml::Table>,
}

fn valid_scenario_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Device and VM names: a lowercase letter, then lowercase letters, digits,
/// `-` or `_` (so they never clash with the `/` and `:` of vector and consumer names).
fn name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Some("empty name".into()),
        Some(c) if !c.is_ascii_lowercase() => {
            return Some(format!(
                "bad name {name:?}: must start with a lowercase letter"
            ))
        }
        _ => {}
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "bad name {name:?}: longer than {MAX_NAME_LEN} characters"
        ));
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
        return Some(format!(
            "bad name {name:?}: use lowercase letters, digits, '-' and '_'"
        ));
    }
    None
}

/// A full PCI address: `0000:00:05.0`.
fn valid_bdf(bdf: &str) -> bool {
    let b = bdf.as_bytes();
    let hex = |r: Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
        && u8::from_str_radix(&bdf[8..10], 16).is_ok_and(|d| d < 32)
}

pub(crate) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}
