//! Request correlation: the audit ID goes upstream as `Audit-ID` and back as
//! `Audit-Id`, sits on every log line of the request, and W3C trace context
//! (`traceparent`, `tracestate`) reaches the API server unchanged, even when
//! the caller names it in `Connection`.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use authproxy_tests::double::{self, DoubleConfig};
use authproxy_tests::observe::start_observed_proxy;
use authproxy_tests::{curl_with_ca, pki, TestPki, UserInfo, PROXY_TOKEN, PROXY_USER};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn world() -> anyhow::Result<(
    TestPki,
    double::RunningDouble,
    authproxy::server::RunningServer,
    tempfile::TempDir,
)> {
    let pki = TestPki::new()?;
    let server_cert = pki.issue_server("apiserver")?;
    let tls = pki::server_config(&server_cert, &[b"h2", b"http/1.1"])?;
    let upstream = double::start(DoubleConfig::new(tls).with_token(
        PROXY_TOKEN,
        UserInfo {
            username: PROXY_USER.into(),
            uid: String::new(),
            groups: vec!["system:serviceaccounts".into()],
            extra: Default::default(),
        },
    ))
    .await?;
    let dir = tempfile::tempdir()?;
    let proxy = start_observed_proxy(
        &pki,
        dir.path(),
        &upstream.url(),
        pki.ca_path(),
        PROXY_TOKEN,
        "",
        "",
    )
    .await?;
    Ok((pki, upstream, proxy, dir))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_unchanged_and_the_audit_id_goes_upstream() -> anyhow::Result<()> {
    let (pki, upstream, proxy, _dir) = world().await?;
    let (code, text) = curl_with_ca(
        pki.ca_path(),
        &[
            "-D",
            "-",
            "--http1.1",
            "-H",
            "Authorization: Bearer alice-token",
            "-H",
            &format!("traceparent: {TRACEPARENT}"),
            "-H",
            "tracestate: vendor=opaque",
            "-H",
            "Connection: traceparent, tracestate, Audit-ID",
            "-H",
            "Audit-ID: caller-chosen",
            &format!("https://{}/api/v1/namespaces/default/pods", proxy.addr()),
        ],
    )
    .await?;
    assert_eq!(code, 200, "{text}");
    let answered_id = header(&text, "audit-id")
        .expect("Audit-Id in the answer")
        .to_owned();
    let seen = upstream.requests();
    let request = seen
        .iter()
        .find(|r| r.uri.path() == "/api/v1/namespaces/default/pods")
        .expect("the request reached the API server");
    assert_eq!(request.header_values("traceparent"), [TRACEPARENT]);
    assert_eq!(request.header_values("tracestate"), ["vendor=opaque"]);
    assert_eq!(request.header_values("audit-id"), [answered_id.as_str()]);
    assert_ne!(answered_id, "caller-chosen");
    Ok(())
}

/// Log lines written by the tracing subscriber of this test binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut lines) = self.0.lock() {
            lines.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .try_init();
        logs
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_of_a_request_carry_its_audit_id() -> anyhow::Result<()> {
    let logs = captured_logs();
    let (pki, _upstream, proxy, _dir) = world().await?;
    let (code, text) = curl_with_ca(
        pki.ca_path(),
        &[
            "-D",
            "-",
            "-H",
            "Authorization: Bearer unknown-token-5e11",
            &format!("https://{}/api/v1/namespaces/default/pods", proxy.addr()),
        ],
    )
    .await?;
    assert_eq!(code, 401);
    let id = header(&text, "audit-id")
        .expect("Audit-Id in the answer")
        .to_owned();
    let text = String::from_utf8(logs.0.lock().map(|l| l.clone()).unwrap_or_default())?;
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["fields"]["message"] == "no authenticator accepted the credential"
                && l["span"]["audit_id"] == id.as_str()
        });
    assert!(line.is_some(), "no log line with audit_id {id} in\n{text}");
    assert!(
        !text.contains("unknown-token-5e11"),
        "a credential reached the logs"
    );
    Ok(())
}
