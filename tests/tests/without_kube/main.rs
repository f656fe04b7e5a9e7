//! The end-to-end tests that need no kube-apiserver (the API-server double,
//! the OIDC provider, curl) and time nothing: one test binary, so one link
//! for all of them. Each module is one subject; each test starts the servers
//! it needs on ports of its own.
//!
//! `scripts/suite.sh` runs this binary with more test threads than cores
//! (most of its tests wait on the OIDC provider or curl).

// suite.sh: --test-threads 6

mod dashboards;
mod double;
mod double_only;
mod oidc_hardening;
mod refusals;

/// Every file here is a module of this binary (a file left out would never
/// run), and none starts kube-apiserver (such a test belongs with the
/// others that do).
#[test]
fn every_file_here_runs_and_none_starts_kube() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/without_kube");
    let main = std::fs::read_to_string(dir.join("main.rs")).expect("main.rs");
    let mut modules = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/without_kube") {
        let path = entry.expect("entry").path();
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("name");
        if stem == "main" {
            continue;
        }
        modules += 1;
        assert!(
            main.contains(&format!("\nmod {stem};\n")),
            "{} is not a module of this binary",
            path.display()
        );
        let text = std::fs::read_to_string(&path).expect("module");
        for kube in ["kube::", "kube(", "kube_with", "KubeEnv", "streaming::"] {
            assert!(
                !text.contains(kube),
                "{} uses kube-apiserver ({kube})",
                path.display()
            );
        }
    }
    assert_eq!(modules, 5, "a module added or removed: list it in main.rs");
}
