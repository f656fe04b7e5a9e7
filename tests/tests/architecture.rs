//! ARCHITECTURE.md's code map names every module of proxy-core and
//! proxy-bin, and no module that is gone. Needs no running service.
//!
//! The modules are the `.rs` files under `proxy-core/src` and
//! `proxy-bin/src`, each named by its path relative to `src` with `::`
//! (`a/b.rs` and `a/b/mod.rs` are both `a::b`). Not counted: `lib.rs`,
//! `main.rs`, and test-only files: any whose path has a component
//! containing `tests` or equal to `test_tls`.
//!
//! The rule for "under the right crate's section": a crate's section runs
//! from its heading line (`## proxy-core`, `## proxy-bin`) to the next
//! heading of level one or two (a line starting `# ` or `## `); `###`
//! headings stay inside it. A module is named when its path is a whole
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
}

const CRATES: [Crate; 2] = [
    Crate {
        name: "proxy-core",
        lib: "proxy_core",
    },
    Crate {
        name: "proxy-bin",
        lib: "authproxy",
    },
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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
