//! Refusals of uploads the proxy answers before reading their body, with
//! the system's curl over HTTP/2: the caller sees the `Status`, not a
//! transfer error. curl 7.88 (Debian 12) fails a transfer whose stream ends
//! with `RST_STREAM(NO_ERROR)` after the answer (error 92), so the proxy
//! reads some of the body before it refuses (`proxy_core::refusal`).

use std::process::Stdio;

use anyhow::Context as _;
use authproxy_tests::{require_tool, Env};
use serde_json::Value;

const PODS: &str = "/api/v1/namespaces/default/pods";

/// Runs `curl --http2 -sk -X POST --data-binary @body` with `headers`, and
/// returns its exit code and output.
async fn post(
    url: &str,
    body: &std::path::Path,
    headers: &[&str],
) -> anyhow::Result<(i32, String)> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["--http2", "-sSk", "--max-time", "20", "-X", "POST"])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()));
    for header in headers {
        cmd.args(["-H", header]);
    }
    let output = cmd
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text))
}

/// 50 of 50 refused POSTs of a few KiB over HTTP/2 show the refusal's
/// `Status`, for a bad token (401, from authentication) and for a caller's
/// own impersonation of a group without a user (400, a later layer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_http2_uploads_show_the_status_with_curl() -> anyhow::Result<()> {
    require_tool("curl")?;
    let env = Env::start().await?;
    let url = format!("{}{PODS}", env.proxy_url());
    let body = env.dir.path().join("pod.json");
    let padding = "x".repeat(6 * 1024);
    std::fs::write(
        &body,
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","annotations":{{"pad":"{padding}"}}}}}}"#
        ),
    )?;
    let cases: [(&[&str], u64, &str); 2] = [
        (&["Authorization: Bearer wrong-token"], 401, "Unauthorized"),
        (
            &[
                "Authorization: Bearer alice-token",
                "Impersonate-Group: system:masters",
            ],
            400,
            "BadRequest",
        ),
    ];
    for (headers, code, reason) in cases {
        for attempt in 1..=50 {
            let (exit, output) = post(&url, &body, headers).await?;
            assert_eq!(
                exit, 0,
                "{reason}, attempt {attempt}: curl failed: {output}"
            );
            let status: Value = serde_json::from_str(&output)
                .with_context(|| format!("{reason}, attempt {attempt}: not JSON: {output}"))?;
            assert_eq!(status["kind"], "Status", "{output}");
            assert_eq!(status["code"], code, "{output}");
            assert_eq!(status["reason"], reason, "{output}");
        }
    }
    Ok(())
}
