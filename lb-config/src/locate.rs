//! Where a refused key is in the file: the line an error names.

use toml_edit::{ImDocument, Item, TableLike};

use crate::{ConfigError, Refusal};

/// The error for `refusal` in `text` (the file `path`).
pub(crate) fn error(text: &str, path: &str, refusal: Refusal) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        line: line_of(text, &refusal.key),
        key: refusal.key,
        message: refusal.message,
    }
}

/// The line of `text` that holds `key`, a path as the errors name it: `node.mtu`,
/// `target_groups[2] (web).targets[0].weight`, `http_listeners[0].attributes."a.b"`. An element
/// named in parentheses is found by its `name`, else by index. A key that is not in the file (a default) gets the line of the nearest one above it.
fn line_of(text: &str, key: &str) -> usize {
    let Ok(doc) = ImDocument::parse(text) else {
        return 1;
    };
    let mut table: &dyn TableLike = doc.as_table();
    let mut at = 0;
    for seg in segments(key) {
        let Some(item) = table.get(seg.name) else {
            break;
        };
        let span = table.key(seg.name).and_then(|k| k.span()).or(item.span());
        at = span.map_or(at, |s| s.start);
        // Tables in the item: those of an array of tables or of an array of inline tables.
        let elements: Vec<(&dyn TableLike, Option<usize>)> = match item {
            Item::ArrayOfTables(a) => a
                .iter()
                .map(|t| (t as &dyn TableLike, t.span().map(|s| s.start)))
                .collect(),
            Item::Value(toml_edit::Value::Array(a)) => a
                .iter()
                .filter_map(|v| {
                    Some((
                        v.as_inline_table()? as &dyn TableLike,
                        v.span().map(|s| s.start),
                    ))
                })
                .collect(),
            _ => Vec::new(),
        };
        let named = |t: &&(&dyn TableLike, Option<usize>)| {
            seg.label.is_some() && t.0.get("name").and_then(Item::as_str) == seg.label
        };
        let element = elements
            .iter()
            .find(named)
            .or_else(|| seg.index.and_then(|i| elements.get(i)));
        match (element, item.as_table_like()) {
            (Some(&(t, start)), _) => {
                table = t;
                at = start.unwrap_or(at);
            }
            (None, Some(t)) if seg.index.is_none() && seg.label.is_none() => table = t,
            _ => break,
        }
    }
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// One step of a key path: a name, maybe an index, maybe a `(label)`.
struct Segment<'a> {
    name: &'a str,
    index: Option<usize>,
    label: Option<&'a str>,
}

/// The steps of a key path, split at the dots outside quotes.
fn segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        let (name, after) = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => rest.split_at(rest.find(['.', '[', ' ']).unwrap_or(rest.len())),
        };
        let mut after = after;
        let mut index = None;
        if let Some((i, r)) = after.strip_prefix('[').and_then(|a| a.split_once(']')) {
            index = i.parse().ok();
            after = r;
        }
        let mut label = None;
        if let Some((l, r)) = after.strip_prefix(" (").and_then(|a| a.split_once(')')) {
            label = Some(l);
            after = r;
        }
        out.push(Segment { name, index, label });
        rest = after
            .strip_prefix('.')
            .unwrap_or(after.get(1..).unwrap_or(""));
    }
    out
}
