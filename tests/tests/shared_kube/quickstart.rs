//! The README's quickstart, run as written against the real kube-apiserver:
//! the proxy's account and RBAC, its token, a serving certificate, a token
//! file, the configuration (checked, then served), a kubeconfig for alice,
//! and her first `kubectl auth whoami` through the proxy.

use std::time::Duration;

use anyhow::{bail, Context as _};
use authproxy_tests::kube::kube;

/// The shell block after `<!-- quickstart -->` in the README.
fn quickstart_script() -> anyhow::Result<String> {
    let readme = std::fs::read_to_string(authproxy_tests::package_dir().join("../README.md"))?;
    let (_, after) = readme
        .split_once("<!-- quickstart -->")
        .context("no quickstart marker in the README")?;
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .context("the quickstart marker is not followed by a sh block")?;
    let (script, _) = body.split_once("\n```").context("unclosed sh block")?;
    Ok(script.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quickstart_works_as_written() -> anyhow::Result<()> {
    let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| format!("{e:#}")))
        .await?
        .map_err(anyhow::Error::msg)?;
    let script = quickstart_script()?;
    let dir = tempfile::tempdir()?;
    let binary = authproxy_tests::authproxy_binary()?;
    let kubectl = kube.kubectl();
    let path = std::env::join_paths(
        [
            binary.parent().context("binary folder")?.to_owned(),
            kubectl.parent().context("kubectl folder")?.to_owned(),
        ]
        .into_iter()
        .chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )?;
    let port = authproxy_tests::free_port()?;
    let out_path = dir.path().join("quickstart.out");
    let out = std::fs::File::create(&out_path)?;
    let err = std::fs::File::create(dir.path().join("quickstart.err"))?;
    // Its own process group: the proxy it starts in the background is
    // stopped with it.
    let mut child = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("KUBECONFIG", kube.admin_kubeconfig())
        .env("PORT", port.to_string())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let group = child.id().context("no pid")?;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", "--", &format!("-{group}")])
        .status();
    let stdout = std::fs::read_to_string(&out_path)?;
    let stderr = std::fs::read_to_string(dir.path().join("quickstart.err"))?;
    let log = std::fs::read_to_string(dir.path().join("authproxy.log")).unwrap_or_default();
    let Ok(status) = status else {
        bail!("the quickstart did not end within 60s:\n{stdout}\n{stderr}\nproxy log:\n{log}");
    };
    let status = status?;
    if !status.success() {
        bail!("the quickstart failed ({status}):\n{stdout}\n{stderr}\nproxy log:\n{log}");
    }
    assert!(stdout.contains(": ok"), "check-config: {stdout}");
    // `kubectl auth whoami`, through the proxy: alice, her uid and group.
    let whoami: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("ATTRIBUTE"))
        .collect();
    let row = |name: &str| {
        whoami
            .iter()
            .find(|l| l.starts_with(name))
            .map(|l| l.to_owned())
            .unwrap_or_default()
    };
    assert!(row("Username").ends_with("alice"), "{stdout}");
    assert!(row("UID").ends_with("1001"), "{stdout}");
    assert!(row("Groups").contains("devs"), "{stdout}");
    Ok(())
}
