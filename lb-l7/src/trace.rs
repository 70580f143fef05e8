//! ALB's request tracing: the `X-Amzn-Trace-Id` header each request gets on its way to the
//! target, and the access log's `trace_id`. Fields are `Name=1-<epoch seconds, 8 hex>-<id, 24
//! hex>`. A request without the header gets a `Root`; one with a `Root` gets a `Self` field
//! first (an existing `Self` is replaced); other fields are kept as they are. A header without a
//! `Root` gets one in front, and one over 7 KB is replaced by a fresh `Root`, as ALB does.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// The header's name.
pub const HEADER: &str = "x-amzn-trace-id";

/// ALB rewrites a header longer than this.
const MAX_LEN: usize = 7 * 1024;

/// The header the target gets, given the request's.
pub fn next(incoming: Option<&HeaderValue>) -> HeaderValue {
    let fresh = |name: &str| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!(
            "{name}=1-{:08x}-{:08x}{:016x}",
            now as u32,
            fastrand::u32(..),
            fastrand::u64(..)
        )
    };
    let value = match incoming.and_then(|v| v.to_str().ok()) {
        Some(v) if v.len() <= MAX_LEN && !v.trim().is_empty() => {
            let fields: Vec<&str> = v
                .split(';')
                .map(str::trim)
                .filter(|f| !f.is_empty() && !f.starts_with("Self="))
                .collect();
            let name = if fields.iter().any(|f| f.starts_with("Root=")) {
                "Self"
            } else {
                "Root"
            };
            let mut out = fresh(name);
            for f in fields {
                out.push(';');
                out.push_str(f);
            }
            out
        }
        _ => fresh("Root"),
    };
    // Visible ASCII and the fields of a header that was text: always a valid value.
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(v: &HeaderValue, name: &str) -> String {
        let v = v.to_str().unwrap();
        let f = v
            .split(';')
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {v}"));
        let parts: Vec<&str> = f.split('-').collect();
        assert_eq!(parts.len(), 3, "{f}");
        assert_eq!(parts[0], "1");
        assert_eq!(parts[1].len(), 8, "{f}");
        assert_eq!(parts[2].len(), 24, "{f}");
        assert!(
            parts[1..]
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        f.to_owned()
    }

    #[test]
    fn a_request_without_the_header_gets_a_root() {
        let v = next(None);
        assert!(v.to_str().unwrap().starts_with("Root=1-"), "{v:?}");
        field(&v, "Root");
        assert_ne!(next(None), v, "a new id each time");
    }

    #[test]
    fn a_root_gets_a_self_in_front_and_other_fields_stay() {
        let root = "Root=1-67891233-abcdef012345678912345678";
        let v = next(Some(
            &HeaderValue::from_str(&format!("{root};CalledFrom=app")).unwrap(),
        ));
        let s = v.to_str().unwrap();
        assert!(s.starts_with("Self=1-"), "{s}");
        assert!(s.ends_with(&format!(";{root};CalledFrom=app")), "{s}");
        field(&v, "Self");
        // A second hop replaces the Self.
        let again = next(Some(&v));
        assert_eq!(again.to_str().unwrap().matches("Self=").count(), 1);
        assert_ne!(field(&again, "Self"), field(&v, "Self"));
    }

    #[test]
    fn a_header_without_a_root_gets_one_and_an_oversized_one_is_replaced() {
        let v = next(Some(&HeaderValue::from_static("CalledFrom=app")));
        let s = v.to_str().unwrap();
        assert!(
            s.starts_with("Root=1-") && s.ends_with(";CalledFrom=app"),
            "{s}"
        );
        let big = format!(
            "Root=1-67891233-abcdef012345678912345678;X={}",
            "a".repeat(8000)
        );
        let v = next(Some(&HeaderValue::from_str(&big).unwrap()));
        assert!(!v.to_str().unwrap().contains(";X="));
        field(&v, "Root");
    }
}
