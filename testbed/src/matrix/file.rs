//! Matrix files: which kernels, variants and scenarios a matrix runs.
//!
//! ```toml
//! kernels = ["debian:6.12", "debian:7"]
//! variants = ["intel-ir", "amd-ir"]
//! scenarios = ["scenarios"]     # files or directories, relative to this file
//!
//! # a failure the matrix expects, with the cause found: its cells still
//! # run; one that fails with the fact named in `when` is `xfail`, one that
//! # passes is `XPASS` (a failure: the entry is stale)
//! [[known-failure]]
//! variant = "amd-ir"
//! kernels-from = "7.3"           # kernel releases from this MAJOR.MINOR on
//! kernels-before = "8.0"         # optional: up to (not including) this one
//! when = "no-irq-remapping"      # the fact that comes with the failure: a
//!                                # boot's (only scenarios with a device:
//!                                # vfio-pci), "irqfd-deassign" (scenarios
//!                                # that deassign an irqfd) or "l1-froze-with-l2"
//!                                # (scenarios that start an L2, whose run
//!                                # ended with L1 silent: "guest hung")
//! may-pass = false               # true: a race, a pass is a pass
//! reason = "why"
//! ```
//!
//! Parsing is strict like scenario files: an unknown key, a variant that
//! does not exist, a kernel spec that does not parse, an empty or repeated
//! entry is an error naming the file, line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::variant::{self, Variant};

/// A parsed matrix file; every axis is optional (the command line or the
/// defaults fill what is missing).
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixFile {
    pub path: PathBuf,
    pub kernels: Option<Vec<images::KernelSpec>>,
    pub variants: Option<Vec<&'static Variant>>,
    /// Resolved against the file's directory.
    pub scenarios: Option<Vec<PathBuf>>,
    pub known_failures: Vec<KnownFailure>,
}

/// A `[[known-failure]]`: cells of `variant` on kernels from `kernels_from`
/// on that fail while L1 shows the fact `when` fail for `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownFailure {
    pub variant: &'static Variant,
    /// MAJOR.MINOR of the first kernel release it applies to.
    pub kernels_from: (u32, u32),
    /// MAJOR.MINOR of the first kernel release it no longer applies to.
    pub kernels_before: Option<(u32, u32)>,
    pub when: Fact,
    /// The failure shows in some runs only (a race): a pass is a pass,
    /// not `XPASS`.
    pub may_pass: bool,
    pub reason: String,
}

/// A boot fact a known failure comes with, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// L1 runs without interrupt remapping.
    NoIrqRemapping,
    /// The scenario deassigns an irqfd (`irqfd-deassign`).
    IrqfdDeassign,
    /// The scenario starts an L2 and its run ended with L1 hung
    /// (`l1-froze-with-l2`).
    L1FrozeWithL2,
}

/// What a cell's scenario does that a [`Fact`] can depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScenarioFacts {
    pub has_devices: bool,
    pub deassigns_irqfd: bool,
    pub starts_l2: bool,
    /// Its run ended with no word from L1's agent ("guest hung", or "L1
    /// stalled" on a lost wakeup, twice when the stock QEMU's was retried):
    /// a fact of the cell, not the file, set by the matrix once the cell ran.
    pub l1_hung: bool,
}

impl ScenarioFacts {
    pub fn of(scenario: &crate::scenario::Scenario) -> ScenarioFacts {
        ScenarioFacts {
            has_devices: !scenario.devices.is_empty(),
            deassigns_irqfd: scenario
                .steps
                .iter()
                .any(|s| matches!(s, wire::Step::IrqfdDeassign { .. })),
            starts_l2: scenario
                .steps
                .iter()
                .any(|s| matches!(s, wire::Step::StartVm { .. })),
            l1_hung: false,
        }
    }
}

impl Fact {
    const NAMES: &[(&str, Fact)] = &[
        ("no-irq-remapping", Fact::NoIrqRemapping),
        ("irqfd-deassign", Fact::IrqfdDeassign),
        ("l1-froze-with-l2", Fact::L1FrozeWithL2),
    ];

    /// Whether a scenario can fail because of the fact. L1 without
    /// interrupt remapping makes vfio-pci refuse devices, so a scenario
    /// with none (edu-l2-ipi: IPIs only) runs as anywhere else; a kernel
    /// bug in deassigning an irqfd is hit only by a scenario that does.
    pub fn can_affect(self, scenario: ScenarioFacts) -> bool {
        match self {
            Fact::NoIrqRemapping => scenario.has_devices,
            Fact::IrqfdDeassign => scenario.deassigns_irqfd,
            Fact::L1FrozeWithL2 => scenario.starts_l2,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .expect("every fact has a name")
    }
}

impl KnownFailure {
    /// Whether some kernel release is in both entries' ranges.
    fn overlaps(&self, other: &KnownFailure) -> bool {
        let before = |k: &KnownFailure, v: (u32, u32)| k.kernels_before.is_none_or(|b| v < b);
        before(self, other.kernels_from) && before(other, self.kernels_from)
    }

    /// Whether the entry is about this cell's variant and kernel release
    /// (`uname -r`, e.g. `7.3.4+deb13-amd64`).
    pub fn covers(&self, variant: &str, release: Option<&str>) -> bool {
        self.variant.name == variant
            && release.and_then(release_version).is_some_and(|v| {
                v >= self.kernels_from && self.kernels_before.is_none_or(|b| v < b)
            })
    }
}

/// MAJOR.MINOR of a kernel release string.
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[derive(Debug, thiserror::Error)]
pub enum MatrixFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    kernels: Option<Spanned<Vec<Spanned<String>>>>,
    variants: Option<Spanned<Vec<Spanned<String>>>>,
    scenarios: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(rename = "known-failure")]
    known_failure: Option<Vec<Spanned<RawKnown>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKnown {
    variant: Spanned<String>,
    kernels_from: Spanned<String>,
    kernels_before: Option<Spanned<String>>,
    when: Spanned<String>,
    may_pass: Option<bool>,
    reason: Spanned<String>,
}

pub fn load(path: &Path) -> Result<MatrixFile, MatrixFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| MatrixFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parse matrix text; `path` names the file in errors and anchors relative
/// scenario paths.
pub fn parse(path: &Path, text: &str) -> Result<MatrixFile, MatrixFileError> {
    let error = |span: Range<usize>, message: String| {
        let (line, column) = line_col(text, span.start);
        MatrixFileError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let raw: RawMatrix = toml::from_str(text).map_err(|e| {
        error(
            e.span().unwrap_or(0..0),
            e.message().trim().trim_end_matches('.').to_owned(),
        )
    })?;
    let list =
        |key: &str, value: &Option<Spanned<Vec<Spanned<String>>>>| -> Result<(), MatrixFileError> {
            let Some(value) = value else { return Ok(()) };
            if value.get_ref().is_empty() {
                return Err(error(
                    value.span(),
                    format!("{key} is empty: leave it out for the defaults"),
                ));
            }
            for (i, item) in value.get_ref().iter().enumerate() {
                if let Some(first) = value.get_ref()[..i]
                    .iter()
                    .find(|f| f.get_ref() == item.get_ref())
                {
                    let (line, _) = line_col(text, first.span().start);
                    return Err(error(
                        item.span(),
                        format!(
                            "{key}: {:?} is listed twice (also on line {line})",
                            item.get_ref()
                        ),
                    ));
                }
            }
            Ok(())
        };
    list("kernels", &raw.kernels)?;
    list("variants", &raw.variants)?;
    list("scenarios", &raw.scenarios)?;

    let kernels = raw
        .kernels
        .map(|k| {
            k.into_inner()
                .into_iter()
                .map(|s| {
                    s.get_ref()
                        .parse::<images::KernelSpec>()
                        .map_err(|e| error(s.span(), e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let variants = raw
        .variants
        .map(|v| {
            v.into_inner()
                .into_iter()
                .map(|s| variant::lookup(s.get_ref()).map_err(|e| error(s.span(), e.to_string())))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let base = path.parent().unwrap_or(Path::new(""));
    let scenarios = raw.scenarios.map(|s| {
        s.into_inner()
            .iter()
            .map(|p| base.join(p.get_ref()))
            .collect()
    });
    let mut known_failures = Vec::new();
    for entry in raw.known_failure.unwrap_or_default() {
        let span = entry.span();
        let k = entry.into_inner();
        let variant = variant::lookup(k.variant.get_ref())
            .map_err(|e| error(k.variant.span(), e.to_string()))?;
        let major_minor = |key: &str, v: &Spanned<String>| {
            v.get_ref()
                .split_once('.')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .ok_or_else(|| {
                    error(
                        v.span(),
                        format!("{key} {:?}: expected MAJOR.MINOR, e.g. 7.3", v.get_ref()),
                    )
                })
        };
        let kernels_from: (u32, u32) = major_minor("kernels-from", &k.kernels_from)?;
        let kernels_before = match &k.kernels_before {
            Some(v) => {
                let before: (u32, u32) = major_minor("kernels-before", v)?;
                if before <= kernels_from {
                    return Err(error(
                        v.span(),
                        format!(
                            "kernels-before {:?} is not after kernels-from {:?}",
                            v.get_ref(),
                            k.kernels_from.get_ref()
                        ),
                    ));
                }
                Some(before)
            }
            None => None,
        };
        let when = Fact::NAMES
            .iter()
            .find(|(n, _)| n == k.when.get_ref())
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let known: Vec<&str> = Fact::NAMES.iter().map(|(n, _)| *n).collect();
                error(
                    k.when.span(),
                    format!(
                        "unknown fact {:?} (known: {})",
                        k.when.get_ref(),
                        known.join(", ")
                    ),
                )
            })?;
        if k.reason.get_ref().trim().is_empty() {
            return Err(error(
                k.reason.span(),
                "reason is empty: say what was found".into(),
            ));
        }
        let known = KnownFailure {
            variant,
            kernels_from,
            kernels_before,
            when,
            may_pass: k.may_pass.unwrap_or(false),
            reason: k.reason.into_inner(),
        };
        if known_failures
            .iter()
            .any(|o: &KnownFailure| o.variant == known.variant && o.overlaps(&known))
        {
            return Err(error(
                span,
                format!(
                    "known-failure: variant {:?} has two entries for the same kernels",
                    variant.name
                ),
            ));
        }
        known_failures.push(known);
    }
    Ok(MatrixFile {
        path: path.to_path_buf(),
        kernels,
        variants,
        scenarios,
        known_failures,
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("m/matrix.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_axis_parses() {
        let m = parse(
            Path::new("ci/matrix.toml"),
            "kernels = [\"debian:6.12\", \"debian:7\"]\nvariants = [\"intel-ir\", \"amd-avic\"]\nscenarios = [\"../scenarios\"]\n",
        )
        .unwrap();
        let kernels: Vec<String> = m.kernels.unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(kernels, ["debian:6.12", "debian:7"]);
        let variants: Vec<&str> = m.variants.unwrap().iter().map(|v| v.name).collect();
        assert_eq!(variants, ["intel-ir", "amd-avic"]);
        assert_eq!(m.scenarios.unwrap(), [PathBuf::from("ci/../scenarios")]);
    }

    #[test]
    fn axes_are_optional() {
        let m = parse(Path::new("matrix.toml"), "# nothing\n").unwrap();
        assert!(m.kernels.is_none() && m.variants.is_none() && m.scenarios.is_none());
        assert!(m.known_failures.is_empty());
    }

    const KNOWN: &str = "[[known-failure]]\nvariant = \"amd-ir\"\nkernels-from = \"7.3\"\nwhen = \"no-irq-remapping\"\nreason = \"why\"\n";

    #[test]
    fn known_failures_parse_and_cover_releases() {
        let m = parse(Path::new("matrix.toml"), KNOWN).unwrap();
        let k = &m.known_failures[0];
        assert_eq!(
            (k.variant.name, k.kernels_from, k.when, k.reason.as_str()),
            ("amd-ir", (7, 3), Fact::NoIrqRemapping, "why")
        );
        assert!(k.covers("amd-ir", Some("7.3.4+deb13-amd64")));
        assert!(k.covers("amd-ir", Some("7.10.1-testbed+")));
        assert!(k.covers("amd-ir", Some("8.0.0")));
        assert!(!k.covers("amd-ir", Some("7.2.13+deb14-amd64")));
        assert!(!k.covers("amd-ir", Some("6.12.117+deb13-amd64")));
        assert!(!k.covers("amd-ir", None));
        assert!(!k.covers("amd-ir-patched", Some("7.3.4+deb13-amd64")));
        assert_eq!(Fact::NoIrqRemapping.name(), "no-irq-remapping");
    }

    #[test]
    fn known_failure_errors_name_the_line() {
        assert!(err(&KNOWN.replace("amd-ir", "amd"))
            .starts_with("m/matrix.toml:2:11: unknown variant \"amd\""));
        assert_eq!(
            err(&KNOWN.replace("\"7.3\"", "\"7\"")),
            "m/matrix.toml:3:16: kernels-from \"7\": expected MAJOR.MINOR, e.g. 7.3"
        );
        assert_eq!(
            err(&KNOWN.replace("no-irq-remapping", "no-ir")),
            "m/matrix.toml:4:8: unknown fact \"no-ir\" (known: no-irq-remapping, irqfd-deassign, l1-froze-with-l2)"
        );
        assert_eq!(
            err(&KNOWN.replace("when", "kernels-before = \"7.3\"\nwhen")),
            "m/matrix.toml:4:18: kernels-before \"7.3\" is not after kernels-from \"7.3\""
        );
        assert_eq!(
            err(&KNOWN.replace("when", "kernels-before = \"8\"\nwhen")),
            "m/matrix.toml:4:18: kernels-before \"8\": expected MAJOR.MINOR, e.g. 7.3"
        );
        assert!(
            err(&KNOWN.replace("when", "may-pass = \"yes\"\nwhen")).starts_with("m/matrix.toml:4:")
        );
        assert_eq!(
            err(&KNOWN.replace("\"why\"", "\" \"")),
            "m/matrix.toml:5:10: reason is empty: say what was found"
        );
        assert!(err(&KNOWN.replace("reason", "because")).starts_with("m/matrix.toml:"));
        assert!(err(&format!("{KNOWN}{KNOWN}"))
            .contains("known-failure: variant \"amd-ir\" has two entries for the same kernels"));
        // one variant, kernel ranges apart: both stand; overlapping: an error
        let older = KNOWN
            .replace("\"7.3\"", "\"6.16\"")
            .replace("when", "kernels-before = \"6.17\"\nwhen");
        let m = parse(Path::new("m/matrix.toml"), &format!("{KNOWN}{older}")).unwrap();
        assert_eq!(m.known_failures.len(), 2);
        let overlapping = KNOWN
            .replace("\"7.3\"", "\"6.16\"")
            .replace("when", "kernels-before = \"7.4\"\nwhen");
        assert!(err(&format!("{KNOWN}{overlapping}")).contains("for the same kernels"));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let unknown =
            err("kernels = [\"debian:7\"]\nvariants = [\"intel-ir\",\n  \"intel-posted\"]\n");
        assert!(
            unknown.starts_with(
                "m/matrix.toml:3:3: unknown variant \"intel-posted\" (known: intel-ir, "
            ),
            "{unknown}"
        );
        assert_eq!(
            err("kernels = [\"debian:7\", \"debian:seven\"]\n"),
            "m/matrix.toml:1:24: bad kernel spec \"debian:seven\": expected debian:MAJOR.MINOR[.PATCH]"
        );
        assert!(err("kernel = [\"debian:7\"]\n")
            .starts_with("m/matrix.toml:1:1: unknown field `kernel`"));
        assert_eq!(
            err("variants = []\n"),
            "m/matrix.toml:1:12: variants is empty: leave it out for the defaults"
        );
        assert_eq!(
            err("variants = [\"amd-ir\",\n\"amd-ir\"]\n"),
            "m/matrix.toml:2:1: variants: \"amd-ir\" is listed twice (also on line 1)"
        );
        assert!(
            err("kernels = \"debian:7\"\n").starts_with("m/matrix.toml:1:11: invalid type"),
            "{}",
            err("kernels = \"debian:7\"\n")
        );
    }
}
