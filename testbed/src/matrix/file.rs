//! Matrix files: which kernels, variants and scenarios a matrix runs.
//!
//! ```toml
//! kernels = ["debian:6.12", "debian:7"]
//! variants = ["intel-ir", "amd-ir"]
//! scenarios = ["scenarios"]     # files or directories, relative to this file
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
    Ok(MatrixFile {
        path: path.to_path_buf(),
        kernels,
        variants,
        scenarios,
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
