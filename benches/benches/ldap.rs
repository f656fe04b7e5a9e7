//! LDAP login cost: a cached login (no directory traffic) and an uncached
//! bind-search-bind against a real slapd on loopback (needs slapd installed:
//! `scripts/test.sh` installs it).
//!
//! Run: `cargo bench -p authproxy-benches --bench ldap`. Goal: cached ≤ 1 µs.

use std::time::Duration;

use authproxy_tests::pki::TestPki;
use authproxy_tests::slapd::{Slapd, SERVICE_DN, SERVICE_PASSWORD};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use proxy_core::authn::ldap::LdapConfig;
use proxy_core::authn::LdapAuthenticator;
use proxy_core::credential::Secret;
use proxy_core::{Authenticator, Credential};

fn authenticator(pki: &TestPki, slapd: &Slapd, cache_ttl: &str) -> LdapAuthenticator {
    let config: LdapConfig = serde_json::from_value(serde_json::json!({
        "url": format!("ldaps://127.0.0.1:{}", slapd.ldaps_port),
        "bindDN": SERVICE_DN,
        "bindPasswordFile": "unused",
        "userSearch": {"baseDN": "ou=people,dc=example,dc=org"},
        "groupSearch": {"baseDN": "ou=groups,dc=example,dc=org"},
        "cacheTTL": cache_ttl,
        "throttle": {"maxFailuresPerUser": 1000000},
    }))
    .expect("config");
    let roots = proxy_core::tls::root_store(pki.ca_pem().as_bytes(), "ca").expect("roots");
    let tls = proxy_core::tls::client_config(roots, None, &[]).expect("tls");
    LdapAuthenticator::new(&config, tls, Secret::new(SERVICE_PASSWORD))
}

fn ldap(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = TestPki::new().expect("pki");
    let slapd = runtime
        .block_on(Slapd::start(&pki))
        .expect("slapd (install it with scripts/test.sh)");
    let alice = Credential::Basic {
        username: "alice".into(),
        password: Secret::new("alice-password"),
        client: None,
    };

    let cached = authenticator(&pki, &slapd, "10m");
    let login = |a: &LdapAuthenticator| {
        runtime
            .block_on(a.authenticate(black_box(&alice)))
            .expect("login")
            .expect("alice")
    };
    assert_eq!(login(&cached).user().groups, ["devs"]);
    c.bench_function("ldap_login_cached", |b| b.iter(|| login(&cached)));

    let uncached = authenticator(&pki, &slapd, "1ns");
    c.bench_function("ldap_login_uncached_loopback_slapd", |b| {
        b.iter(|| login(&uncached))
    });
    drop(slapd);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500)).sample_size(30);
    targets = ldap
}
criterion_main!(benches);
