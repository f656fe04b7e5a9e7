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
fn every_file_here_runs_and_none_starts_kube() -> anyhow::Result<()> {
    let modules = authproxy_tests::binary_modules("without_kube")?;
    for (path, text) in &modules {
        for kube in ["kube::", "kube(", "kube_with", "KubeEnv", "streaming::"] {
            assert!(
                !text.contains(kube),
                "{} uses kube-apiserver ({kube})",
                path.display()
            );
        }
    }
    assert_eq!(
        modules.len(),
        5,
        "a module added or removed: list it in main.rs"
    );
    Ok(())
}
