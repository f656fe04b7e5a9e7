//! The Helm chart under deploy/helm/authproxy, rendered by the real `helm`
//! (built from the pinned Go module tests/helm/ by `scripts/test.sh`, like
//! the kube binaries), and the pod files it mounts, written out so authproxy
//! can run in process with exactly the chart's configuration.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use serde_json::Value;

/// How to get helm, named in the failure message.
const BUILD_HINT: &str = "helm is built by `scripts/test.sh` (Go 1.26 or newer, from tests/helm/go.mod) into target/helm/<key>/; run it once, or set AUTHPROXY_HELM_BIN to a folder holding helm";

/// The folder holding the `helm` binary: `AUTHPROXY_HELM_BIN`, else the last
/// build of `scripts/test.sh` (target/helm/current).
pub fn helm_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AUTHPROXY_HELM_BIN") {
        let dir = PathBuf::from(dir);
        ensure!(
            dir.join("helm").is_file(),
            "AUTHPROXY_HELM_BIN={} holds no helm; {BUILD_HINT}",
            dir.display()
        );
        return Ok(dir);
    }
    let dir = crate::package_dir().join("../target/helm/current");
    ensure!(
        dir.join("helm").is_file(),
        "{} holds no helm; {BUILD_HINT}",
        dir.display()
    );
    Ok(dir)
}

/// The chart's folder.
pub fn chart_dir() -> PathBuf {
    crate::package_dir().join("../deploy/helm/authproxy")
}

/// Runs helm with `args` (bounded by 60 s), with its caches and config in a
/// throwaway folder so nothing of the user's helm set-up is read or written.
pub async fn helm(args: &[&str]) -> anyhow::Result<Output> {
    let home = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(helm_bin()?.join("helm"));
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("helm did not finish in 60s")?
        .context("running helm")
}

/// `helm template <release> <chart> -n <namespace> -f <values>`: the YAML text.
pub async fn template_text(
    release: &str,
    namespace: &str,
    values: &Path,
    extra: &[&str],
) -> anyhow::Result<String> {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec![
        "template",
        release,
        &chart,
        "--namespace",
        namespace,
        "--values",
    ];
    let values = values.to_string_lossy();
    args.push(&values);
    args.extend(extra);
    let out = helm(&args).await?;
    if !out.status.success() {
        bail!("helm template: {}", crate::output_text(&out));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The objects of a rendered chart, as JSON values.
pub fn objects(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc).context("rendered YAML")?;
        if !value.is_null() {
            all.push(value);
        }
    }
    Ok(all)
}

/// The one object of `kind`, failing when there is none or more.
pub fn one<'a>(objects: &'a [Value], kind: &str) -> anyhow::Result<&'a Value> {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    match found.as_slice() {
        [one] => Ok(one),
        _ => bail!("want one {kind}, found {}", found.len()),
    }
}

/// Writes what the `authproxy` container of `pod_spec` mounts (ConfigMaps
/// and Secrets among `objects`, with their `items`; empty folders for
/// `emptyDir`; not the projected service-account token) below `root`, at the mount paths prefixed by
/// `root`, and returns the container.
pub fn write_mounted_files(
    objects: &[Value],
    pod_spec: &Value,
    root: &Path,
) -> anyhow::Result<Value> {
    let container = pod_spec["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "authproxy"))
        .context("no authproxy container")?
        .clone();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = pod_spec["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
            .with_context(|| format!("no volume for mount {mount}"))?;
        let dir = root.join(
            mount["mountPath"]
                .as_str()
                .context("mountPath")?
                .trim_start_matches('/'),
        );
        if volume.get("projected").is_some() {
            // The service account's token: the kubelet's to write; the
            // tests give the proxy a token of their own.
            continue;
        }
        if volume.get("emptyDir").is_some() {
            std::fs::create_dir_all(&dir)?;
            continue;
        }
        let (kind, name, source) = if let Some(cm) = volume.get("configMap") {
            ("ConfigMap", &cm["name"], cm)
        } else if let Some(secret) = volume.get("secret") {
            ("Secret", &secret["secretName"], secret)
        } else {
            bail!("volume {volume} is neither a ConfigMap nor a Secret");
        };
        let object = objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == *name)
            .with_context(|| format!("{kind} {name} is not in the chart"))?;
        let data = files_of(object)?;
        std::fs::create_dir_all(&dir)?;
        match source["items"].as_array() {
            Some(items) => {
                for item in items {
                    let key = item["key"].as_str().context("item key")?;
                    let bytes = data
                        .iter()
                        .find(|(k, _)| k == key)
                        .with_context(|| format!("{kind} {name} has no key {key}"))?;
                    std::fs::write(dir.join(item["path"].as_str().context("path")?), &bytes.1)?;
                }
            }
            None => {
                for (key, bytes) in data {
                    std::fs::write(dir.join(key), bytes)?;
                }
            }
        }
    }
    Ok(container)
}

/// The files of a ConfigMap (`data`) or Secret (`data`, base64).
fn files_of(object: &Value) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use base64::Engine as _;
    let secret = object["kind"] == "Secret";
    let mut files = Vec::new();
    for (key, value) in object["data"].as_object().into_iter().flatten() {
        let text = value.as_str().context("data value")?;
        let bytes = if secret {
            base64::engine::general_purpose::STANDARD.decode(text)?
        } else {
            text.as_bytes().to_vec()
        };
        files.push((key.clone(), bytes));
    }
    Ok(files)
}
