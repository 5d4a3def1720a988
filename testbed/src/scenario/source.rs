//! Positions in a scenario file: errors at file:line:col, the span of a
//! key inside a table, and the strict conversion of one `[[step]]` or
//! `[[expect]]` table to its type.

use std::ops::Range;
use std::path::Path;

use serde::Serialize;
use toml::Spanned;

use super::ScenarioError;

pub(super) struct Source<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn error(&self, span: Range<usize>, message: String) -> ScenarioError {
        let (line, column) = line_col(self.text, span.start);
        ScenarioError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message,
        }
    }

    /// The span of `key = ...` inside the table at `span`, or the table itself.
    pub(super) fn key_span(&self, span: &Range<usize>, key: &str) -> Range<usize> {
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
    pub(super) fn header_at(&self, span: &Range<usize>) -> Option<String> {
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
    pub(super) fn table_extent(&self, span: &Range<usize>) -> Range<usize> {
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
    pub(super) fn header_index(&self, span: &Range<usize>, name: &str) -> usize {
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
    pub(super) fn string_value(&self, span: &Range<usize>, key: &str) -> Option<String> {
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
    pub(super) fn toml_error(&self, span: Option<Range<usize>>, message: &str) -> ScenarioError {
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
    pub(super) fn typed<T>(
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
