//! The Grafana dashboard and the Prometheus alert rules under deploy/observe/
//! query only metrics that a real authproxy serves: every `authproxy_*` name
//! in them is a family declared (or a sample present) in a scrape of a
//! running proxy.

use std::collections::BTreeSet;

use authproxy_tests::double::{self, DoubleConfig};
use authproxy_tests::observe::{scrape, start_observed_proxy};
use authproxy_tests::{curl_with_ca, pki, TestPki, PROXY_TOKEN};

/// Every `authproxy_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("authproxy_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn family_of(name: &str) -> &str {
    for suffix in ["_total", "_bucket", "_sum", "_count", "_info"] {
        if let Some(family) = name.strip_suffix(suffix) {
            return family;
        }
    }
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_dashboard_and_alerts_exists_in_a_real_scrape() -> anyhow::Result<()> {
    let folder = authproxy_tests::package_dir().join("../deploy/observe");
    let dashboard = std::fs::read_to_string(folder.join("dashboard.json"))?;
    let alerts = std::fs::read_to_string(folder.join("alerts.yaml"))?;
    let dashboard_json: serde_json::Value = serde_json::from_str(&dashboard)?;
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&alerts)?;
    let mut exprs: Vec<String> = Vec::new();
    for panel in dashboard_json["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap_or_default().to_owned());
        }
    }
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            exprs.push(rule["expr"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(exprs.len() >= 10, "too few queries found: {exprs:?}");
    assert!(exprs.iter().all(|e| !e.trim().is_empty()), "an empty query");
    let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();

    let pki = TestPki::new()?;
    let server_cert = pki.issue_server("apiserver")?;
    let tls = pki::server_config(&server_cert, &[b"h2", b"http/1.1"])?;
    let upstream = double::start(DoubleConfig::new(tls)).await?;
    let dir = tempfile::tempdir()?;
    let proxy = start_observed_proxy(
        &pki,
        dir.path(),
        &upstream.url(),
        pki.ca_path(),
        PROXY_TOKEN,
        "",
        &format!(
            "metrics: {{listen: '127.0.0.1:0'}}\naudit: {{path: {}}}",
            dir.path().join("audit.log").display()
        ),
    )
    .await?;
    curl_with_ca(
        pki.ca_path(),
        &[
            "-H",
            "Authorization: Bearer alice-token",
            &format!("https://{}/api/v1/namespaces/default/pods", proxy.addr()),
        ],
    )
    .await?;
    let s = scrape(proxy.metrics_addr().expect("metrics listener")).await?;
    let declared: BTreeSet<&str> = s
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !s.has_metric(n) && !declared.contains(family_of(n)))
        .collect();
    assert!(
        missing.is_empty(),
        "not served: {missing:?}\nscrape:\n{}",
        s.text
    );
    Ok(())
}

#[test]
fn metric_names_are_found_in_queries() {
    let names =
        metric_names("sum(rate(authproxy_http_requests_total{code=~\"5..\"}[5m])) / authproxy_x");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["authproxy_http_requests_total", "authproxy_x"]
    );
}
