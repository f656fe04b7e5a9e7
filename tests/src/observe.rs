//! authproxy with its `metrics:` and `audit:` sections on, in front of the
//! double or the real kube-apiserver, and a scraper for its `/metrics`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use authproxy::server::RunningServer;

use crate::pki::TestPki;

/// Starts authproxy like [`crate::start_proxy`], with `top_level` YAML
/// appended at the top level of its config (`metrics:`, `audit:`) and
/// `extra_auth` lines under `authentication:`.
pub async fn start_observed_proxy(
    pki: &TestPki,
    dir: &Path,
    upstream_url: &str,
    upstream_ca: &Path,
    upstream_token: &str,
    extra_auth: &str,
    top_level: &str,
) -> anyhow::Result<RunningServer> {
    crate::start_proxy_with_top_level(
        pki,
        dir,
        upstream_url,
        upstream_ca,
        upstream_token,
        extra_auth,
        top_level,
    )
    .await
}

/// One scrape: every sample line, keyed by name and labels as printed
/// (`authproxy_http_requests_total{code="200",method="GET",kind="short"}`).
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The text as served.
    pub text: String,
    /// Sample → value.
    pub samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of a sample; 0 when absent (a family with no such labels yet).
    pub fn value(&self, sample: &str) -> f64 {
        self.samples.get(sample).copied().unwrap_or(0.0)
    }

    /// Whether any sample of metric `name` (any labels) is present.
    pub fn has_metric(&self, name: &str) -> bool {
        self.samples
            .keys()
            .any(|k| k == name || k.starts_with(&format!("{name}{{")))
    }
}

/// GETs `http://addr/metrics` with curl and parses the text format.
pub async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<Scrape> {
    crate::require_tool("curl")?;
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-"])
        .arg(format!("http://{addr}/metrics"))
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!(
            "no HTTP answer from {addr}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("scrape of {addr}: {head}");
    }
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (sample, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("bad sample line {line:?}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in {line:?}"))?;
        samples.insert(sample.to_owned(), value);
    }
    Ok(Scrape {
        text: body.to_owned(),
        samples,
    })
}

/// Reads the JSON lines of an audit file (none yet is an empty list).
pub fn audit_lines(path: &PathBuf) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("audit line is not JSON: {l}")))
        .collect()
}
