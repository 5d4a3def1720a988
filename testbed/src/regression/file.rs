//! The `[regression]` table of a corpus entry: which upstream change the
//! scenario shows, and what it must say on which kernels.
//!
//! ```toml
//! [regression]
//! title = "KVM clobbers the irqfd routing type when deassigning an irqfd"
//! cve = "CVE-2026-23198"
//! variant = "amd-avic"
//! introduced = { commit = "cb210737675e", subject = "...", release = "v6.17" }
//! fix = { commit = "b4d37cdb77a0", subject = "...", release = "v6.19", stable = ["6.18.10"] }
//!
//! [[regression.kernel]]
//! kernel = "debian:6.18.9"
//! expect = "fail"           # the scenario's checks fail there
//! failing = ["lossless"]    # optional: at least these checks fail
//! shows = "what the report says there"
//! ci = true                 # one fail and one pass kernel run in CI
//! verified = "2026-12-06"   # run here on that day and found as expected
//! ```
//!
//! Strict like scenario files: unknown keys, a commit that is not hex, a
//! kernel that is not a `debian:` spec, or no kernel on either side are
//! errors naming the file, line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// One upstream commit, as the entry names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// At least 12 hex digits.
    pub commit: String,
    pub subject: String,
    /// The first mainline release that has it, e.g. `v6.19`.
    pub release: String,
    /// Stable releases it was backported to, e.g. `6.18.10`.
    #[serde(default)]
    pub stable: Vec<String>,
}

/// What the scenario's checks do on a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    Pass,
    Fail,
}

impl Expect {
    pub fn label(self) -> &'static str {
        match self {
            Expect::Pass => "pass",
            Expect::Fail => "fail",
        }
    }
}

/// A `[[regression.kernel]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelCase {
    /// A `debian:` kernel spec.
    pub kernel: String,
    pub expect: Expect,
    /// Checks that must be among the failed ones (with `expect = "fail"`).
    #[serde(default)]
    pub failing: Vec<String>,
    /// What the report shows on this kernel, in words.
    pub shows: String,
    /// Run by the corpus CI test (`testbed regressions --ci`).
    #[serde(default)]
    pub ci: bool,
    /// The day this case was run here and found as expected; absent: the
    /// case is documented (from upstream history) but not run here yet.
    #[serde(default)]
    pub verified: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegression {
    title: String,
    #[serde(default)]
    cve: Option<String>,
    variant: Spanned<String>,
    #[serde(default)]
    introduced: Option<Spanned<Commit>>,
    fix: Spanned<Commit>,
    #[serde(rename = "kernel")]
    kernels: Vec<Spanned<KernelCase>>,
}

/// The file's top level: only `[regression]` is read here (the scenario
/// parser checks the rest).
#[derive(Debug, Deserialize)]
struct RawFile {
    regression: Option<Spanned<RawRegression>>,
}

/// A checked `[regression]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regression {
    pub title: String,
    pub cve: Option<String>,
    pub variant: &'static str,
    pub introduced: Option<Commit>,
    pub fix: Commit,
    pub kernels: Vec<KernelCase>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegressionError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
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

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// Parses the `[regression]` table of a scenario file's text; `Ok(None)`
/// when the file has none.
pub fn parse(path: &Path, text: &str) -> Result<Option<Regression>, RegressionError> {
    let error = |span: Range<usize>, message: String| {
        let (line, column) = line_col(text, span.start);
        RegressionError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().trim_end_matches('.').to_string();
        error(e.span().unwrap_or(0..0), message)
    })?;
    let Some(raw) = raw.regression else {
        return Ok(None);
    };
    let span = raw.span();
    let raw = raw.into_inner();
    let variant = crate::variant::lookup(raw.variant.get_ref())
        .map_err(|e| error(raw.variant.span(), e.to_string()))?
        .name;
    for c in raw.introduced.iter().chain([&raw.fix]) {
        let hex = &c.get_ref().commit;
        if hex.len() < 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error(
                c.span(),
                format!("commit {hex:?}: give at least 12 hex digits"),
            ));
        }
    }
    let mut kernels = Vec::new();
    for k in &raw.kernels {
        let case = k.get_ref();
        match case.kernel.parse::<images::KernelSpec>() {
            Ok(images::KernelSpec::Debian(_)) => {}
            Ok(_) => {
                return Err(error(
                    k.span(),
                    format!("kernel {:?}: the corpus takes debian: kernels", case.kernel),
                ))
            }
            Err(e) => return Err(error(k.span(), format!("kernel {:?}: {e}", case.kernel))),
        }
        if case.expect == Expect::Pass && !case.failing.is_empty() {
            return Err(error(
                k.span(),
                format!(
                    "{}: failing checks listed on a kernel expected to pass",
                    case.kernel
                ),
            ));
        }
        if case.shows.trim().is_empty() {
            return Err(error(
                k.span(),
                format!(
                    "{}: shows is empty: say what the report shows there",
                    case.kernel
                ),
            ));
        }
        if kernels.iter().any(|o: &KernelCase| o.kernel == case.kernel) {
            return Err(error(k.span(), format!("{} is listed twice", case.kernel)));
        }
        kernels.push(case.clone());
    }
    for side in [Expect::Fail, Expect::Pass] {
        if !kernels.iter().any(|k| k.expect == side) {
            return Err(error(
                span,
                format!(
                    "no kernel with expect = \"{}\": name one on each side",
                    side.label()
                ),
            ));
        }
    }
    for side in [Expect::Fail, Expect::Pass] {
        let ci = kernels.iter().filter(|k| k.ci && k.expect == side).count();
        if ci != 1 {
            return Err(error(
                span,
                format!(
                    "{ci} kernels with expect = \"{}\" and ci = true: mark exactly one",
                    side.label()
                ),
            ));
        }
    }
    Ok(Some(Regression {
        title: raw.title,
        cve: raw.cve,
        variant,
        introduced: raw.introduced.map(Spanned::into_inner),
        fix: raw.fix.into_inner(),
        kernels,
    }))
}

/// Reads and parses `path`'s `[regression]` table.
pub fn load(path: &Path) -> Result<Option<Regression>, RegressionError> {
    let text = std::fs::read_to_string(path).map_err(|source| RegressionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"description = "x"
[regression]
title = "t"
variant = "amd-avic"
fix = { commit = "b4d37cdb77a0", subject = "s", release = "v6.19", stable = ["6.18.10"] }

[[regression.kernel]]
kernel = "debian:6.18.9"
expect = "fail"
failing = ["lossless"]
shows = "lost"
ci = true

[[regression.kernel]]
kernel = "debian:6.18.12"
expect = "pass"
shows = "all delivered"
ci = true
verified = "2026-12-06"
"#;

    fn err(text: &str) -> String {
        parse(Path::new("r/x.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_entry_parses() {
        let r = parse(Path::new("r/x.toml"), GOOD).unwrap().unwrap();
        assert_eq!(r.variant, "amd-avic");
        assert_eq!(r.fix.stable, ["6.18.10"]);
        assert_eq!(r.kernels.len(), 2);
        assert_eq!(r.kernels[0].failing, ["lossless"]);
        assert_eq!(r.kernels[1].verified.as_deref(), Some("2026-12-06"));
        assert_eq!(
            parse(Path::new("x.toml"), "description = \"x\"\n").unwrap(),
            None
        );
    }

    #[test]
    fn bad_entries_name_the_line() {
        let e = err(&GOOD.replace("b4d37cdb77a0", "b4d37"));
        assert_eq!(
            e,
            "r/x.toml:5:7: commit \"b4d37\": give at least 12 hex digits"
        );
        let e = err(&GOOD.replace("debian:6.18.9", "git:/x"));
        assert!(
            e.starts_with("r/x.toml:7:1: kernel \"git:/x\": the corpus takes debian: kernels"),
            "{e}"
        );
        let e = err(&GOOD.replace("expect = \"fail\"", "expect = \"broken\""));
        assert!(
            e.starts_with("r/x.toml:9:10: unknown variant `broken`"),
            "{e}"
        );
        let e = err(&GOOD.replace("shows = \"lost\"", "shows = \"lost\"\nwhy = 1"));
        assert!(e.contains("unknown field `why`"), "{e}");
        let e = err(&GOOD.replace("variant = \"amd-avic\"", "variant = \"amd-x\""));
        assert!(e.starts_with("r/x.toml:4:11: "), "{e}");
        let e = err(&GOOD.replace("expect = \"pass\"", "expect = \"fail\""));
        assert!(e.contains("no kernel with expect = \"pass\""), "{e}");
        let e = err(&GOOD.replacen("ci = true", "ci = false", 1));
        assert!(
            e.contains("0 kernels with expect = \"fail\" and ci = true: mark exactly one"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "ci = true\nverified",
            "ci = true\nfailing = [\"pairing\"]\nverified",
        ));
        assert!(
            e.contains("failing checks listed on a kernel expected to pass"),
            "{e}"
        );
    }
}
