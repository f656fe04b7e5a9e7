//! Per-request cost of the proxy's own work on a cache hit: parsing the
//! credential, authenticating a static token, and rewriting the headers.
//!
//! Run: `cargo bench -p authproxy-benches --bench hot_path`. Target: the whole
//! `per_request` path at most 2 µs.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue};
use proxy_core::authn::StaticTokens;
use proxy_core::impersonate::{rewrite, ImpersonationHeaders};
use proxy_core::{Authenticator, Chain, Credential, UserInfo};

fn token_table() -> StaticTokens {
    let mut csv = String::new();
    for i in 0..1000 {
        csv.push_str(&format!(
            "token-{i:04}-abcdefghijklmnopqrstuvwxyz,user{i},{i},\"devs,ops\"\n"
        ));
    }
    StaticTokens::from_csv(&csv, "bench").expect("valid table")
}

/// The headers kubectl sends for `get pods`, plus a smuggled impersonation.
fn kubectl_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "accept",
        HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
    );
    h.insert(
        "user-agent",
        HeaderValue::from_static("kubectl/v1.30.0 (linux/amd64) kubernetes/abcdef"),
    );
    h.insert(
        "authorization",
        HeaderValue::from_static("Bearer token-0500-abcdefghijklmnopqrstuvwxyz"),
    );
    h.insert("host", HeaderValue::from_static("127.0.0.1:8443"));
    h.insert("accept-encoding", HeaderValue::from_static("gzip"));
    h.insert("kubectl-command", HeaderValue::from_static("kubectl get"));
    h.insert(
        "kubectl-session",
        HeaderValue::from_static("0b7e7d3e-6a3c-4f8f-9a55-1234567890ab"),
    );
    h.insert("impersonate-user", HeaderValue::from_static("system:admin"));
    h
}

fn user() -> UserInfo {
    let mut extra = std::collections::BTreeMap::new();
    extra.insert("acme.com/project".to_string(), vec!["p1".to_string()]);
    UserInfo {
        username: "alice".into(),
        uid: Some("1001".into()),
        groups: vec!["devs".into(), "ops".into()],
        extra,
    }
}

fn benches(c: &mut Criterion) {
    let headers = kubectl_headers();
    let extensions = http::Extensions::new();
    c.bench_function("credential_parse", |b| {
        b.iter(|| Credential::from_parts(black_box(&headers), &extensions))
    });

    let tokens = token_table();
    c.bench_function("static_token_lookup_hit_1000", |b| {
        b.iter(|| tokens.lookup(black_box("token-0500-abcdefghijklmnopqrstuvwxyz")))
    });

    let impersonation = ImpersonationHeaders::for_user(&user()).expect("valid user");
    c.bench_function("header_rewrite", |b| {
        b.iter_batched_ref(
            kubectl_headers,
            |h| rewrite(h, black_box(&impersonation)),
            criterion::BatchSize::SmallInput,
        )
    });

    let chain = Chain::new(vec![Arc::new(token_table()) as Arc<dyn Authenticator>]);
    c.bench_function("per_request", |b| {
        b.iter_batched_ref(
            kubectl_headers,
            |h| {
                let credential = Credential::from_parts(h, &extensions)
                    .expect("parses")
                    .expect("present");
                let identity = chain
                    .authenticate(&credential)
                    .now_or_never()
                    .expect("static tokens answer at once")
                    .expect("no error")
                    .expect("known token");
                let headers = identity.impersonation_headers().expect("valid identity");
                rewrite(h, headers);
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// OIDC verification without a cache (RS256 and ES256) and the cache hit in
/// front of it. Keys are preloaded from benches/fixtures (bench-only keys).
fn oidc(c: &mut Criterion) {
    use proxy_core::authn::cache::CacheSettings;
    use proxy_core::authn::oidc::{JwtAuthenticator, OidcAuthenticator};
    use proxy_core::authn::CachedAuthenticator;
    use proxy_core::credential::Secret;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    // The issuer is never reached (loopback discard port); keys are preloaded.
    let issuer = "https://127.0.0.1:9";
    let jwt: JwtAuthenticator = serde_json::from_value(serde_json::json!({
        "issuer": {"url": issuer, "audiences": ["bench"]},
        "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"}},
        "signingAlgorithms": ["RS256", "ES256"],
    }))
    .expect("config");
    let authenticator =
        OidcAuthenticator::start(jwt.settings("bench").expect("settings")).expect("authenticator");
    let fixtures = authproxy_benches::process::fixtures_dir().expect("fixtures");
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("jwks.json")).expect("jwks"))
            .expect("jwks json");
    authenticator.keys().preload(&jwks).expect("preload");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({"iss": issuer, "aud": "bench", "sub": "u1", "email": "alice@example.com",
        "email_verified": true, "groups": ["devs", "ops"], "iat": now, "exp": now + 3600});
    let sign = |alg: jsonwebtoken::Algorithm, kid: &str, key: jsonwebtoken::EncodingKey| {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.into());
        Credential::Bearer(Secret::new(
            jsonwebtoken::encode(&header, &claims, &key).expect("sign"),
        ))
    };
    let pem = |name: &str| std::fs::read(fixtures.join(name)).expect("key");
    let rs256 = sign(
        jsonwebtoken::Algorithm::RS256,
        "rsa-bench",
        jsonwebtoken::EncodingKey::from_rsa_pem(&pem("rs256-bench-only.pem")).expect("rsa"),
    );
    let es256 = sign(
        jsonwebtoken::Algorithm::ES256,
        "ec-bench",
        jsonwebtoken::EncodingKey::from_ec_pem(&pem("es256-bench-only.pem")).expect("ec"),
    );

    let verify = |credential: &Credential| {
        authenticator
            .authenticate(credential)
            .now_or_never()
            .expect("keys are loaded: no waiting")
            .expect("valid token")
            .expect("claimed")
    };
    assert_eq!(verify(&rs256).user().username, "alice@example.com");
    c.bench_function("oidc_verify_rs256_cold", |b| {
        b.iter(|| verify(black_box(&rs256)))
    });
    c.bench_function("oidc_verify_es256_cold", |b| {
        b.iter(|| verify(black_box(&es256)))
    });

    // The same RS256 token through an issuer whose username, groups and
    // extra come from CEL expressions (compiled once, at load).
    let cel_jwt: JwtAuthenticator = serde_json::from_value(serde_json::json!({
        "issuer": {"url": issuer, "audiences": ["bench"]},
        "claimMappings": {
            "username": {"expression": "claims.email_verified ? claims.email : ''"},
            "groups": {"expression": "claims.groups.map(g, 'oidc:' + g)"},
            "extra": [{"key": "example.com/login", "valueExpression": "claims.sub"}],
        },
        "signingAlgorithms": ["RS256"],
    }))
    .expect("cel config");
    let cel_authenticator =
        OidcAuthenticator::start(cel_jwt.settings("bench").expect("cel settings"))
            .expect("cel authenticator");
    cel_authenticator.keys().preload(&jwks).expect("preload");
    let verify_cel = |credential: &Credential| {
        cel_authenticator
            .authenticate(credential)
            .now_or_never()
            .expect("keys are loaded: no waiting")
            .expect("valid token")
            .expect("claimed")
    };
    let cel_user = verify_cel(&rs256);
    assert_eq!(cel_user.user().username, "alice@example.com");
    assert_eq!(cel_user.user().groups, ["oidc:devs", "oidc:ops"]);
    c.bench_function("oidc_verify_rs256_cold_cel3", |b| {
        b.iter(|| verify_cel(black_box(&rs256)))
    });

    let cached = CachedAuthenticator::new(authenticator.clone(), CacheSettings::default());
    // Polled once, as the proxy's request task does: a hit completes at once
    // (no runtime entered per call, which would cost more than the hit).
    let hit = |credential: &Credential| {
        futures_util::FutureExt::now_or_never(cached.authenticate(credential))
            .expect("a cache hit completes without waiting")
            .expect("valid token")
            .expect("claimed")
    };
    hit(&rs256);
    c.bench_function("oidc_cache_hit", |b| b.iter(|| hit(black_box(&rs256))));

    // A TokenReview as kube-apiserver sends it, for a token in the cache:
    // parse the body, review through the chain, serialize the answer.
    let Credential::Bearer(token) = &rs256 else {
        unreachable!("bearer")
    };
    let body = serde_json::to_vec(&serde_json::json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null}, "spec": {"token": token.expose()}, "status": {"user": {}}}))
    .expect("body");
    let chain = proxy_core::Chain::new(vec![Arc::new(CachedAuthenticator::new(
        authenticator.clone(),
        CacheSettings::default(),
    ))]);
    let review = |body: &[u8]| {
        let request = proxy_core::tokenreview::parse(body).expect("TokenReview");
        let answer = runtime.block_on(proxy_core::tokenreview::review(&chain, &[], request));
        assert!(answer.status.authenticated);
        serde_json::to_vec(&answer).expect("json")
    };
    review(&body);
    c.bench_function("tokenreview_cached", |b| {
        b.iter(|| review(black_box(&body)))
    });
}

/// The whole tower stack (observe → authenticate → impersonate) around an
/// inner service that answers at once, with observation off (audit IDs
/// only), with metrics, and with metrics and an audit log to a file. The
/// differences are the per-request cost of metrics and of queueing an audit
/// event (the writer thread serializes and writes off the request path).
fn observed_stack(c: &mut Criterion) {
    use proxy_core::observe::audit::{AuditLog, Destination, Policy};
    use proxy_core::observe::{metrics::Metrics, ObserveLayer};
    use proxy_core::{AuthnLayer, ImpersonateLayer, ProxyBody};
    use tower_layer::Layer;
    use tower_service::Service;

    let dir = tempfile::tempdir().expect("tempdir");
    let inner = tower::service_fn(|_req: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(ProxyBody::empty()))
    });
    let request = || {
        let mut req = http::Request::builder()
            .uri("/api/v1/namespaces/default/pods?limit=500")
            .body(())
            .expect("request");
        *req.headers_mut() = kubectl_headers();
        req.extensions_mut()
            .insert(proxy_core::credential::ClientAddr([127, 0, 0, 1].into()));
        req
    };
    type MakeLayer<'a> = Box<dyn Fn() -> ObserveLayer + 'a>;
    let variants: [(&str, MakeLayer); 3] = [
        ("stack_observe_off", Box::new(ObserveLayer::new)),
        (
            "stack_metrics_on",
            Box::new(|| ObserveLayer::new().with_metrics(Metrics::new())),
        ),
        (
            "stack_metrics_and_audit_file",
            Box::new(|| {
                let audit = AuditLog::start(
                    Destination::File {
                        path: dir.path().join("audit.log"),
                        max_bytes: 100 << 20,
                        max_backups: 1,
                    },
                    Policy {
                        log_read_only: true,
                        ..Policy::default()
                    },
                    10_000,
                )
                .expect("audit log");
                ObserveLayer::new()
                    .with_metrics(Metrics::new())
                    .with_audit(audit)
            }),
        ),
    ];
    for (name, layer) in variants {
        let layer = layer();
        let metrics = Metrics::new();
        let chain = metrics.instrument_chain(&Chain::new(vec![
            Arc::new(token_table()) as Arc<dyn Authenticator>
        ]));
        let mut stack =
            layer.layer(AuthnLayer::new(chain).layer(ImpersonateLayer::new().layer(inner)));
        c.bench_function(name, |b| {
            b.iter_batched(
                request,
                |req| {
                    stack
                        .call(req)
                        .now_or_never()
                        .expect("answers at once")
                        .expect("infallible")
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = benches, oidc, observed_stack
}
criterion_main!(hot_path);
