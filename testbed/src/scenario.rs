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
//! `scenarios/x.toml:14:1: step 3 (fire): unknown vector "dev0/msi3": dev0 (edu) has vectors msi0..msi0`.

mod l2ctl;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;
use wire::{DeviceModel, IrqKind, Step};

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
    /// Where the IOMMU posts device interrupts (its counters were read), it
    /// logged at least one posted interrupt for a vCPU that was not running
    /// (GA log: the wake-up path of halted vCPUs). Not applicable, and so
    /// passing, where the platform cannot post.
    GaLogWakeups,
    /// Every `l2-traffic` step: every frame sent arrived, every vector of
    /// the L2's devices was delivered in L2 exactly as often as L1's host
    /// IRQ line saw the device raise it, and the receiving NIC's queue
    /// vectors took at least one interrupt.
    L2Lossless,
}

impl Scenario {
    /// Whether the scenario starts a real L2 (its boot then carries a VMM).
    pub fn needs_l2(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::StartL2 { .. }))
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
            Expectation::GaLogWakeups => "ga-log-wakeups",
            Expectation::L2Lossless => "l2-lossless",
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
            | Expectation::ConnectedIffPosting { vm, vector } => write!(f, " {vm} {vector}"),
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

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Range<usize>, message: String) -> ScenarioError {
        let (line, column) = line_col(self.text, span.start);
        ScenarioError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    /// The span of `key = ...` inside the table at `span`, or the table itself.
    fn key_span(&self, span: &Range<usize>, key: &str) -> Range<usize> {
        let extent = self.table_extent(span);
        let body = &self.text[extent.clone()];
        let mut offset = extent.start;
        for line in body.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if let Some(rest) = trimmed.strip_prefix(key) {
                let rest = rest.trim_start();
                if rest.starts_with('=') {
                    let at = offset + (line.len() - trimmed.len());
                    return at..at + trimmed.trim_end().len();
                }
            }
            offset += line.len();
        }
        // inline tables: `{ action = "bind", device = "dev0" }`
        if let Some(pos) = find_inline_key(body, key) {
            return extent.start + pos..extent.start + pos + key.len();
        }
        span.clone()
    }

    /// Whether the span is an array-of-tables header like `[[step]]`.
    fn header_at(&self, span: &Range<usize>) -> Option<String> {
        let start = span.start.min(self.text.len());
        let end = span.end.min(self.text.len()).max(start);
        let h: String = self.text[start..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        h.strip_prefix("[[")
            .and_then(|h| h.strip_suffix("]]"))
            .map(str::to_string)
    }

    /// The text a table covers: for a `[[x]]` header, up to the next header.
    fn table_extent(&self, span: &Range<usize>) -> Range<usize> {
        let start = span.start.min(self.text.len());
        let mut end = span.end.min(self.text.len()).max(start);
        if self.header_at(span).is_some() {
            let header_end = end;
            for line in self.text[header_end..].split_inclusive('\n') {
                if end != header_end && line.trim_start().starts_with('[') {
                    break;
                }
                end += line.len();
            }
        }
        start..end
    }

    /// Which `[[name]]` entry a header span is (1-based).
    fn header_index(&self, span: &Range<usize>, name: &str) -> usize {
        let mut n = 0;
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            if offset > span.start {
                break;
            }
            let h: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            let h = h.split('#').next().unwrap_or_default();
            if h == format!("[[{name}]]") {
                n += 1;
            }
            offset += line.len();
        }
        n
    }

    /// The string value of `key` in the table at `span`, when written simply.
    fn string_value(&self, span: &Range<usize>, key: &str) -> Option<String> {
        let at = self.key_span(span, key);
        let text = self.text.get(at)?;
        let value = text
            .strip_prefix(key)?
            .trim_start()
            .strip_prefix('=')?
            .trim();
        let value = value.strip_prefix('"')?;
        Some(value[..value.find('"')?].to_string())
    }

    /// Make a toml error more precise: name the `[[step]]` (etc.) entry it
    /// is in and point at the offending key where the message names one.
    fn toml_error(&self, span: Option<Range<usize>>, message: &str) -> ScenarioError {
        let message = message.trim().trim_end_matches('.').to_string();
        let Some(span) = span else {
            return self.error(0..0, message);
        };
        let Some(header) = self.header_at(&span) else {
            return self.error(span, message);
        };
        let n = self.header_index(&span, &header);
        let tag = match header.as_str() {
            "device" => self.string_value(&span, "name"),
            _ => None,
        };
        let context = match tag {
            Some(tag) => format!("{header} {n} ({tag:?})"),
            None => format!("{header} {n}"),
        };
        let at = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(|key| self.key_span(&span, key))
            .unwrap_or(span);
        self.error(at, format!("{context}: {message}"))
    }

    /// Convert one `[[what]]` table (internally tagged by `tag`) to `T`,
    /// rejecting keys `T` does not have, with errors at the right place.
    fn typed<T>(
        &self,
        what: &str,
        n: usize,
        tag: &str,
        table: &Spanned<toml::Table>,
    ) -> Result<Spanned<T>, ScenarioError>
    where
        T: serde::de::DeserializeOwned + Serialize,
    {
        let span = table.span();
        let t = table.get_ref();
        let context = match t.get(tag).and_then(toml::Value::as_str) {
            Some(name) => format!("{what} {n} ({name})"),
            None => format!("{what} {n}"),
        };
        let at = |key: &str, message: String| {
            self.error(self.key_span(&span, key), format!("{context}: {message}"))
        };
        let value: T = match toml::Value::Table(t.clone()).try_into() {
            Ok(v) => v,
            Err(e) => {
                let message = e.message().trim().trim_end_matches('.').to_string();
                if let Some(key) = message
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split('`').next())
                {
                    return Err(at(key, message.clone()));
                }
                if message.starts_with("unknown variant") {
                    return Err(at(tag, message));
                }
                let unexpected = message
                    .strip_prefix("invalid type: ")
                    .or_else(|| message.strip_prefix("invalid value: "));
                if let Some(unexpected) = unexpected {
                    let keys: Vec<&String> = t
                        .iter()
                        .filter(|(_, v)| unexpected.starts_with(&describe(v)))
                        .map(|(k, _)| k)
                        .collect();
                    if let [key] = keys[..] {
                        return Err(at(key, format!("{key}: {message}")));
                    }
                }
                return Err(self.error(span, format!("{context}: {message}")));
            }
        };
        // Keys serde accepted without using them (unit variants of internally
        // tagged enums ignore extra keys even with deny_unknown_fields).
        let back = toml::Value::try_from(&value)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default();
        if let Some(key) = t.keys().find(|k| !back.contains_key(*k)) {
            let known: Vec<String> = back
                .keys()
                .filter(|k| *k != tag)
                .map(|k| format!("`{k}`"))
                .collect();
            let expected = if known.is_empty() {
                "expected no other field".to_string()
            } else {
                format!("expected {}", known.join(", "))
            };
            return Err(at(key, format!("unknown field `{key}`, {expected}")));
        }
        Ok(Spanned::new(span, value))
    }
}

/// How serde describes an unexpected toml value, e.g. ``integer `-1` ``.
fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer `{i}`"),
        toml::Value::Float(f) => format!("floating point `{f}`"),
        toml::Value::Boolean(b) => format!("boolean `{b}`"),
        toml::Value::Datetime(_) => "datetime".into(),
        toml::Value::Array(_) => "sequence".into(),
        toml::Value::Table(_) => "map".into(),
    }
}

fn find_inline_key(body: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = body[from..].find(key) {
        let at = from + pos;
        let prev_ok =
            at == 0 || matches!(body.as_bytes()[at - 1], b'{' | b',' | b' ' | b'\t' | b'\n');
        let after = body[at + key.len()..].trim_start();
        if prev_ok && after.starts_with('=') {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DevState {
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
enum VmState {
    Live,
    Destroyed { step: usize },
}

struct DevInfo {
    model: DeviceModel,
    state: DevState,
    /// Every vector some enable step wired.
    ever_wired: BTreeSet<u32>,
}

/// Simulates the steps' state to find mistakes before anything runs.
struct Checker<'s, 'a> {
    src: &'s Source<'a>,
    devices: BTreeMap<String, DevInfo>,
    /// Fixed addresses: bdf -> device.
    bdfs: BTreeMap<String, String>,
    /// Each device's hub.
    hubs: BTreeMap<String, Option<String>>,
    vms: BTreeMap<String, VmState>,
    /// Attached irqfds: (vm, vector) -> step that attached it.
    irqfds: BTreeMap<(String, String), usize>,
    /// Every (vm, vector) that some irqfd step attached.
    ever_attached: BTreeMap<(String, String), usize>,
    /// VMs whose L2 runs: vm -> the start-vm step.
    l2_running: BTreeMap<String, usize>,
    /// Whether any step is an `l2-traffic`.
    l2_traffic: bool,
    /// Running real L2s (`start-l2`): name -> (step, devices).
    linux_l2s: BTreeMap<String, (usize, Vec<String>)>,
    /// Unplugged and paused L2s (`l2ctl`).
    l2ctl: l2ctl::L2Ctl,
    /// Whether any step fires (or signals).
    fired: bool,
    /// Vectors masked at the device: vector -> the mask step.
    masked: BTreeMap<String, usize>,
    /// Vectors whose eventfd the agent has made (an irqfd or enable-msi ran).
    eventfds: std::collections::BTreeSet<String>,
    /// How many steps the scenario has.
    step_count: usize,
    /// Where the current table is, for errors.
    span: Range<usize>,
    context: String,
}

impl<'s, 'a> Checker<'s, 'a> {
    fn new(src: &'s Source<'a>) -> Self {
        Checker {
            src,
            devices: BTreeMap::new(),
            bdfs: BTreeMap::new(),
            hubs: BTreeMap::new(),
            vms: BTreeMap::new(),
            irqfds: BTreeMap::new(),
            ever_attached: BTreeMap::new(),
            l2_running: BTreeMap::new(),
            linux_l2s: BTreeMap::new(),
            l2ctl: Default::default(),
            l2_traffic: false,
            fired: false,
            masked: BTreeMap::new(),
            eventfds: Default::default(),
            step_count: 0,
            span: 0..0,
            context: String::new(),
        }
    }

    /// An error at `key` of the current table (or the table, for "").
    fn err(&self, key: &str, message: String) -> ScenarioError {
        let span = if key.is_empty() {
            self.span.clone()
        } else {
            self.src.key_span(&self.span, key)
        };
        self.src.error(span, format!("{}: {message}", self.context))
    }

    fn declare_device(&mut self, dev: &Spanned<ScenarioDevice>) -> Result<(), ScenarioError> {
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
                    "unknown vector {vector:?}: {dev} ({}) has vectors {}",
                    info.model.label(),
                    vector_range(info.model)
                ),
            )),
        }
    }

    /// The vector exists and an enable step still in force wired it.
    fn enabled_vector(&self, key: &str, vector: &str) -> Result<(String, u32), ScenarioError> {
        let (dev, n) = self.vector(key, vector)?;
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

    fn step(&mut self, index: usize, step: &Spanned<Step>) -> Result<(), ScenarioError> {
        let k = index + 1;
        self.span = step.span();
        self.context = format!("step {k} ({})", step.get_ref().action());
        match step.get_ref() {
            Step::StartL2 {
                l2,
                devices,
                queues,
                append: _,
                hotplug,
            } => {
                self.l2_started(l2, *hotplug);
                if let Some((step, _)) = self.linux_l2s.get(l2) {
                    return Err(self.err(
                        "l2",
                        format!("L2 {l2} is already running (start-l2 at step {step})"),
                    ));
                }
                if devices.is_empty() {
                    return Err(self.err("devices", "an L2 needs at least one device".to_string()));
                }
                if !(1..=8).contains(queues) {
                    return Err(self.err("queues", format!("queues = {queues} out of range 1..=8")));
                }
                for d in devices {
                    let info = self.device("devices", d)?;
                    if !matches!(info.model, DeviceModel::Igb | DeviceModel::E1000e) {
                        return Err(self.err(
                            "devices",
                            format!("{d} is {}: an L2 drives only NICs with a Linux driver (igb, e1000e)", info.model.label()),
                        ));
                    }
                    match info.state {
                        DevState::Declared | DevState::Closed { .. } | DevState::Unbound { .. } => {
                        }
                        DevState::Unplugged { step } => {
                            return Err(self.err(
                                "devices",
                                format!("{d} was unplugged at step {step}: replug it first"),
                            ))
                        }
                        DevState::Bound | DevState::Enabled { .. } => {
                            return Err(self.err(
                                "devices",
                                format!("{d} is open in the agent: close-device first"),
                            ))
                        }
                    }
                    if let Some((other, _)) =
                        self.linux_l2s.iter().find(|(_, (_, ds))| ds.contains(d))
                    {
                        return Err(
                            self.err("devices", format!("{d} is already assigned to L2 {other}"))
                        );
                    }
                    if devices.iter().filter(|x| *x == d).count() > 1 {
                        return Err(self.err("devices", format!("{d} is listed twice")));
                    }
                }
                self.linux_l2s.insert(l2.clone(), (k, devices.clone()));
            }
            Step::L2Traffic {
                l2,
                from,
                to,
                frames,
            } => {
                let Some((_, devs)) = self.linux_l2s.get(l2) else {
                    return Err(self.err(
                        "l2",
                        format!("no L2 named {l2} is running (no start-l2 {l2} in force)"),
                    ));
                };
                self.l2_usable(l2, &[("from", from), ("to", to)])?;
                for (key, d) in [("from", from), ("to", to)] {
                    if !devs.contains(d) {
                        return Err(self.err(
                            key,
                            format!("{d} is not a device of L2 {l2} ({})", devs.join(", ")),
                        ));
                    }
                }
                if from == to {
                    return Err(self.err(
                        "to",
                        format!("from and to are both {to}: frames go from one NIC to another"),
                    ));
                }
                let hubs: Vec<Option<&String>> = [from, to]
                    .iter()
                    .map(|d| self.hubs.get(*d).and_then(|h| h.as_ref()))
                    .collect();
                if hubs[0].is_none() || hubs[0] != hubs[1] {
                    return Err(self.err(
                        "to",
                        format!("{from} and {to} must sit on the same hub (hub = \"...\" in both [[device]] tables)"),
                    ));
                }
                self.l2_traffic = true;
                if !(1..=wire::L2_MAX_FRAMES).contains(frames) {
                    return Err(self.err(
                        "frames",
                        format!("frames = {frames} out of range 1..={}", wire::L2_MAX_FRAMES),
                    ));
                }
            }
            Step::StopL2 { l2 } => {
                self.l2_usable(l2, &[])?;
                self.l2_stopped(l2);
                if self.linux_l2s.remove(l2).is_none() {
                    return Err(self.err(
                        "l2",
                        format!("no L2 named {l2} is running (no start-l2 {l2} in force)"),
                    ));
                }
            }
            Step::L2Unplug { .. }
            | Step::L2Replug { .. }
            | Step::L2Pause { .. }
            | Step::L2Resume { .. } => self.l2_control(k, step.get_ref())?,
            Step::Bind { device } => {
                if let Some((l2, _)) = self
                    .linux_l2s
                    .iter()
                    .find(|(_, (_, ds))| ds.contains(device))
                {
                    return Err(self.err(
                        "device",
                        format!("{device} is assigned to the running L2 {l2}: stop-l2 first"),
                    ));
                }
                let info = self.device("device", device)?;
                match info.state {
                    DevState::Declared | DevState::Closed { .. } | DevState::Unbound { .. } => {}
                    DevState::Unplugged { step } => {
                        return Err(self.err(
                            "device",
                            format!("{device} was unplugged at step {step}: replug it first"),
                        ))
                    }
                    DevState::Bound | DevState::Enabled { .. } => {
                        return Err(
                            self.err("device", format!("{device} is already bound and open"))
                        )
                    }
                }
                self.set_dev(device, DevState::Bound);
            }
            Step::Unplug { device } => {
                let info = self.device("device", device)?;
                if info.model.spec().sriov_vf {
                    return Err(self.err(
                        "device",
                        format!("{device} is a virtual function the agent makes: unplug its PF instead (not supported yet)"),
                    ));
                }
                if info.model.vdpa().is_some() {
                    return Err(self.err(
                        "device",
                        format!(
                            "{device} ({}) is a vDPA device: unplug is for VFIO devices",
                            info.model.label()
                        ),
                    ));
                }
                if let DevState::Unplugged { step } = info.state {
                    return Err(self.err(
                        "device",
                        format!("{device} already unplugged at step {step}"),
                    ));
                }
                if self.bdfs.values().any(|d| d == device) {
                    return Err(self.err(
                        "device",
                        format!("{device} has a fixed bdf on the root bus, which cannot hot-plug: drop its bdf"),
                    ));
                }
                self.set_dev(device, DevState::Unplugged { step: k });
            }
            Step::Replug { device } => {
                let info = self.device("device", device)?;
                if !matches!(info.state, DevState::Unplugged { .. }) {
                    return Err(self.err(
                        "device",
                        format!("{device} is not unplugged: no unplug {device} in force"),
                    ));
                }
                self.set_dev(device, DevState::Declared);
            }
            Step::Unbind { device } => {
                let info = self.device("device", device)?;
                if info.model.spec().sriov_vf {
                    return Err(self.err(
                        "device",
                        format!("{device} is a virtual function: closing it disables SR-IOV, so it has nothing to unbind"),
                    ));
                }
                if info.model.vdpa().is_some() {
                    return Err(self.err(
                        "device",
                        format!(
                            "{device} ({}) is a vDPA device: close-device deletes it, nothing stays bound",
                            info.model.label()
                        ),
                    ));
                }
                match info.state {
                    DevState::Closed { .. } => {}
                    DevState::Declared => return Err(self.err("device", format!("{device} is not bound"))),
                    DevState::Unbound { step } => {
                        return Err(self.err("device", format!("{device} already unbound at step {step}")))
                    }
                    DevState::Unplugged { step } => {
                        return Err(self.err("device", format!("{device} was unplugged at step {step}")))
                    }
                    DevState::Bound | DevState::Enabled { .. } => {
                        return Err(self.err(
                            "device",
                            format!(
                                "{device} is open: close-device first (vfio-pci would wait for the agent to close it)"
                            ),
                        ))
                    }
                }
                self.set_dev(device, DevState::Unbound { step: k });
            }
            Step::EnableMsi { device, vectors } => {
                let info = self.device("device", device)?;
                let max = info.model.vectors();
                if info.model.irq() != IrqKind::Msi {
                    return Err(self.err(
                        "action",
                        format!(
                            "{device} ({}) has {}, not MSI: use {}",
                            info.model.label(),
                            irq_kind_name(info.model.irq()),
                            enable_action(info.model)
                        ),
                    ));
                }
                match info.state {
                    DevState::Bound => {}
                    DevState::Declared => {
                        return Err(
                            self.err("device", format!("{device} is not bound: bind it first"))
                        )
                    }
                    DevState::Enabled { step, .. } => {
                        return Err(self.err(
                            "device",
                            format!(
                                "msi on {device} already enabled at step {step}: disable-msi first"
                            ),
                        ))
                    }
                    DevState::Closed { step }
                    | DevState::Unbound { step }
                    | DevState::Unplugged { step } => return Err(self.err(
                        "device",
                        format!(
                            "{device} used after it was closed (step {step}): bind it again first"
                        ),
                    )),
                }
                if *vectors == 0 || *vectors > max {
                    return Err(self.err(
                        "vectors",
                        format!(
                            "vectors = {vectors} out of range: {device} ({}) has 1..={max}",
                            info.model.label()
                        ),
                    ));
                }
                let set: BTreeSet<u32> = (0..*vectors).collect();
                self.wire_vectors(device, set, k);
            }
            Step::EnableMsix { device, vectors } | Step::EnableVqs { device, vectors } => {
                let info = self.device("device", device)?;
                let model = info.model;
                let action = step.get_ref().action();
                if enable_action(model) != action {
                    return Err(self.err(
                        "action",
                        format!(
                            "{device} ({}) has {}, not {}: use {}",
                            model.label(),
                            irq_kind_name(model.irq()),
                            if action == "enable-vqs" {
                                "virtqueues"
                            } else {
                                "MSI-X"
                            },
                            enable_action(model)
                        ),
                    ));
                }
                if let (DevState::Enabled { step, .. }, IrqKind::Vq) = (&info.state, model.irq()) {
                    return Err(self.err(
                        "device",
                        format!(
                            "virtqueue interrupts of {device} already enabled at step {step}: once per bind (DRIVER_OK)"
                        ),
                    ));
                }
                match info.state {
                    DevState::Bound | DevState::Enabled { .. } => {}
                    DevState::Declared => {
                        return Err(
                            self.err("device", format!("{device} is not bound: bind it first"))
                        )
                    }
                    DevState::Closed { step }
                    | DevState::Unbound { step }
                    | DevState::Unplugged { step } => return Err(self.err(
                        "device",
                        format!(
                            "{device} used after it was closed (step {step}): bind it again first"
                        ),
                    )),
                }
                let max = model.vectors();
                let set: BTreeSet<u32> = vectors.numbers().into_iter().collect();
                let bad = match vectors {
                    wire::VectorSet::Count(n) if *n == 0 || *n > max => Some(format!(
                        "vectors = {n} out of range: {device} ({}) has 1..={max}",
                        model.label()
                    )),
                    wire::VectorSet::List(l) if l.is_empty() => Some(match model.irq() {
                        IrqKind::Vq => "vectors = []: wire at least one virtqueue".to_string(),
                        _ => {
                            "vectors = []: wire at least one vector (disable-msix turns MSI-X off)"
                                .to_string()
                        }
                    }),
                    wire::VectorSet::List(l) => l.iter().find(|n| **n >= max).map(|n| {
                        format!(
                            "vector {n} out of range: {device} ({}) has {}",
                            model.label(),
                            vector_range(model)
                        )
                    }),
                    _ => None,
                };
                if let Some(b) = bad {
                    return Err(self.err("vectors", b));
                }
                if let DevState::Enabled { vectors: had, step } = &info.state {
                    if *had == set {
                        return Err(self.err(
                            "vectors",
                            format!("changes nothing: enable-msix at step {step} wired the same vectors"),
                        ));
                    }
                }
                // vectors this step unwires lose their mask state with their eventfd
                self.wire_vectors(device, set, k);
            }
            Step::DisableMsi { device } | Step::DisableMsix { device } => {
                let info = self.device("device", device)?;
                let kind = info.model.irq();
                let (want, other) = match step.get_ref() {
                    Step::DisableMsi { .. } => (IrqKind::Msi, "disable-msix"),
                    _ => (IrqKind::Msix, "disable-msi"),
                };
                if kind == IrqKind::Vq {
                    return Err(self.err(
                        "action",
                        format!(
                            "{device} ({}) has virtqueues: their interrupts stay until close-device",
                            info.model.label()
                        ),
                    ));
                }
                if kind != want {
                    return Err(self.err(
                        "action",
                        format!(
                            "{device} ({}) has {}: use {other}",
                            info.model.label(),
                            if kind == IrqKind::Msi { "MSI" } else { "MSI-X" }
                        ),
                    ));
                }
                match info.state {
                    DevState::Enabled { .. } => {}
                    DevState::Closed { step }
                    | DevState::Unbound { step }
                    | DevState::Unplugged { step } => {
                        return Err(self.err(
                            "device",
                            format!("{device} used after it was closed (step {step})"),
                        ))
                    }
                    DevState::Declared | DevState::Bound => {
                        return Err(
                            self.err("device", format!("interrupts of {device} are not enabled"))
                        )
                    }
                }
                self.set_dev(device, DevState::Bound);
            }
            Step::Mask { vector } => {
                let (dev, _) = self.vector("vector", vector)?;
                let model = self.devices[&dev].model;
                if !model.can_mask() {
                    return Err(self.err(
                        "vector",
                        format!(
                            "{dev} ({}) cannot mask a vector at the device",
                            model.label()
                        ),
                    ));
                }
                self.enabled_vector("vector", vector)?;
                if let Some(step) = self.masked.get(vector) {
                    return Err(
                        self.err("vector", format!("{vector} already masked at step {step}"))
                    );
                }
                self.masked.insert(vector.clone(), k);
            }
            Step::Unmask { vector } => {
                self.vector("vector", vector)?;
                if self.masked.remove(vector).is_none() {
                    return Err(self.err(
                        "vector",
                        format!("{vector} is not masked: no mask {vector} in force"),
                    ));
                }
                self.enabled_vector("vector", vector)?;
                self.fired = true;
            }
            Step::CreateVm { vm } => {
                if let Some(p) = name_problem(vm) {
                    return Err(self.err("vm", p));
                }
                match self.vms.get(vm) {
                    Some(VmState::Live) => {
                        return Err(self.err("vm", format!("vm {vm:?} already exists")))
                    }
                    Some(VmState::Destroyed { step }) => {
                        return Err(self.err(
                            "vm",
                            format!("vm {vm:?} was destroyed at step {step}: use a new name"),
                        ))
                    }
                    None => {}
                }
                if self.devices.contains_key(vm) {
                    return Err(self.err("vm", format!("{vm:?} is already a device name")));
                }
                self.vms.insert(vm.clone(), VmState::Live);
            }
            Step::Irqfd { vm, vector } => {
                self.live_vm("vm", vm)?;
                self.bound_vector("vector", vector)?;
                let key = (vm.clone(), vector.clone());
                if let Some(step) = self.irqfds.get(&key) {
                    return Err(self.err(
                        "vector",
                        format!("{vm} already has an irqfd on {vector} (step {step})"),
                    ));
                }
                self.irqfds.insert(key.clone(), k);
                self.ever_attached.entry(key).or_insert(k);
                self.eventfds.insert(vector.clone());
            }
            Step::IrqfdDeassign { vm, vector } => {
                self.live_vm("vm", vm)?;
                self.vector("vector", vector)?;
                if self.irqfds.remove(&(vm.clone(), vector.clone())).is_none() {
                    return Err(self.err(
                        "vector",
                        format!("{vm} has no irqfd on {vector} to deassign"),
                    ));
                }
            }
            Step::Fire { vector, count } => {
                let (dev, n) = self.vector("vector", vector)?;
                let model = self.devices[&dev].model;
                if let Some(wire::VqFire::Cannot(why)) =
                    model.vdpa().and_then(|v| v.vqs.get(n as usize))
                {
                    return Err(self.err("vector", format!("{vector} cannot fire: {why}")));
                }
                if let DevState::Declared = self.devices[&dev].state {
                    return Err(self.err("vector", format!("{dev} is not bound: bind it first")));
                }
                self.enabled_vector("vector", vector)?;
                if !(1..=MAX_FIRE_COUNT).contains(count) {
                    return Err(self.err(
                        "count",
                        format!("count = {count} out of range 1..={MAX_FIRE_COUNT}"),
                    ));
                }
                self.fired = true;
            }
            Step::Signal { vector, count } => {
                self.vector("vector", vector)?;
                if !self.eventfds.contains(vector) {
                    return Err(self.err(
                        "vector",
                        format!("{vector} has no eventfd to signal: no earlier irqfd or enable-msi made it"),
                    ));
                }
                if !(1..=MAX_FIRE_COUNT).contains(count) {
                    return Err(self.err(
                        "count",
                        format!("count = {count} out of range 1..={MAX_FIRE_COUNT}"),
                    ));
                }
                self.fired = true;
            }
            Step::CloseDevice { device } => {
                let info = self.device("device", device)?;
                match info.state {
                    DevState::Bound | DevState::Enabled { .. } => {}
                    DevState::Declared => {
                        return Err(self.err("device", format!("{device} is not bound")))
                    }
                    DevState::Closed { step }
                    | DevState::Unbound { step }
                    | DevState::Unplugged { step } => {
                        return Err(
                            self.err("device", format!("{device} already closed at step {step}"))
                        )
                    }
                }
                self.set_dev(device, DevState::Closed { step: k });
            }
            Step::PanicL1 => {
                if index + 1 != self.step_count {
                    return Err(self.err(
                        "action",
                        "panic-l1 must be the last step: nothing runs after it".into(),
                    ));
                }
            }
            Step::DestroyVm { vm } => {
                self.live_vm("vm", vm)?;
                self.vms.insert(vm.clone(), VmState::Destroyed { step: k });
                self.irqfds.retain(|(v, _), _| v != vm);
                self.l2_running.remove(vm);
            }
            Step::StartVm {
                vm,
                mode,
                period_ms,
            } => {
                self.live_vm("vm", vm)?;
                if let Some(step) = self.l2_running.get(vm) {
                    return Err(self.err(
                        "vm",
                        format!("the L2 of {vm} is already running (start-vm at step {step})"),
                    ));
                }
                if let Some(p) = period_ms {
                    if *mode != wire::L2Mode::Alternate {
                        return Err(self.err(
                            "period_ms",
                            format!(
                                "period_ms only applies to mode = \"alternate\" (mode is \"{}\")",
                                mode.name()
                            ),
                        ));
                    }
                    if !(1..=wire::MAX_ALTERNATE_MS).contains(p) {
                        return Err(self.err(
                            "period_ms",
                            format!(
                                "period_ms = {p} out of range 1..={}",
                                wire::MAX_ALTERNATE_MS
                            ),
                        ));
                    }
                }
                self.l2_running.insert(vm.clone(), k);
            }
            Step::StopVm { vm } => {
                self.live_vm("vm", vm)?;
                if self.l2_running.remove(vm).is_none() {
                    return Err(self.err(
                        "vm",
                        format!("the L2 of {vm} is not running: no start-vm {vm} in force"),
                    ));
                }
            }
            Step::Ipi { vm, vector, count } => {
                self.live_vm("vm", vm)?;
                if !self.l2_running.contains_key(vm) {
                    return Err(self.err(
                        "vm",
                        format!(
                            "the L2 of {vm} is not running: no start-vm {vm} in force (only a running L2 sends IPIs)"
                        ),
                    ));
                }
                if !wire::IPI_VECTORS.contains(vector) {
                    return Err(self.err(
                        "vector",
                        format!(
                            "ipi vector {vector:#x} out of range {:#x}..={:#x} (0x20/0x21 are the L2's timer and kick, 0x40 up the MSI routes)",
                            wire::IPI_VECTORS.start(),
                            wire::IPI_VECTORS.end()
                        ),
                    ));
                }
                if !(1..=MAX_FIRE_COUNT).contains(count) {
                    return Err(self.err(
                        "count",
                        format!("count = {count} out of range 1..={MAX_FIRE_COUNT}"),
                    ));
                }
                self.fired = true;
            }
        }
        Ok(())
    }

    fn set_dev(&mut self, device: &str, state: DevState) {
        if let Some(d) = self.devices.get_mut(device) {
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

    fn expectation(
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
            Expectation::L2Lossless if !self.l2_traffic => {
                Err(self.err("check", "no l2-traffic step: nothing to check".into()))
            }
            Expectation::Lossless
            | Expectation::Pairing
            | Expectation::GaLogWakeups
            | Expectation::L2Lossless => Ok(()),
            Expectation::ProducerRegistered { vector } | Expectation::NoProducer { vector } => {
                let (dev, n) = self.vector("vector", vector)?;
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
            | Expectation::ConnectedIffPosting { vm, vector } => {
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

pub(crate) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod l2_step_tests {
    use super::*;

    fn with_steps(steps: &str) -> Result<Scenario, ScenarioError> {
        let text = format!(
            r#"
description = "l2"

[[device]]
name = "dev0"
model = "edu"

[[step]]
action = "bind"
device = "dev0"

[[step]]
action = "create-vm"
vm = "vm0"
{steps}"#
        );
        parse(Path::new("scenarios/l2.toml"), &text)
    }

    fn error(steps: &str) -> String {
        with_steps(steps).unwrap_err().to_string()
    }

    #[test]
    fn start_and_stop_follow_the_vm() {
        let s = with_steps(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"halted\"\n\
             [[step]]\naction = \"stop-vm\"\nvm = \"vm0\"\n\
             [[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"alternate\"\nperiod_ms = 2\n\
             [[step]]\naction = \"destroy-vm\"\nvm = \"vm0\"\n",
        )
        .unwrap();
        assert_eq!(
            s.steps[2],
            Step::StartVm {
                vm: "vm0".into(),
                mode: wire::L2Mode::Halted,
                period_ms: None
            }
        );
        assert_eq!(
            s.steps[4],
            Step::StartVm {
                vm: "vm0".into(),
                mode: wire::L2Mode::Alternate,
                period_ms: Some(2)
            }
        );
    }

    #[test]
    fn bad_starts_and_stops() {
        let e = error("[[step]]\naction = \"start-vm\"\nvm = \"vm1\"\n");
        assert!(e.contains("step 3 (start-vm): unknown vm \"vm1\""), "{e}");
        let e = error("[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n");
        assert!(
            e.contains("step 4 (start-vm): the L2 of vm0 is already running (start-vm at step 3)"),
            "{e}"
        );
        let e = error("[[step]]\naction = \"stop-vm\"\nvm = \"vm0\"\n");
        assert!(
            e.contains("step 3 (stop-vm): the L2 of vm0 is not running"),
            "{e}"
        );
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"running\"\nperiod_ms = 5\n",
        );
        assert!(
            e.contains(
                "l2.toml:19:1: step 3 (start-vm): period_ms only applies to mode = \"alternate\""
            ),
            "{e}"
        );
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"alternate\"\nperiod_ms = 0\n",
        );
        assert!(e.contains("period_ms = 0 out of range 1..=1000"), "{e}");
        let e = error("[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\nmode = \"sleepy\"\n");
        assert!(e.contains("sleepy"), "{e}");
        // destroy-vm stops the L2: a later stop-vm has nothing to stop, and the VM is gone
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"destroy-vm\"\nvm = \"vm0\"\n\
             [[step]]\naction = \"stop-vm\"\nvm = \"vm0\"\n",
        );
        assert!(
            e.contains("step 5 (stop-vm): vm \"vm0\" used after destroy-vm at step 4"),
            "{e}"
        );
    }

    #[test]
    fn ipi_needs_a_running_l2_and_an_ipi_vector() {
        let s = with_steps(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n\
             [[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x31\ncount = 50\n\
             [[expect]]\ncheck = \"lossless\"\n",
        )
        .unwrap();
        assert_eq!(
            s.steps[3],
            Step::Ipi {
                vm: "vm0".into(),
                vector: 0x31,
                count: 50
            }
        );
        let e = error("[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x31\n");
        assert!(
            e.contains("step 3 (ipi): the L2 of vm0 is not running"),
            "{e}"
        );
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x41\n",
        );
        assert!(
            e.contains("step 4 (ipi): ipi vector 0x41 out of range 0x30..=0x3f"),
            "{e}"
        );
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x21\n",
        );
        assert!(e.contains("out of range 0x30..=0x3f"), "{e}");
        let e = error("[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x31\ncount = 0\n");
        assert!(e.contains("count = 0 out of range"), "{e}");
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 300\n",
        );
        assert!(e.contains("step"), "{e}");
        let e = error(
            "[[step]]\naction = \"start-vm\"\nvm = \"vm0\"\n[[step]]\naction = \"stop-vm\"\nvm = \"vm0\"\n\
             [[step]]\naction = \"ipi\"\nvm = \"vm0\"\nvector = 0x31\n",
        );
        assert!(
            e.contains("step 5 (ipi): the L2 of vm0 is not running"),
            "{e}"
        );
    }
}
