//! No crate of the workspace has a cycle among its modules: a module that uses another is never
//! used by it, directly or through others. Knots of modules that all use each other (the agent,
//! the config, the L7 tier and the metrics once were one) make every change touch all of them.
//!
//! Read from the sources: each top-level module of a crate (a file or a folder under `src/`) and
//! the top-level modules its code names through `crate::` (or `super::` from a top-level file).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The top-level modules named after `prefix` (`crate::` or `super::`) in `text`, grouped uses
/// (`crate::{a::X, b}`) included.
fn named(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in text.match_indices(prefix) {
        // Not the end of a longer path or word (`xlb_crate::`, `a::super::`).
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        {
            continue;
        }
        let rest = &text[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas; each part starts with a module.
            let (mut depth, mut start) = (0usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// The crate's top-level modules and what each names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(src) {
        let rel = file.strip_prefix(src).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        // The crate root declares the modules; it is not one of them.
        if parts.len() == 1 && ["lib", "main"].contains(&parts[0].as_str()) || parts[0] == "bin" {
            continue;
        }
        let module = parts[0].clone();
        let text = fs::read_to_string(&file).unwrap();
        let mut uses = named(&text, "crate::");
        if parts.len() == 1 {
            uses.extend(named(&text, "super::"));
        }
        uses.remove(&module);
        edges.entry(module).or_default().extend(uses);
    }
    // Only names that are modules of this crate (not items of its root).
    let modules: BTreeSet<String> = edges.keys().cloned().collect();
    for uses in edges.values_mut() {
        uses.retain(|m| modules.contains(m));
    }
    edges
}

/// A cycle of `edges`, if any, as the modules along it.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        at: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|m| m == at) {
            let mut c = path[i..].to_vec();
            c.push(at.to_owned());
            return Some(c);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_owned());
        for next in edges.get(at).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(at.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_a_module_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let crates = [
        "lb-common",
        "lb-config",
        "lb-ebpf",
        "lb-ebpf-bench",
        "lb-health",
        "lb-l7",
        "lb-userspace",
        "tests",
        "xtask",
    ];
    let mut cycles = Vec::new();
    for c in crates {
        let edges = graph(&root.join(c).join("src"));
        // The sources were found (a single-file crate, like the bench programs, has none).
        assert!(c == "lb-ebpf-bench" || !edges.is_empty(), "{c} has modules");
        if let Some(cycle) = cycle(&edges) {
            cycles.push(format!("{c}: {}", cycle.join(" -> ")));
        }
    }
    assert!(
        cycles.is_empty(),
        "module cycles:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn uses_are_read_from_paths_and_groups() {
    let text = "use crate::{agent::Agent, api::{self, Request}, stats};\n\
                fn f() { crate::balancer::addr_bytes(a); super::tls::load(); }\n\
                use lb_crate::x; // not ours";
    let want: BTreeSet<String> = ["agent", "api", "stats", "balancer"]
        .map(String::from)
        .into();
    assert_eq!(named(text, "crate::"), want);
    assert_eq!(named(text, "super::"), BTreeSet::from(["tls".to_owned()]));
    let knot = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(
        cycle(&knot),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
