//! The test kubelet behind the shared kube-apiserver: kube's own streaming
//! code (`k8s.io/cri-streaming`, built by `scripts/test.sh` from
//! tests/kube/kubelet/) registered as a Node, so exec, attach, cp,
//! port-forward and logs run for real.
//!
//! - It serves TLS with a certificate from the test CA (kube-apiserver
//!   checks it with `--kubelet-certificate-authority`) and requires the
//!   client certificate kube-apiserver presents
//!   (`--kubelet-client-certificate`).
//! - The Node `authproxy-node` has InternalIP 127.0.0.1, the kubelet's port
//!   as its kubelet endpoint and a Ready condition; pods made by
//!   [`Kube::running_pod`] are bound to it and marked Running, as a kubelet
//!   would report them.
//! - A pod is a folder ([`Kube::pod_dir`]): commands run there as local
//!   processes; port P of a pod is 127.0.0.1:P; a container's log is the
//!   file `<container>.log` there, which its main process (`cat`, started on
//!   the first attach) writes and a test may append to.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::{kube, poll, supervised, tail, Kube, Supervised};

/// The Node the test kubelet serves.
pub const NODE: &str = "authproxy-node";
/// The container of every pod made by [`Kube::running_pod`].
pub const CONTAINER: &str = "main";

/// The running test kubelet.
pub struct Kubelet {
    root: PathBuf,
    port: u16,
    _server: Supervised,
}

impl Kubelet {
    /// The kubelet's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Kube {
    /// The test kubelet, started and registered as [`NODE`] on first use.
    ///
    /// Blocks while starting (about a second); later calls return at once.
    pub fn kubelet(&self) -> anyhow::Result<&Kubelet> {
        self.kubelet
            .get_or_init(|| self.start_kubelet().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("starting the test kubelet: {e}"))
    }

    fn start_kubelet(&self) -> anyhow::Result<Kubelet> {
        let program = self.bin.join("kubelet");
        if !program.is_file() {
            bail!("{} is missing; {}", program.display(), super::BUILD_HINT);
        }
        let serving = self.pki.issue_server("kubelet")?;
        let root = self.dir.join("kubelet");
        std::fs::create_dir_all(&root)?;
        let port = crate::free_port()?;
        let args: Vec<String> = vec![
            format!("--listen=127.0.0.1:{port}"),
            format!("--cert={}", serving.cert_path.display()),
            format!("--key={}", serving.key_path.display()),
            format!("--client-ca={}", self.pki.ca_path().display()),
            format!("--root={}", root.display()),
        ];
        let log = self.dir.join("kubelet.log");
        let mut server = supervised(&program, &args, &log, None)?;
        // Ready when it answers kube-apiserver's client certificate.
        poll(Duration::from_secs(30), "test kubelet /healthz", || {
            server.alive("kubelet", &log)?;
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "2", "--cacert"])
                .arg(self.pki.ca_path())
                .arg("--cert")
                .arg(&self.kubelet_client.cert_path)
                .arg("--key")
                .arg(&self.kubelet_client.key_path)
                .arg(format!("https://127.0.0.1:{port}/healthz"))
                .output()?;
            Ok(out.status.success())
        })
        .with_context(|| format!("kubelet log:\n{}", tail(&log)))?;
        self.register_node(port)?;
        Ok(Kubelet {
            root,
            port,
            _server: server,
        })
    }

    /// Creates the Node and reports its status as a kubelet does (through
    /// `nodes/status`).
    fn register_node(&self, port: u16) -> anyhow::Result<()> {
        let node = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}, labels: {{kubernetes.io/hostname: {NODE}}}}}\n"
        );
        let out = self.admin(&["apply", "-f", "-"], Some(&node))?;
        if !out.status.success() {
            bail!("creating node {NODE}: {}", crate::output_text(&out));
        }
        let status = serde_json::json!({"status": {
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": NODE},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "the test kubelet is serving",
            }],
        }});
        let out = self.admin(
            &[
                "patch",
                "node",
                NODE,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        )?;
        if !out.status.success() {
            bail!("node {NODE} status: {}", crate::output_text(&out));
        }
        Ok(())
    }

    /// Creates pod `name` in `default`, bound to [`NODE`] with one container
    /// [`CONTAINER`] (stdin open), and reports it Running and Ready through
    /// `pods/status`, as its kubelet would. Returns the pod's folder.
    ///
    /// Both writes go in one curl (a kubectl start costs several times more,
    /// and the suite makes many pods).
    pub async fn running_pod(&self, name: &str) -> anyhow::Result<PathBuf> {
        let kube = kube()?;
        tokio::task::spawn_blocking(move || kube.kubelet().map(|_| ())).await??;
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "nodeName": NODE,
                "automountServiceAccountToken": false,
                "containers": [{"name": CONTAINER, "image": "registry.invalid/main:1", "stdin": true}],
            },
        });
        let started = "2020-01-01T00:00:00Z";
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": started,
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
            "containerStatuses": [{
                "name": CONTAINER, "ready": true, "started": true, "restartCount": 0,
                "image": "registry.invalid/main:1", "imageID": "",
                "containerID": format!("test://{name}"),
                "state": {"running": {"startedAt": started}},
            }],
        }});
        let pods = format!("{}/api/v1/namespaces/default/pods", self.url());
        let answers = crate::curl_sequence(&[
            self.admin_write("POST", "application/json", &pod, &pods),
            self.admin_write(
                "PATCH",
                "application/merge-patch+json",
                &status,
                &format!("{pods}/{name}/status"),
            ),
        ])
        .await?;
        if answers[0].0 != 201 {
            bail!(
                "creating pod {name}: HTTP {} {}",
                answers[0].0,
                answers[0].1
            );
        }
        if answers[1].0 != 200 {
            bail!("pod {name} status: HTTP {} {}", answers[1].0, answers[1].1);
        }
        self.pod_dir(name)
    }

    /// The folder of pod `name` in `default` on the test kubelet: commands
    /// run there, and `<container>.log` there is the container's log.
    pub fn pod_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.kubelet()?.root.join("default").join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}
