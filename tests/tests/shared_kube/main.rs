//! The end-to-end tests that share one kube-apiserver with nothing but the
//! common set-up: no flags of their own, no RBAC of their own (but for the
//! quick start's `authproxy` objects, which the README's own commands
//! create and nothing else here names), no webhook, no kubelet. They time
//! nothing of kube-apiserver's own (its latency with the others' requests
//! beside would not be its own), nor send hundreds of requests against a
//! deadline (the audit corpus keeps a binary of its own). One test binary,
//! so one kube-apiserver and one link for all of them. Each module is one
//! subject; its tests mark what they create with names of their own, as
//! tests of one binary always have.
//!
//! `scripts/suite.sh` runs this binary with more test threads than cores
//! (most of its tests wait on kube-apiserver, slapd or kubectl).

// suite.sh: --test-threads 4

mod double_vs_kube;
mod ldap;
mod oidc_cel;
mod oidc_distributed;
mod oidc_issuers;
mod pipeline;
mod quickstart;
mod reload;
mod secrets_in_logs;
mod upstream_health;

/// What makes sharing safe stays true: no module here brings flags, RBAC,
/// a webhook or the kubelet of its own (such a test belongs in a binary of
/// its own, with a kube-apiserver of its own).
#[test]
fn no_module_here_changes_the_shared_kube_apiserver() -> anyhow::Result<()> {
    let modules = authproxy_tests::binary_modules("shared_kube")?;
    for (path, text) in &modules {
        for call in [
            "kube_with(",
            "apply_rbac(",
            "kubelet(",
            "running_pod(",
            "pod_dir(",
            "webhook_addr(",
            "admin(",
            "admin_async(",
            "kind: Role",
            "kind: ClusterRole",
        ] {
            assert!(
                !text.contains(call),
                "{} calls {call}: it changes the kube-apiserver the other modules share",
                path.display()
            );
        }
    }
    assert_eq!(
        modules.len(),
        10,
        "a module added or removed: list it in main.rs"
    );
    Ok(())
}
