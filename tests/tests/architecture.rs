//! ARCHITECTURE.md's code map names every module of proxy-core, proxy-bin
//! and proxy-support, and no module that is gone; none of them has an
//! import circle. Needs no running service.
//!
//! The modules are the `.rs` files under `proxy-core/src`, `proxy-bin/src`
//! and `proxy-support/src`, each named by its path relative to `src` with `::`
//! (`a/b.rs` and `a/b/mod.rs` are both `a::b`). Not counted: `lib.rs`,
//! `main.rs`, and test-only files: any whose path has a component
//! containing `tests` or equal to `test_tls`.
//!
//! The rule for "under the right crate's section": a crate's section runs
//! from its heading line (`## proxy-core`, `## proxy-bin`,
//! `## proxy-support`) to the next heading of level one or two (a line
//! starting `# ` or `## `); `###` headings stay inside it. A module is named when its path is a whole
//! inline code span (`` `upstream::pool` ``, on one line, outside fenced
//! blocks) in its crate's section.
//!
//! A code span in a section that looks like a path (letters, digits, `_`
//! and `::`, with at least one `::`) and whose first segment is a top-level
//! module of that crate must still name a module. A leading `crate::` or the
//! crate's own library name is dropped first, and the path is cut before its
//! first segment that starts with an upper-case letter (a type, trait or
//! constant: `credential::Secret` checks `credential`). Spans whose first
//! segment is no module of the crate (type names, other crates' paths) are
//! not checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// One crate of the code map.
struct Crate {
    /// Its heading in ARCHITECTURE.md, and its folder.
    name: &'static str,
    /// Its library name, which may prefix a path.
    lib: &'static str,
    /// Whether the circle check must find many modules and imports in it
    /// (proof that the import reader works): proxy-support is three leaves.
    sizeable: bool,
}

const CRATES: [Crate; 3] = [
    Crate {
        name: "proxy-core",
        lib: "proxy_core",
        sizeable: true,
    },
    Crate {
        name: "proxy-bin",
        lib: "authproxy",
        sizeable: true,
    },
    Crate {
        name: "proxy-support",
        lib: "proxy_support",
        sizeable: false,
    },
];

fn root() -> PathBuf {
    authproxy_tests::package_dir().join("..")
}

fn architecture() -> anyhow::Result<String> {
    let path = root().join("ARCHITECTURE.md");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Every `.rs` file below `dir`, as paths relative to `base`.
fn rust_files(base: &Path, dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(base, &path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path.strip_prefix(base)?.to_path_buf());
        }
    }
    Ok(())
}

/// A source file's module path (`a/b.rs`, `a/b/mod.rs` → `a::b`), and
/// whether the code map must name it.
fn module_of(file: &Path) -> (String, bool) {
    let mut segments: Vec<String> = file
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if segments.len() > 1 && segments.last().is_some_and(|last| last == "mod") {
        segments.pop();
    }
    let path = segments.join("::");
    let test_only = segments
        .iter()
        .any(|s| s.contains("tests") || s == "test_tls");
    let root_file = path == "lib" || path == "main";
    (path, !(test_only || root_file))
}

/// Every module of a crate: (all paths with a file, the ones the map must name).
fn modules(krate: &Crate) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let src = root().join(krate.name).join("src");
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files)?;
    let mut all = BTreeSet::new();
    let mut named = BTreeSet::new();
    for file in files {
        let (path, must_name) = module_of(&file);
        if must_name {
            named.insert(path.clone());
        }
        all.insert(path);
    }
    Ok((all, named))
}

/// The text of a crate's section: from its `## <name>` line to the next
/// heading of level one or two.
fn section<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let heading = format!("## {name}");
    let mut lines = text.lines().skip_while(|line| line.trim_end() != heading);
    lines.next()?;
    Some(
        lines
            .take_while(|line| !(line.starts_with("# ") || line.starts_with("## ")))
            .collect(),
    )
}

/// The inline code spans of `lines`, fenced blocks left out.
fn code_spans<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in lines {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            spans.extend(line.split('`').skip(1).step_by(2));
        }
    }
    spans
}

/// The module a path-like code span names in `krate`, if it is checked:
/// `None` for spans that are no `::` path or do not start with one of
/// `top` (the crate's top-level modules).
fn named_module(span: &str, krate: &Crate, top: &BTreeSet<String>) -> Option<String> {
    let is_path = span.contains("::")
        && span
            .split("::")
            .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !is_path {
        return None;
    }
    let mut segments: Vec<&str> = span.split("::").collect();
    if segments[0] == "crate" || segments[0] == krate.lib {
        segments.remove(0);
    }
    let first = *segments.first()?;
    if !top.contains(first) {
        return None;
    }
    let module: Vec<&str> = segments
        .into_iter()
        .take_while(|s| !s.starts_with(|c: char| c.is_ascii_uppercase()))
        .collect();
    Some(module.join("::"))
}

#[test]
fn every_module_is_named_in_its_crates_code_map() -> anyhow::Result<()> {
    let text = architecture()?;
    let mut missing = Vec::new();
    for krate in &CRATES {
        let (_, must_name) = modules(krate)?;
        anyhow::ensure!(
            !must_name.is_empty(),
            "no module found under {}/src",
            krate.name
        );
        let lines = section(&text, krate.name)
            .with_context(|| format!("ARCHITECTURE.md has no `## {}` section", krate.name))?;
        let spans: BTreeSet<&str> = code_spans(&lines).into_iter().collect();
        missing.extend(
            must_name
                .iter()
                .filter(|module| !spans.contains(module.as_str()))
                .map(|module| format!("{}: `{module}`", krate.name)),
        );
    }
    anyhow::ensure!(
        missing.is_empty(),
        "ARCHITECTURE.md does not name these modules in their crate's section:\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

#[test]
fn the_code_map_names_no_module_that_is_gone() -> anyhow::Result<()> {
    let text = architecture()?;
    let mut gone = Vec::new();
    for krate in &CRATES {
        let (all, _) = modules(krate)?;
        let top: BTreeSet<String> = all
            .iter()
            .filter(|path| !path.contains("::"))
            .cloned()
            .collect();
        let lines = section(&text, krate.name)
            .with_context(|| format!("ARCHITECTURE.md has no `## {}` section", krate.name))?;
        // A module's own heading (`### \`name\``) stays after its file
        // goes, and single-word spans are not checked below: headings are.
        for heading in lines.iter().filter_map(|l| l.strip_prefix("### `")) {
            let name = heading.split('`').next().unwrap_or_default();
            if !all.contains(name) {
                gone.push(format!("{}: heading `{name}` (no such module)", krate.name));
            }
        }
        for span in code_spans(&lines) {
            if let Some(module) = named_module(span, krate, &top) {
                if !all.contains(&module) {
                    gone.push(format!("{}: `{span}` (no module `{module}`)", krate.name));
                }
            }
        }
    }
    anyhow::ensure!(
        gone.is_empty(),
        "ARCHITECTURE.md names modules that no longer exist:\n  {}",
        gone.join("\n  ")
    );
    Ok(())
}

#[test]
fn module_paths_follow_the_file_layout() -> anyhow::Result<()> {
    assert_eq!(
        module_of(Path::new("upstream/pool.rs")),
        ("upstream::pool".into(), true)
    );
    assert_eq!(
        module_of(Path::new("authn/ldap/mod.rs")),
        ("authn::ldap".into(), true)
    );
    assert_eq!(module_of(Path::new("lib.rs")), ("lib".into(), false));
    assert!(
        !module_of(Path::new("upstream/pool_tests.rs")).1,
        "a file named for tests is test-only"
    );
    assert!(!module_of(Path::new("tunnel/tests/mod.rs")).1);
    assert!(!module_of(Path::new("test_tls.rs")).1);
    let core = &CRATES[0];
    let top: BTreeSet<String> = ["credential", "upstream"].map(String::from).into();
    assert_eq!(
        named_module("credential::Secret", core, &top),
        Some("credential".into())
    );
    assert_eq!(
        named_module("proxy_core::upstream::pool", core, &top),
        Some("upstream::pool".into())
    );
    assert_eq!(named_module("Credential::from_parts", core, &top), None);
    assert_eq!(named_module("upstream", core, &top), None);
    Ok(())
}

// ---------------------------------------------------------------------------
// No circles between modules.
//
// A module imports another when its code names an item of it by path: a
// `use` (brace groups expanded) or a path written in the code, starting
// with `crate::`, `super::`, `self::`, or the name of one of the module's
// own children. The path is followed to the deepest module that has a
// file; that module is imported. Only two things are not imports: a
// module declaring its children (`mod x;`), and a module re-exporting its
// own descendants' items (`pub use x::Y;`, its facade). Calling into a
// child, or a plain `use` of it, is an import like any other. A file
// included with `#[path = "…"] mod name;` is the module `name` where it is
// declared. Comments, string literals and `#[cfg(test)] mod … { … }`
// blocks are left out, as are test-only files and `main.rs`. The import
// graph of each crate must have no cycle. (Methods called on a value are
// not paths: a dependency only through them is not seen.)
// ---------------------------------------------------------------------------

/// `source` with comments and the insides of string and character
/// literals blanked, so that only code is left to read paths from.
fn code_only(source: &str) -> String {
    code_mask(source).into_iter().collect()
}

/// `code` without its `#[cfg(test)] mod name { … }` blocks.
fn without_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let words: Vec<&str> = after.split_whitespace().take(3).collect();
        let is_inline_mod = match words.as_slice() {
            ["mod", _, ..] | ["pub", "mod", ..] | ["pub(crate)", "mod", ..] => {
                let head_end = after.find(['{', ';']).unwrap_or(after.len());
                after[head_end..].starts_with('{')
            }
            _ => false,
        };
        if !is_inline_mod {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let open = after.find('{').unwrap_or(after.len());
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The paths a `use` tree names (`a::{b, c::{d, e as f}}` → `a::b`,
/// `a::c::d`, `a::c::e`).
fn use_paths(tree: &str) -> Vec<String> {
    fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
        let mut depth = 0usize;
        let mut start = 0;
        let mut items = Vec::new();
        for (k, ch) in tree.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    items.push(&tree[start..k]);
                    start = k + 1;
                }
                _ => {}
            }
        }
        items.push(&tree[start..]);
        for item in items.into_iter().filter(|i| !i.is_empty()) {
            match item.split_once('{') {
                Some((head, inner)) => {
                    let inner = inner.rsplit_once('}').map_or(inner, |(i, _)| i);
                    expand(inner, &format!("{prefix}{head}"), out);
                }
                None => {
                    let item = item.split(" as ").next().unwrap_or(item);
                    out.push(format!("{prefix}{item}"));
                }
            }
        }
    }
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let tree = tree
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" ::", "::");
    let tree = tree
        .replace("{ ", "{")
        .replace(" }", "}")
        .replace(", ", ",");
    let mut out = Vec::new();
    expand(&tree, "", &mut out);
    out
}

/// Every `a::b::c` path written in `code` (identifiers joined by `::`), and
/// the paths of its `use` items; each with whether it is a re-export (a
/// `pub use`, `pub(crate) use`, … item).
fn paths_in(code: &str) -> Vec<(String, bool)> {
    let mut paths = Vec::new();
    let mut uses = Vec::new();
    let mut rest = code;
    let mut offset = 0;
    while let Some(at) = rest.find("use ") {
        let before = &code[..offset + at];
        let before_ok = before
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let after = &rest[at + 4..];
        if before_ok {
            if let Some(end) = after.find(';') {
                if !after[..end].contains(['(', '=', '"']) {
                    let head = before.trim_end();
                    let reexport = head.ends_with("pub")
                        || (head.ends_with(')') && {
                            let open = head.rfind('(').unwrap_or(0);
                            head[..open].trim_end().ends_with("pub")
                        });
                    let statement = offset + at..offset + at + 4 + end;
                    paths.extend(use_paths(&after[..end]).into_iter().map(|p| (p, reexport)));
                    uses.push(statement);
                }
            }
        }
        offset += at + 4;
        rest = after;
    }
    // The paths written in the code, `use` items left out (read above).
    let mut code_only = code.to_owned();
    for range in uses.iter().rev() {
        code_only.replace_range(range.clone(), &" ".repeat(range.len()));
    }
    let chars: Vec<char> = code_only.chars().collect();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        if is_ident(chars[i]) && (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            let mut j = i;
            let mut path = String::new();
            loop {
                let start = j;
                while j < chars.len() && is_ident(chars[j]) {
                    j += 1;
                }
                path.extend(&chars[start..j]);
                if chars.get(j) == Some(&':')
                    && chars.get(j + 1) == Some(&':')
                    && chars.get(j + 2).is_some_and(|&c| is_ident(c))
                {
                    path.push_str("::");
                    j += 2;
                } else {
                    break;
                }
            }
            if path.contains("::") {
                paths.push((path, false));
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    paths
}

/// The module `path` (written in module `from`) leads to, when it is one
/// of `modules` other than `from`, and, for a re-export, not one of
/// `from`'s descendants.
fn imported(path: &str, from: &str, modules: &BTreeSet<String>, reexport: bool) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if from == "lib" {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let module = |parts: &[&str]| {
        if parts.is_empty() {
            "lib".to_owned()
        } else {
            parts.join("::")
        }
    };
    match segments[0] {
        "crate" => {
            base.clear();
            segments.remove(0);
        }
        "super" | "self" => {
            while let Some(first) = segments.first().copied() {
                match first {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                segments.remove(0);
            }
        }
        first => {
            let mut child = base.clone();
            child.push(first);
            if !modules.contains(&module(&child)) {
                return None; // another crate, or a local name
            }
        }
    }
    base.extend(segments);
    let target = (0..=base.len())
        .rev()
        .map(|n| module(&base[..n]))
        .find(|candidate| modules.contains(candidate))?;
    let descendant = from == "lib" || target.starts_with(&format!("{from}::"));
    (target != from && !(reexport && descendant)).then_some(target)
}

/// The files included with `#[path = "…"] mod name;` in `text` (the file
/// at `file`, relative to `src`, module `module`): each such file's path
/// relative to `src`, with the module it is. Read line by line: the
/// attribute on a line of its own, the `mod` on one of the next lines.
fn path_modules(text: &str, file: &Path, module: &str) -> Vec<(PathBuf, String)> {
    let dir = file.parent().unwrap_or(Path::new(""));
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(literal) = line
            .strip_prefix("#[path = \"")
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let declared = lines[i + 1..]
            .iter()
            .take(3)
            .find_map(|l| l.split_once("mod ").map(|(_, name)| name));
        if let Some(name) = declared {
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let module = if module == "lib" {
                name
            } else {
                format!("{module}::{name}")
            };
            found.push((dir.join(literal), module));
        }
    }
    found
}

/// Each module's imports, for the crate under `src` (test-only files and
/// `main.rs` left out).
fn import_graph(
    src: &Path,
) -> anyhow::Result<std::collections::BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(src, src, &mut files)?;
    let mut code_of = Vec::new();
    let mut included = std::collections::BTreeMap::new();
    for file in files {
        let (module, must_name) = module_of(&file);
        let text = std::fs::read_to_string(src.join(&file))
            .with_context(|| format!("reading {}", file.display()))?;
        included.extend(path_modules(&text, &file, &module));
        let code = without_test_modules(&code_only(&text));
        if must_name || module == "lib" {
            code_of.push((file, module, code));
        }
    }
    let mut sources = Vec::new();
    for (file, module, code) in code_of {
        let module = included.get(&file).cloned().unwrap_or(module);
        sources.push((module, code));
    }
    let modules: BTreeSet<String> = sources.iter().map(|(m, _)| m.clone()).collect();
    let mut graph: std::collections::BTreeMap<String, BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for (module, code) in &sources {
        let targets = paths_in(code)
            .iter()
            .filter_map(|(path, reexport)| imported(path, module, &modules, *reexport))
            .collect::<Vec<_>>();
        graph.entry(module.clone()).or_default().extend(targets);
    }
    Ok(graph)
}

/// The cycles of `graph`: its strongly connected parts of more than one
/// module, each sorted.
fn cycles(graph: &std::collections::BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iterative.
    let names: Vec<&String> = graph.keys().collect();
    let at: std::collections::HashMap<&String, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let edges: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            graph[*n]
                .iter()
                .filter_map(|t| at.get(t).copied())
                .collect()
        })
        .collect();
    let (mut index, mut low) = (vec![usize::MAX; names.len()], vec![0; names.len()]);
    let (mut stack, mut on_stack, mut next, mut found) =
        (Vec::new(), vec![false; names.len()], 0, Vec::new());
    for root in 0..names.len() {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some((v, edge)) = work.pop() {
            if edge == 0 {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges[v].get(edge) {
                work.push((v, edge + 1));
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            if low[v] == index[v] {
                let mut part = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    part.push(names[w].clone());
                    if w == v {
                        break;
                    }
                }
                if part.len() > 1 {
                    part.sort();
                    found.push(part);
                }
            }
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
        }
    }
    found
}

#[test]
fn no_module_imports_itself_through_others() -> anyhow::Result<()> {
    let mut found = Vec::new();
    for krate in &CRATES {
        let graph = import_graph(&root().join(krate.name).join("src"))?;
        let edges: usize = graph.values().map(BTreeSet::len).sum();
        if krate.sizeable {
            anyhow::ensure!(graph.len() > 10, "{}: too few modules read", krate.name);
            anyhow::ensure!(edges > graph.len(), "{}: too few imports read", krate.name);
        } else {
            anyhow::ensure!(graph.len() >= 3, "{}: too few modules read", krate.name);
        }
        for cycle in cycles(&graph) {
            let detail: Vec<String> = cycle
                .iter()
                .map(|m| {
                    let inside: Vec<&str> = graph[m]
                        .iter()
                        .filter(|t| cycle.contains(t))
                        .map(String::as_str)
                        .collect();
                    format!("{m} -> {}", inside.join(", "))
                })
                .collect();
            found.push(format!("{}: {}", krate.name, detail.join("; ")));
        }
    }
    anyhow::ensure!(
        found.is_empty(),
        "modules that import each other in a circle:\n  {}",
        found.join("\n  ")
    );
    Ok(())
}

#[test]
fn imports_are_read_as_the_compiler_resolves_them() {
    let modules: BTreeSet<String> = ["lib", "a", "a::b", "a::c", "d"].map(String::from).into();
    let import = |path: &str, from: &str| imported(path, from, &modules, false);
    let reexport = |path: &str, from: &str| imported(path, from, &modules, true);
    // crate, super, self and child paths
    assert_eq!(import("crate::d::X", "a::b"), Some("d".into()));
    assert_eq!(import("super::c::f", "a::b"), Some("a::c".into()));
    assert_eq!(import("super::X", "a::b"), Some("a".into()));
    assert_eq!(import("crate::X", "a"), Some("lib".into()));
    assert_eq!(import("self::X", "a"), None, "itself");
    assert_eq!(import("std::sync::Arc", "a"), None);
    assert_eq!(import("d::X", "a::b"), None, "not a child of a::b");
    // a child or descendant used is imported; re-exported, it is not
    assert_eq!(import("b::f", "a"), Some("a::b".into()));
    assert_eq!(import("crate::a::b::X", "a"), Some("a::b".into()));
    assert_eq!(reexport("b::X", "a"), None);
    assert_eq!(reexport("crate::a::b::X", "a"), None);
    assert_eq!(reexport("crate::d::X", "a"), Some("d".into()));
    // use trees, re-exports, comments and strings
    assert_eq!(
        use_paths("crate::{a::{self, X}, d::Y as Z}"),
        ["crate::a::self", "crate::a::X", "crate::d::Y"]
    );
    let code = code_only(
        "use crate::d; pub use b::X; pub(crate) use c::Y; // crate::a::c\nlet s = \"crate::a::c\"; let c = '\"'; let q = '\\''; f::<'a>(r#\"crate::a\"#, br\"crate::a\\\", b\"crate::a\");",
    );
    let code = without_test_modules(&format!(
        "{code}\n#[cfg(test)]\nmod tests {{ use crate::a; }}\nfn g() {{ crate::d::h(); }}"
    ));
    let paths = paths_in(&code);
    assert!(paths.contains(&("crate::d".to_owned(), false)), "{paths:?}");
    assert!(paths.contains(&("b::X".to_owned(), true)), "{paths:?}");
    assert!(paths.contains(&("c::Y".to_owned(), true)), "{paths:?}");
    assert!(
        paths.contains(&("crate::d::h".to_owned(), false)),
        "code after a test module: {paths:?}"
    );
    assert!(
        !paths.iter().any(|(p, _)| p.starts_with("crate::a")),
        "{paths:?}"
    );
    // a file included with #[path] is the module it is declared as
    assert_eq!(
        path_modules(
            "#[cfg(not(feature = \"x\"))]\n#[path = \"x_off.rs\"]\npub mod x;\n",
            Path::new("a/mod.rs"),
            "a"
        ),
        [(PathBuf::from("a/x_off.rs"), "a::x".to_owned())]
    );
    // a circle is found, and only a circle
    let graph = |edges: &[(&str, &str)]| {
        let mut g: std::collections::BTreeMap<String, BTreeSet<String>> = modules
            .iter()
            .map(|m| (m.clone(), BTreeSet::new()))
            .collect();
        for (from, to) in edges {
            g.get_mut(*from).unwrap().insert((*to).to_owned());
        }
        g
    };
    assert!(cycles(&graph(&[("a::b", "d"), ("d", "a::c")])).is_empty());
    assert_eq!(
        cycles(&graph(&[("a::b", "d"), ("d", "a::c"), ("a::c", "a::b")])),
        [["a::b", "a::c", "d"]]
    );
}

// ---------------------------------------------------------------------------
// Paths fixed at build time. CI keeps its build folder across fresh clones
// and builds again only the crates whose files changed (scripts/
// source-mtimes.py), so a test or bench binary may have been built in a
// clone that is gone: `env!("CARGO_MANIFEST_DIR")` would name that one, and
// cargo does not build again when only that folder changes. A file included
// from outside its package is tracked by its path in that clone too. Code
// finds its package's folder when it runs (`authproxy_tests::package_dir`).
// ---------------------------------------------------------------------------

/// The workspace's packages (its `members`, and `fuzz`, which it leaves
/// out but CI builds), by folder.
fn packages(root: &Path) -> anyhow::Result<Vec<String>> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .context("the workspace's members line")?;
    let list = line.split_once('[').context("members = [...]")?.1;
    let list = list
        .split_once(']')
        .context("members = [...] on one line")?
        .0;
    let mut found: Vec<String> = list
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    found.push("fuzz".to_owned());
    Ok(found)
}

/// Every `.rs` file of the workspace's packages, relative to the root.
fn workspace_rust_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for package in packages(root)? {
        let package = root.join(package);
        for folder in ["src", "tests", "benches", "examples", "fuzz_targets"] {
            let dir = package.join(folder);
            if dir.is_dir() {
                rust_files(root, &dir, &mut files)?;
            }
        }
        if package.join("build.rs").is_file() {
            files.push(package.join("build.rs").strip_prefix(root)?.to_path_buf());
        }
    }
    anyhow::ensure!(
        ["proxy-core/src", "tests/src", "examples/tests"]
            .iter()
            .all(|p| files.iter().any(|f| f.starts_with(p))),
        "the workspace's sources were not found under {}",
        root.display()
    );
    Ok(files)
}

/// The lines of `text` that are not comments, numbered from 1.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line))
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
}

#[test]
fn no_code_names_the_folder_it_was_built_in() -> anyhow::Result<()> {
    let root = root();
    let needle = concat!("env!(", "\"CARGO_MANIFEST_");
    let mut found = Vec::new();
    for file in workspace_rust_files(&root)? {
        let text = std::fs::read_to_string(root.join(&file))?;
        for (n, line) in code_lines(&text) {
            if line.contains(needle) {
                found.push(format!("{}:{n}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "these name the folder they were built in; find it when running (authproxy_tests::package_dir): {found:?}"
    );
    Ok(())
}

/// `source`'s characters with those of comments and of the insides of
/// string and character literals blanked (line ends kept), so that a
/// character's place is the same in both.
fn code_mask(source: &str) -> Vec<char> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = chars.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in out.iter_mut().take(to.min(chars.len())).skip(from) {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        let word_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c == '/' && next == Some('/') {
            let end = chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut j, mut depth) = (i, 0);
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && (!word_before
                || (i >= 1
                    && matches!(chars[i - 1], 'b' | 'c')
                    && !(i >= 2 && (chars[i - 2].is_alphanumeric() || chars[i - 2] == '_'))))
        {
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            let hashes = j - i - 1;
            if chars.get(j) != Some(&'"') {
                i += 1;
                continue;
            }
            let open = j + 1;
            let mut k = open;
            while k < chars.len()
                && !(chars[k] == '"' && (0..hashes).all(|h| chars.get(k + 1 + h) == Some(&'#')))
            {
                k += 1;
            }
            blank(&mut out, open, k);
            i = k + 1 + hashes;
        } else if c == '"' {
            let mut k = i + 1;
            while k < chars.len() && chars[k] != '"' {
                k += if chars[k] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, k);
            i = k + 1;
        } else if c == '\'' {
            let close = if next == Some('\\') {
                chars
                    .get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&c| c == '\''))
                    .map(|p| i + 3 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(end) => {
                    blank(&mut out, i + 1, end);
                    i = end + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The files `text` names to the compiler (`include!`, `include_str!`,
/// `include_bytes!`, `#[path = ...]`) in its code, each with its line; an
/// argument that is not a plain string literal is named as an error, since
/// where it leads cannot be read here.
fn named_files(text: &str) -> Vec<(usize, Result<String, String>)> {
    let chars: Vec<char> = text.chars().collect();
    let code = code_mask(text);
    let mut found = Vec::new();
    for start in ["include!", "include_str!", "include_bytes!", "#[path"] {
        let pattern: Vec<char> = start.chars().collect();
        for at in 0..code.len().saturating_sub(pattern.len() - 1) {
            if code[at..at + pattern.len()] != pattern[..] {
                continue;
            }
            // A longer name that ends in this one (`my_include!`) is not it.
            if at > 0 && (code[at - 1].is_alphanumeric() || code[at - 1] == '_') {
                continue;
            }
            let line = chars[..at].iter().filter(|&&c| c == '\n').count() + 1;
            let rest: String = chars[at + pattern.len()..].iter().collect();
            let rest = rest.trim_start();
            let rest = if start == "#[path" {
                rest.strip_prefix('=')
            } else {
                rest.strip_prefix(['(', '[', '{'])
            }
            .map(str::trim_start);
            found.push((
                line,
                rest.and_then(string_literal).ok_or_else(|| {
                    let shown: String = chars[at..].iter().take(60).collect();
                    format!("not a plain string literal: {shown}")
                }),
            ));
        }
    }
    found
}

/// The string literal `text` starts with (`"…"` or `r#"…"#`), unescaped as
/// far as a path needs.
fn string_literal(text: &str) -> Option<String> {
    if let Some(raw) = text.strip_prefix('r') {
        let hashes = raw.len() - raw.trim_start_matches('#').len();
        let body = raw[hashes..].strip_prefix('"')?;
        let end = body.find(&format!("\"{}", "#".repeat(hashes)))?;
        return Some(body[..end].to_owned());
    }
    let body = text.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

#[test]
fn the_file_reader_reads_every_form_it_may_meet() {
    let text = "let a = include_str!(\"x/a.txt\"); // include_str!(\"../c\")\n// include_str!(\"../gone\")\nlet b = include_bytes! (\n    r#\"b.bin\"#,\n);\n#[path = \"c.rs\"]\nmod c;\nlet d = include_str!(concat!(\"..\", \"/d\"));\nlet e = my_include!(\"e\");\nlet f = \"include!(\\\"f\\\")\"; /* include!(\"g\") */\n";
    let found = named_files(text);
    let mut found: Vec<(usize, Result<&str, bool>)> = found
        .iter()
        .map(|(n, r)| (*n, r.as_deref().map_err(|_| true)))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            (1, Ok("x/a.txt")),
            (3, Ok("b.bin")),
            (6, Ok("c.rs")),
            (8, Err(true))
        ]
    );
}

#[test]
fn no_code_includes_a_file_from_outside_its_package() -> anyhow::Result<()> {
    let root = root().canonicalize()?;
    let mut seen = 0;
    let mut found = Vec::new();
    for file in workspace_rust_files(&root)? {
        let package = root.join(file.components().next().context("a package folder")?);
        let text = std::fs::read_to_string(root.join(&file))?;
        let folder = root.join(&file);
        let folder = folder.parent().context("a file's folder")?;
        for (n, named) in named_files(&text) {
            seen += 1;
            let literal = match named {
                Ok(literal) => literal,
                Err(why) => {
                    found.push(format!("{}:{n}: {why}", file.display()));
                    continue;
                }
            };
            let target = folder
                .join(&literal)
                .canonicalize()
                .with_context(|| format!("{}:{n} names {literal}", file.display()))?;
            if !target.starts_with(&package) {
                found.push(format!("{}:{n} ({literal})", file.display()));
            }
        }
    }
    assert!(
        seen > 0,
        "no included file was read: the check reads nothing"
    );
    assert!(
        found.is_empty(),
        "these name a file from outside their package (read it when running), or a path that cannot be read here: {found:?}"
    );
    Ok(())
}
