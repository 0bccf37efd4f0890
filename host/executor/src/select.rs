//! Column selectors: a stage's configuration may name a list of columns
//! by pattern or by type instead of spelling them out, and the host
//! resolves it against the schema the stage reads, so every stage that
//! takes column lists (Rust or Python, ours or yours) gets them alike.
//!
//! A selector is a table in place of a list, at the top level of a stage's
//! `config`, marked by its `select` key, which names a type of column;
//! `glob` and `regex` narrow it by name, and `exclude` (a list of column
//! names) takes columns out:
//!
//! ```toml
//! features = { select = "numeric", exclude = ["target"] }
//! columns = { select = "all", glob = "mean_*" }
//! columns = { select = "float", regex = "^(mean|worst)_" }
//! ```
//!
//! A column is selected when it passes every filter given; columns keep
//! the order in which the stage reads them. The stage receives the list,
//! never the selector. Selectors are checked when the plan is resolved (a
//! bad pattern, an unknown type or key fails before any data moves) and
//! resolved when the stage is prepared, against the schema of what it
//! reads (after its `columns` projection), the same way by the driver and
//! by every task process; the commit records what each selected
//! (`selected`). One that selects nothing, excludes a column the input
//! does not have, or meets an input with no rows, fails the stage before
//! its first task.

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, Schema};
use globset::{Glob, GlobMatcher};
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

/// The types a selector's `select` names.
const TYPES: &[&str] = &["all", "numeric", "integer", "float", "boolean", "utf8", "string", "timestamp"];

/// The keys a selector takes.
const KEYS: &[&str] = &["select", "glob", "regex", "exclude"];

/// The most memory a selector's regular expression may compile to.
const REGEX_BYTES: usize = 1 << 20;

/// One parsed selector.
#[derive(Debug)]
struct Selector {
    glob: Option<GlobMatcher>,
    regex: Option<Regex>,
    kind: Option<String>,
    exclude: Vec<String>,
}

impl Selector {
    /// Whether `value` is written as a selector: an object with a string
    /// `select` (so a table of per-column settings keyed by a column that
    /// happens to be called `select` is not one).
    fn is_one(value: &Value) -> bool {
        value.as_object().is_some_and(|o| o.get("select").is_some_and(Value::is_string))
    }

    fn parse(key: &str, object: &Map<String, Value>) -> Result<Selector, String> {
        let bad = |why: String| format!("`{key}`: {why}");
        if let Some(unknown) = object.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(format!("a column selector takes no key `{unknown}` (it takes: {})", KEYS.join(", "))));
        }
        let text = |name: &str| -> Result<Option<&str>, String> {
            match object.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(bad(format!("`{name}` must be a string, not {other}"))),
            }
        };
        let glob = text("glob")?
            .map(|g| Glob::new(g).map(|g| g.compile_matcher()).map_err(|e| bad(format!("glob {g:?}: {e}"))))
            .transpose()?;
        let regex = text("regex")?
            .map(|r| RegexBuilder::new(r).size_limit(REGEX_BYTES).build().map_err(|e| bad(format!("regex {r:?}: {e}"))))
            .transpose()?;
        let kind = text("select")?.map(str::to_string);
        if let Some(k) = &kind
            && !TYPES.contains(&k.as_str())
        {
            return Err(bad(format!("`select = {k:?}`: no such type of column (the types: {})", TYPES.join(", "))));
        }
        let exclude = match object.get("exclude") {
            None => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| {
                    n.as_str().map(str::to_string).ok_or_else(|| bad(format!("`exclude` lists {n}, not a column name")))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(bad(format!("`exclude` must be a list of column names, not {other}"))),
        };
        Ok(Selector { glob, regex, kind, exclude })
    }

    fn has_type(&self, data_type: &DataType) -> bool {
        match self.kind.as_deref() {
            None | Some("all") => true,
            Some("numeric") => data_type.is_numeric(),
            Some("integer") => data_type.is_integer(),
            Some("float") => data_type.is_floating(),
            Some("boolean") => *data_type == DataType::Boolean,
            Some("utf8" | "string") => matches!(data_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
            Some("timestamp") => {
                matches!(data_type, DataType::Timestamp(..) | DataType::Date32 | DataType::Date64)
            }
            Some(_) => false,
        }
    }

    /// The columns of `schema` it selects, in the schema's order.
    fn select(&self, key: &str, schema: &Schema) -> Result<Vec<String>, String> {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        if let Some(missing) = self.exclude.iter().find(|e| !names.contains(&e.as_str())) {
            return Err(format!(
                "`{key}` excludes column {missing:?}, which the input does not have (its columns: {})",
                names.join(", ")
            ));
        }
        let selected: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| {
                let name = f.name().as_str();
                self.glob.as_ref().is_none_or(|g| g.is_match(name))
                    && self.regex.as_ref().is_none_or(|r| r.is_match(name))
                    && self.has_type(f.data_type())
                    && !self.exclude.iter().any(|e| e == name)
            })
            .map(|f| f.name().clone())
            .collect();
        if selected.is_empty() {
            let types: Vec<String> =
                schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
            return Err(format!("`{key}` selects no column of the input (its columns: {})", types.join(", ")));
        }
        Ok(selected)
    }
}

/// The selectors of a stage's configuration (JSON), by key; none for a
/// configuration without any (or one that is not an object: the stage
/// says what is wrong with it).
fn selectors(config: &Value) -> Result<Vec<(String, Selector)>, String> {
    let Some(object) = config.as_object() else { return Ok(Vec::new()) };
    object
        .iter()
        .filter(|(_, v)| Selector::is_one(v))
        .map(|(k, v)| Ok((k.clone(), Selector::parse(k, v.as_object().expect("a selector is an object"))?)))
        .collect()
}

/// Check the selectors of a configuration: whether it has any, or why one
/// is malformed.
pub(crate) fn check(config_json: &str) -> Result<bool, String> {
    let config: Value = serde_json::from_str(config_json).map_err(|e| format!("not a JSON document ({e})"))?;
    Ok(!selectors(&config)?.is_empty())
}

/// A configuration's selectors resolved: the document the stage receives
/// and what each selector selected.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    pub config: String,
    pub selected: BTreeMap<String, Vec<String>>,
}

/// Replace every selector of `config_json` by the columns it selects from
/// `schema` (`None`: an input with no rows, against which no selector
/// resolves). A configuration without selectors is returned as it is,
/// byte for byte.
pub(crate) fn resolve(config_json: &str, schema: Option<&Schema>) -> Result<Resolved, String> {
    let mut config: Value = serde_json::from_str(config_json).map_err(|e| format!("not a JSON document ({e})"))?;
    let found = selectors(&config)?;
    if found.is_empty() {
        return Ok(Resolved { config: config_json.to_string(), selected: BTreeMap::new() });
    }
    let mut selected = BTreeMap::new();
    for (key, selector) in found {
        let columns = match schema {
            Some(schema) => selector.select(&key, schema)?,
            None => {
                return Err(format!(
                    "`{key}` selects columns of an input that has no rows, and so no schema to select from"
                ));
            }
        };
        config[key.as_str()] = Value::from(columns.clone());
        selected.insert(key, columns);
    }
    Ok(Resolved { config: config.to_string(), selected })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("mean_radius", DataType::Float64, true),
            Field::new("mean_texture", DataType::Float64, true),
            Field::new("worst_radius", DataType::Float32, true),
            Field::new("city", DataType::Utf8, true),
            Field::new("count", DataType::Int64, true),
            Field::new("target", DataType::Int64, true),
        ])
    }

    fn selected(config: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
        resolve(config, Some(&schema())).map(|r| r.selected)
    }

    #[test]
    fn selectors_pick_columns_by_type_glob_and_regex_in_schema_order() {
        let one = |config: &str, key: &str| selected(config).unwrap().remove(key).unwrap();
        assert_eq!(one(r#"{"c": {"select": "all", "glob": "mean_*"}}"#, "c"), ["mean_radius", "mean_texture"]);
        assert_eq!(one(r#"{"c": {"select": "all", "regex": "radius$"}}"#, "c"), ["mean_radius", "worst_radius"]);
        assert_eq!(
            one(r#"{"f": {"select": "numeric", "exclude": ["target"]}}"#, "f"),
            ["mean_radius", "mean_texture", "worst_radius", "count"]
        );
        assert_eq!(
            one(r#"{"f": {"select": "float", "regex": "^(worst|mean)_r"}}"#, "f"),
            ["mean_radius", "worst_radius"]
        );
        assert_eq!(one(r#"{"f": {"select": "integer"}}"#, "f"), ["count", "target"]);
        assert_eq!(one(r#"{"f": {"select": "utf8"}}"#, "f"), ["city"]);
        assert_eq!(one(r#"{"f": {"select": "all", "exclude": ["city", "target"]}}"#, "f").len(), 4);
    }

    #[test]
    fn the_stage_receives_lists_and_a_config_without_selectors_is_untouched() {
        let config = r#"{"features":{"select":"numeric","exclude":["target"]},"target":"target","c":1.0}"#;
        let resolved = resolve(config, Some(&schema())).unwrap();
        let doc: Value = serde_json::from_str(&resolved.config).unwrap();
        assert_eq!(doc["features"], serde_json::json!(["mean_radius", "mean_texture", "worst_radius", "count"]));
        assert_eq!(doc["target"], "target");
        // Only `select` marks a selector: a stage's own tables with `type`,
        // `glob` or `regex` keys, or per-column tables keyed by a column
        // called `select`, reach the stage as written.
        for plain in [
            r#"{"loss":{"type":"float","delta":1.35},"x":[1, 2]}"#,
            r#"{"paths":{"glob":"*.csv"}}"#,
            r#"{"ranges":{"select":{"min":0}}}"#,
            r#"[1,2]"#,
            r#"{"columns":["a"]}"#,
        ] {
            assert_eq!(resolve(plain, Some(&schema())).unwrap().config, plain);
            assert!(!check(plain).unwrap());
        }
        // Against an input with no rows, a selector does not resolve.
        assert!(resolve(config, None).unwrap_err().contains("`features` selects columns of an input that has no rows"));
    }

    #[test]
    fn malformed_and_empty_selectors_are_refused_with_what_to_fix() {
        let refused = |config: &str| check(config).and_then(|_| selected(config).map(|_| ())).unwrap_err();
        assert!(refused(r#"{"c": {"select": "all", "glob": "[a"}}"#).contains("`c`: glob \"[a\""));
        assert!(refused(r#"{"c": {"select": "all", "regex": "("}}"#).contains("`c`: regex \"(\""));
        assert!(
            refused(r#"{"c": {"select": "numbers"}}"#)
                .contains("`select = \"numbers\"`: no such type of column (the types: all, numeric")
        );
        assert!(refused(r#"{"c": {"select": "all", "exlude": ["a"]}}"#).contains("takes no key `exlude`"));
        assert!(refused(r#"{"c": {"select": "all", "exclude": "a"}}"#).contains("`exclude` must be a list"));
        assert!(refused(r#"{"c": {"select": "all", "exclude": ["tagret"]}}"#).contains("excludes column \"tagret\""));
        assert!(
            refused(r#"{"c": {"select": "all", "glob": "pixel_*"}}"#).contains("`c` selects no column of the input")
        );
        // A pattern too big to compile is refused, not compiled.
        let huge = format!(r#"{{"c": {{"select": "all", "regex": "{}"}}}}"#, "(a|b|c|d){1000}".repeat(20));
        assert!(refused(&huge).contains("`c`: regex"));
    }
}
