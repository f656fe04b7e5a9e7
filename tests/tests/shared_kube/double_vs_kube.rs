//! The API-server double answers exactly as the real kube-apiserver does for
//! everything the double is used for: the same table of requests goes to both,
//! and status code, reason and message must agree, so the double cannot drift.

use authproxy_tests::double::{self, DoubleConfig};
use authproxy_tests::kube::{kube, PROXY_SERVICE_ACCOUNT};
use authproxy_tests::{curl_with_ca, pki, TestPki, UserInfo};
use serde_json::Value;

/// One request of the table.
struct Case {
    what: &'static str,
    /// "proxy" (may impersonate), "nobody" (may do nothing), or a literal token.
    token: &'static str,
    headers: &'static [&'static str],
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
}

const REVIEW: &str = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
const PODS: &str = "/api/v1/namespaces/default/pods";

const CASES: &[Case] = &[
    Case {
        what: "unknown token",
        token: "not-a-token",
        headers: &[],
        method: "GET",
        path: PODS,
        body: None,
    },
    Case {
        what: "no impersonation right",
        token: "nobody",
        headers: &["Impersonate-User: alice"],
        method: "GET",
        path: PODS,
        body: None,
    },
    Case {
        what: "no impersonation right for a group",
        token: "nobody",
        headers: &["Impersonate-User: alice", "Impersonate-Group: devs"],
        method: "GET",
        path: PODS,
        body: None,
    },
    Case {
        what: "group without user",
        token: "proxy",
        headers: &["Impersonate-Group: devs"],
        method: "GET",
        path: PODS,
        body: None,
    },
    Case {
        what: "uid without user",
        token: "proxy",
        headers: &["Impersonate-Uid: 1001"],
        method: "GET",
        path: PODS,
        body: None,
    },
    Case {
        what: "extra without user",
        token: "proxy",
        headers: &["Impersonate-Extra-Scopes: view"],
        method: "GET",
        path: PODS,
        body: None,
    },
    Case {
        what: "allowed list",
        token: "proxy",
        headers: &[
            "Impersonate-User: alice",
            "Impersonate-Group: devs",
            "Impersonate-Uid: 1001",
        ],
        method: "GET",
        path: PODS,
        body: None,
    },
    Case {
        what: "forbidden list",
        token: "proxy",
        headers: &["Impersonate-User: bob"],
        method: "GET",
        path: PODS,
        body: None,
    },
    Case {
        what: "forbidden namespace",
        token: "proxy",
        headers: &["Impersonate-User: alice", "Impersonate-Group: devs"],
        method: "GET",
        path: "/api/v1/namespaces/kube-system/pods",
        body: None,
    },
    Case {
        what: "forbidden create",
        token: "proxy",
        headers: &["Impersonate-User: alice", "Impersonate-Group: devs"],
        method: "POST",
        path: PODS,
        body: Some(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#),
    },
    Case {
        what: "forbidden secrets",
        token: "proxy",
        headers: &["Impersonate-User: alice", "Impersonate-Group: devs"],
        method: "GET",
        path: "/api/v1/namespaces/default/secrets",
        body: None,
    },
    Case {
        what: "forbidden cluster scope",
        token: "proxy",
        headers: &["Impersonate-User: alice"],
        method: "GET",
        path: "/api/v1/nodes",
        body: None,
    },
    Case {
        what: "self review",
        token: "proxy",
        headers: &[
            "Impersonate-User: alice",
            "Impersonate-Group: devs",
            "Impersonate-Uid: 1001",
            "Impersonate-Extra-Acme.com%2Fproject: p1",
            "Content-Type: application/json",
        ],
        method: "POST",
        path: "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body: Some(REVIEW),
    },
    Case {
        what: "service account target",
        token: "proxy",
        headers: &[
            "Impersonate-User: system:serviceaccount:default:builder",
            "Content-Type: application/json",
        ],
        method: "POST",
        path: "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body: Some(REVIEW),
    },
];

/// (code, reason, message, userInfo of a review) of one answer.
fn summary(code: u16, body: &str) -> (u16, Value, Value, Value) {
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    (
        code,
        json["reason"].clone(),
        json["message"].clone(),
        json["status"]["userInfo"].clone(),
    )
}

async fn send(
    ca: &std::path::Path,
    base: &str,
    token: &str,
    case: &Case,
) -> anyhow::Result<(u16, String)> {
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("{base}{}", case.path);
    // HTTP/1.1: the table compares answers, not transports (an answer before
    // the body is read may reset an HTTP/2 stream)
    let mut args = vec!["--http1.1", "-X", case.method, "-H", &auth];
    for h in case.headers {
        args.extend(["-H", h]);
    }
    if let Some(body) = case.body {
        args.extend(["-d", body]);
    }
    args.push(&url);
    curl_with_ca(ca, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_double_answers_the_request_table_exactly_as_kube_apiserver() -> anyhow::Result<()> {
    let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| e.to_string()))
        .await?
        .map_err(anyhow::Error::msg)?;
    let proxy_token = kube.proxy_token().to_owned();
    let nobody_token = kube.service_account_token("nobody").await?;
    let sa_groups = |_: ()| {
        vec![
            "system:serviceaccounts".to_owned(),
            "system:serviceaccounts:authproxy".to_owned(),
        ]
    };
    let pki = TestPki::new()?;
    let cert = pki.issue_server("double")?;
    let config = DoubleConfig::new(pki::server_config(&cert, &[b"h2", b"http/1.1"])?)
        .with_token(
            &proxy_token,
            UserInfo {
                username: PROXY_SERVICE_ACCOUNT.into(),
                groups: sa_groups(()),
                ..Default::default()
            },
        )
        .with_token(
            &nobody_token,
            UserInfo {
                username: "system:serviceaccount:authproxy:nobody".into(),
                groups: sa_groups(()),
                ..Default::default()
            },
        );
    let double = double::start(config).await?;

    let mut differences = Vec::new();
    for case in CASES {
        let token = match case.token {
            "proxy" => proxy_token.as_str(),
            "nobody" => nobody_token.as_str(),
            literal => literal,
        };
        let (kcode, kbody) = send(kube.pki().ca_path(), &kube.url(), token, case).await?;
        let (dcode, dbody) = send(pki.ca_path(), &double.url(), token, case).await?;
        let (k, d) = (summary(kcode, &kbody), summary(dcode, &dbody));
        if k != d {
            differences.push(format!("{}:\n  kube:   {k:?}\n  double: {d:?}", case.what));
        }
    }
    assert!(
        differences.is_empty(),
        "the double drifted from kube-apiserver:\n{}",
        differences.join("\n")
    );
    Ok(())
}
