//! The real Kubernetes API server for the end-to-end tests: etcd and
//! kube-apiserver built from the pinned Go module in tests/kube/ (by
//! `scripts/test.sh`), started once per test binary on free loopback ports
//! and shared by its tests.
//!
//! - kube-apiserver serves TLS from a test CA, authorizes with RBAC, keeps
//!   kube's default HTTP/2 limit (100 streams per connection), writes its
//!   audit log at `Metadata` level (the witness of what reached the server),
//!   and calls a TokenReview webhook at [`Kube::webhook_addr`], where the
//!   webhook tests start `authproxy webhook`.
//! - kube-apiserver reaches kubelets with a client certificate from the test
//!   CA and checks theirs against it; [`Kube::kubelet`] starts the test
//!   kubelet (kube's streaming code) behind it, for exec, attach,
//!   port-forward and logs.
//! - Set-up is done as an admin through kubectl with real objects: the proxy's
//!   service account with a ClusterRole to impersonate and nothing else, and
//!   group `devs` allowed to read pods and configmaps in `default`.
//! - Both processes run under a small supervisor that reads the test
//!   process's end of a pipe: when the test binary exits, for any reason, the
//!   pipe closes and the supervisor stops the server and deletes its folder.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::pki::TestPki;

mod checks;
mod env;
mod kubelet;
pub use checks::{assert_kubectl_acts_as, Expected};
pub use env::KubeEnv;
pub use kubelet::{Kubelet, CONTAINER, NODE};

/// The admin's static token (group `system:masters`), for set-up only.
pub const ADMIN_TOKEN: &str = "kube-admin-token";
/// The proxy's service account, in kube's user-name form.
pub const PROXY_SERVICE_ACCOUNT: &str = "system:serviceaccount:authproxy:proxy";

/// Where `scripts/test.sh` puts the binaries, named in the failure message.
const BUILD_HINT: &str = "the kube binaries are built by `scripts/test.sh` (Go 1.26 or newer, from tests/kube/go.mod); run it once, or set AUTHPROXY_KUBE_BIN to a folder holding kube-apiserver, kubectl and etcd (and the test kubelet, for tests/streaming.rs)";

/// A running etcd + kube-apiserver pair, shared by one test binary's tests.
pub struct Kube {
    dir: PathBuf,
    bin: PathBuf,
    pki: TestPki,
    /// The CA of kube's request-header (front-proxy) authentication.
    front_proxy_pki: TestPki,
    port: u16,
    webhook_addr: SocketAddr,
    proxy_token: String,
    legacy_proxy_token: String,
    /// What kube-apiserver presents to kubelets.
    kubelet_client: crate::pki::CertFiles,
    /// The test kubelet, started on first use.
    kubelet: OnceLock<Result<Kubelet, String>>,
    // The supervisors stop their server when these close (process exit).
    _servers: Mutex<Vec<Supervised>>,
}

static KUBE: OnceLock<Result<Kube, String>> = OnceLock::new();

/// The common name kube-apiserver allows on request-header client
/// certificates (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// The test binary's kube-apiserver, started on first use.
///
/// Blocks while starting (a few seconds); later calls return at once.
pub fn kube() -> anyhow::Result<&'static Kube> {
    match KUBE.get() {
        // Started already, with [`kube_with`]'s flags or none.
        Some(started) => started
            .as_ref()
            .map_err(|e| anyhow::anyhow!("starting kube-apiserver: {e}")),
        None => kube_with(&[]),
    }
}

/// The test binary's kube-apiserver, started on first use with `extra`
/// flags added to the usual ones. A binary whose tests need such flags
/// calls this first in each of them: the first call starts the server, and
/// later ones (from [`kube`] as well) share it. A call with other flags than
/// the server runs with fails.
pub fn kube_with(extra: &[&str]) -> anyhow::Result<&'static Kube> {
    static FLAGS: OnceLock<Vec<String>> = OnceLock::new();
    let started = FLAGS.get_or_init(|| extra.iter().map(|f| (*f).to_owned()).collect());
    anyhow::ensure!(
        started.iter().map(String::as_str).eq(extra.iter().copied()),
        "this test binary's kube-apiserver runs with the extra flags {started:?}, not {extra:?}"
    );
    KUBE.get_or_init(|| Kube::start(extra).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("starting kube-apiserver: {e}"))
}

/// The folder holding kube-apiserver, kubectl and etcd.
pub fn kube_bin() -> anyhow::Result<PathBuf> {
    let has_all = |dir: &Path| {
        ["kube-apiserver", "kubectl", "etcd"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("AUTHPROXY_KUBE_BIN") {
        let dir = PathBuf::from(dir);
        if has_all(&dir) {
            return Ok(dir);
        }
        bail!(
            "AUTHPROXY_KUBE_BIN={} lacks a binary; {BUILD_HINT}",
            dir.display()
        );
    }
    // the last build of scripts/test.sh
    let dir = crate::package_dir().join("../target/kube/current");
    if has_all(&dir) {
        return Ok(dir);
    }
    bail!(
        "{} lacks kube-apiserver, kubectl or etcd; {BUILD_HINT}",
        dir.display()
    )
}

/// Runs `program` under a supervisor shell: it stops the program (TERM, and
/// KILL after 10 s: kube-apiserver can hang in its shutdown once etcd is
/// gone) and, when `cleanup` is given, deletes that folder, once its stdin
/// closes, which happens when this test process exits, however it exits.
fn supervised(
    program: &Path,
    args: &[String],
    log: &Path,
    cleanup: Option<&Path>,
) -> anyhow::Result<Supervised> {
    // The supervisor exits with the program (so an early death is seen);
    // its watcher outlives both until the test process closes the pipe.
    const SUPERVISOR: &str = r#"prog="$1"; shift; clean="$1"; shift
"$prog" "$@" </dev/null & pid=$!
(
  while read -r _; do :; done
  kill -TERM "$pid" 2>/dev/null
  # kube-apiserver may hang in its shutdown once etcd is gone: 10 s, then KILL.
  n=0
  while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  kill -KILL "$pid" 2>/dev/null
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  if [ -n "$clean" ]; then rm -rf -- "$clean"; fi
) </dev/stdin >/dev/null 2>&1 &
exec 0<&-
wait "$pid""#;
    let log = std::fs::File::create(log)?;
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(SUPERVISOR)
        .arg("supervisor")
        .arg(program)
        .arg(cleanup.map(Path::as_os_str).unwrap_or_default())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let lifeline = child.stdin.take().context("supervisor stdin")?;
    Ok(Supervised {
        child,
        _lifeline: lifeline,
    })
}

/// A server process died: no point in polling on.
#[derive(Debug)]
struct Exited(String);

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Exited {}

/// A supervised server process.
struct Supervised {
    child: std::process::Child,
    _lifeline: ChildStdin,
}

impl Supervised {
    /// Fails if the server has exited.
    fn alive(&mut self, name: &str, log: &Path) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            return Err(
                Exited(format!("{name} exited ({status}); its log:\n{}", tail(log))).into(),
            );
        }
        Ok(())
    }
}

/// Polls `check` every 100 ms until it is `Ok(true)`, failing after `limit`
/// with the last thing it saw.
fn poll(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::from("nothing yet");
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) if e.is::<Exited>() => return Err(e),
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > limit {
            bail!("{what}: not ready within {limit:?}; last seen: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Kube {
    fn start(extra: &[&str]) -> anyhow::Result<Kube> {
        let bin = kube_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("authproxy-kube-")
            .tempdir()?
            .keep();

        // etcd, unsynced: the data is thrown away with the folder.
        let (etcd_port, peer_port) = (crate::free_port()?, crate::free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args: Vec<String> = vec![
            "--name=test".into(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=test={peer_url}"),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let etcd_log = dir.join("etcd.log");
        let mut etcd = supervised(&bin.join("etcd"), &etcd_args, &etcd_log, None)?;
        poll(Duration::from_secs(30), "etcd /health", || {
            etcd.alive("etcd", &etcd_log)?;
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "2"])
                .arg(format!("{etcd_url}/health"))
                .output()?;
            Ok(out.status.success())
        })
        .with_context(|| format!("etcd log:\n{}", tail(&etcd_log)))?;

        // kube-apiserver
        let pki = TestPki::new()?;
        let serving = pki.issue_server("kube-apiserver")?;
        let sa_key = pki.issue_client("service-accounts", "service-accounts", None)?;
        let kubelet_client =
            pki.issue_client("kubelet-client", "kube-apiserver-kubelet-client", None)?;
        let webhook_addr: SocketAddr = format!("127.0.0.1:{}", crate::free_port()?).parse()?;
        // A CA of its own, as kube requires for --requestheader-client-ca-file.
        let front_proxy_pki = TestPki::new()?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},kube-admin,0,\"system:masters\"\n"),
        )?;
        std::fs::write(
            dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )?;
        std::fs::write(
            dir.join("webhook.kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: authproxy\n  cluster:\n    server: https://{webhook_addr}/\n    certificate-authority: {ca}\nusers:\n- name: kube-apiserver\n  user: {{}}\ncontexts:\n- name: webhook\n  context: {{cluster: authproxy, user: kube-apiserver}}\ncurrent-context: webhook\n",
                ca = pki.ca_path().display()
            ),
        )?;
        let port = crate::free_port()?;
        let d = |name: &str| dir.join(name).display().to_string();
        let api_args: Vec<String> = [
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", d("certs")),
            format!("--tls-cert-file={}", serving.cert_path.display()),
            format!("--tls-private-key-file={}", serving.key_path.display()),
            format!("--client-ca-file={}", pki.ca_path().display()),
            // kube reads the public key from the certificate
            format!("--service-account-key-file={}", sa_key.cert_path.display()),
            format!(
                "--service-account-signing-key-file={}",
                sa_key.key_path.display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--authorization-mode=RBAC".into(),
            // a lone server on loopback publishes no endpoints
            "--endpoint-reconciler-type=none".into(),
            format!("--token-auth-file={}", d("tokens.csv")),
            format!("--audit-log-path={}", d("audit.log")),
            format!("--audit-policy-file={}", d("audit-policy.yaml")),
            "--audit-log-mode=blocking".into(),
            format!(
                "--authentication-token-webhook-config-file={}",
                d("webhook.kubeconfig")
            ),
            "--authentication-token-webhook-version=v1".into(),
            "--authentication-token-webhook-cache-ttl=1s".into(),
            // request-header (front-proxy) authentication, kube's default names
            format!(
                "--requestheader-client-ca-file={}",
                front_proxy_pki.ca_path().display()
            ),
            format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT}"),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-uid-headers=X-Remote-Uid".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            // kubelets: the test kubelet's node has its address as InternalIP
            format!(
                "--kubelet-client-certificate={}",
                kubelet_client.cert_path.display()
            ),
            format!("--kubelet-client-key={}", kubelet_client.key_path.display()),
            format!(
                "--kubelet-certificate-authority={}",
                pki.ca_path().display()
            ),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]
        .into_iter()
        .chain(extra.iter().map(|flag| (*flag).to_owned()))
        .collect();
        let api_log = dir.join("kube-apiserver.log");
        let mut apiserver =
            supervised(&bin.join("kube-apiserver"), &api_args, &api_log, Some(&dir))?;
        poll(Duration::from_secs(90), "kube-apiserver /readyz", || {
            apiserver.alive("kube-apiserver", &api_log)?;
            let out = Command::new("curl")
                .args([
                    "-s",
                    "--max-time",
                    "5",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                ])
                .arg(pki.ca_path())
                .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
                .arg(format!("https://127.0.0.1:{port}/readyz"))
                .output()?;
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            if code == "200" {
                Ok(true)
            } else {
                bail!("HTTP {code}")
            }
        })
        .with_context(|| format!("kube-apiserver log:\n{}", tail(&api_log)))?;
        let mut kube = Kube {
            dir,
            bin,
            pki,
            front_proxy_pki,
            port,
            webhook_addr,
            proxy_token: String::new(),
            legacy_proxy_token: String::new(),
            kubelet_client,
            kubelet: OnceLock::new(),
            _servers: Mutex::new(vec![etcd, apiserver]),
        };
        kube.write_admin_kubeconfig()?;
        kube.set_up()?;
        Ok(kube)
    }

    fn write_admin_kubeconfig(&self) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\ncontexts:\n- name: admin\n  context: {{cluster: kube, user: admin, namespace: default}}\ncurrent-context: admin\n",
            self.url(),
            self.pki.ca_path().display()
        );
        std::fs::write(self.admin_kubeconfig(), text)?;
        Ok(())
    }

    /// The objects every test relies on, created as the admin.
    fn set_up(&mut self) -> anyhow::Result<()> {
        const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: authproxy}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: proxy, namespace: authproxy}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody, namespace: authproxy}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: proxy-legacy, namespace: authproxy}
---
CONSTRAINED_IMPERSONATOR
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: authproxy-impersonator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: authproxy-impersonator}
subjects:
- {kind: ServiceAccount, name: proxy, namespace: authproxy}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: authproxy-impersonator-legacy}
rules:
- apiGroups: [""]
  resources: [users, groups, serviceaccounts]
  verbs: [impersonate]
- apiGroups: [authentication.k8s.io]
  resources: ["*"]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: authproxy-impersonator-legacy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: authproxy-impersonator-legacy}
subjects:
- {kind: ServiceAccount, name: proxy-legacy, namespace: authproxy}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: devs-read, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods, configmaps]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: devs-read, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: devs-read}
subjects:
- {kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}
- {kind: Group, name: "oidc:devs", apiGroup: rbac.authorization.k8s.io}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: default}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default}
spec:
  automountServiceAccountToken: false
  containers:
  - {name: web, image: registry.invalid/web:1}
"#;
        // The default namespace appears shortly after readiness.
        poll(Duration::from_secs(30), "namespace default", || {
            Ok(self
                .admin(&["get", "namespace", "default"], None)?
                .status
                .success())
        })?;
        let objects = OBJECTS.replace(
            "CONSTRAINED_IMPERSONATOR",
            &constrained_impersonator("authproxy-impersonator"),
        );
        let out = self.admin(&["apply", "-f", "-"], Some(&objects))?;
        if !out.status.success() {
            bail!("set-up objects: {}", crate::output_text(&out));
        }
        let token = |account: &str| -> anyhow::Result<String> {
            let out = self.admin(
                &[
                    "create",
                    "token",
                    account,
                    "-n",
                    "authproxy",
                    "--duration=24h",
                ],
                None,
            )?;
            if !out.status.success() {
                bail!("{account} token: {}", crate::output_text(&out));
            }
            Ok(String::from_utf8(out.stdout)?.trim().to_owned())
        };
        let (proxy, legacy) = (token("proxy")?, token("proxy-legacy")?);
        self.proxy_token = proxy;
        self.legacy_proxy_token = legacy;
        Ok(())
    }

    /// Runs kubectl as the admin, with `stdin` if given (blocking).
    pub fn admin(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        let mut cmd = Command::new(self.kubectl());
        cmd.arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running kubectl")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs kubectl as the admin from async code, with `stdin` if given.
    pub async fn admin_async(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.map(str::to_owned);
        let kube: &'static Kube = kube()?;
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kube.admin(&args, stdin.as_deref())
        })
        .await?
    }

    /// Creates a configmap in `default` labelled `marker=<marker>`, as the admin
    /// (with curl: tests make many, and a kubectl start costs several times
    /// more).
    pub async fn create_configmap(&self, name: &str, marker: &str) -> anyhow::Result<()> {
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "labels": {"marker": marker}},
            "data": {"k": "v"},
        });
        let answers = crate::curl_sequence(&[self.admin_write(
            "POST",
            "application/json",
            &object,
            &format!("{}/api/v1/namespaces/default/configmaps", self.url()),
        )])
        .await?;
        let (code, body) = &answers[0];
        if *code != 201 {
            bail!("creating configmap {name}: HTTP {code} {body}");
        }
        Ok(())
    }

    /// A write to kube-apiserver as the admin with curl (`method`, a body of
    /// `content_type`, `url`), for [`crate::curl_sequence`].
    pub(crate) fn admin_write(
        &self,
        method: &str,
        content_type: &str,
        body: &Value,
        url: &str,
    ) -> crate::Transfer<'_> {
        crate::Transfer {
            ca: self.pki.ca_path(),
            args: vec![
                "-X".into(),
                method.into(),
                "-H".into(),
                format!("Authorization: Bearer {ADMIN_TOKEN}"),
                "-H".into(),
                format!("Content-Type: {content_type}"),
                "--data-binary".into(),
                body.to_string(),
                url.into(),
            ],
        }
    }

    /// Applies `yaml` as the admin and waits until RBAC answers `can-i` with
    /// yes for each of `checks` (e.g. `["impersonate", "users/carol", "--as",
    /// "alice"]`): kube's authorizer sees new bindings a moment after they
    /// are stored.
    pub async fn apply_rbac(&self, yaml: &str, checks: &[&[&str]]) -> anyhow::Result<()> {
        // Tests of one binary apply the same objects side by side: a create
        // that lost the race (AlreadyExists, Conflict) is applied again.
        let mut attempt = 0;
        loop {
            let out = self.admin_async(&["apply", "-f", "-"], Some(yaml)).await?;
            if out.status.success() {
                break;
            }
            let text = crate::output_text(&out);
            attempt += 1;
            if attempt >= 5 || !(text.contains("AlreadyExists") || text.contains("Conflict")) {
                bail!("apply: {text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A check this cannot read fails now, not after the wait.
        for check in checks {
            AccessCheck::parse(check)?;
        }
        let what = format!("RBAC in force (can-i {checks:?})");
        crate::wait_for(Duration::from_secs(20), &what, || async move {
            let answers = self.can_i(checks).await.map_err(|e| format!("{e:#}"))?;
            let refused: Vec<String> = checks
                .iter()
                .zip(&answers)
                .filter(|(_, (allowed, _))| !allowed)
                .map(|(check, (_, why))| format!("{}: no {why}", check.join(" ")))
                .collect();
            if refused.is_empty() {
                Ok(Some(()))
            } else {
                Err(refused.join("; "))
            }
        })
        .await?;
        Ok(())
    }

    /// kube's answers to `checks`, each in `kubectl auth can-i`'s words
    /// (`["impersonate", "users/carol", "--as", "alice"]`), asked as kubectl
    /// asks them (a SelfSubjectAccessReview as the admin, impersonating
    /// `--as`), all in one curl: (allowed, kube's reason).
    pub async fn can_i(&self, checks: &[&[&str]]) -> anyhow::Result<Vec<(bool, String)>> {
        let url = format!(
            "{}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            self.url()
        );
        let mut transfers = Vec::with_capacity(checks.len());
        for check in checks {
            let review = AccessCheck::parse(check)?;
            let mut transfer = self.admin_write("POST", "application/json", &review.body, &url);
            let mut headers = Vec::new();
            if let Some(user) = &review.user {
                headers.extend(["-H".to_owned(), format!("Impersonate-User: {user}")]);
            }
            for group in &review.groups {
                headers.extend(["-H".to_owned(), format!("Impersonate-Group: {group}")]);
            }
            transfer.args.splice(0..0, headers);
            transfers.push(transfer);
        }
        let answers = crate::curl_sequence(&transfers).await?;
        checks
            .iter()
            .zip(answers)
            .map(|(check, (code, body))| {
                anyhow::ensure!(code == 201, "can-i {check:?}: HTTP {code} {body}");
                let review: Value = serde_json::from_str(&body)
                    .with_context(|| format!("can-i {check:?}: {body}"))?;
                let status = &review["status"];
                let why = [&status["reason"], &status["evaluationError"]]
                    .iter()
                    .filter_map(|v| v.as_str())
                    .filter(|v| !v.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                Ok((status["allowed"] == true, why))
            })
            .collect()
    }

    /// A token of `authproxy:proxy-legacy`, an account with the legacy
    /// `impersonate` verb (where the proxy's own holds constrained
    /// impersonation only).
    pub fn legacy_proxy_token(&self) -> &str {
        &self.legacy_proxy_token
    }

    /// A new token of the proxy's service account, valid for an hour.
    pub async fn new_proxy_token(&self) -> anyhow::Result<String> {
        self.service_account_token("proxy").await
    }

    /// A new token of service account `name` in namespace `authproxy`
    /// (`proxy`, or `nobody`, which may do nothing), valid for an hour.
    pub async fn service_account_token(&self, name: &str) -> anyhow::Result<String> {
        // A TokenRequest, as `kubectl create token --duration=1h` sends it.
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        });
        let url = format!(
            "{}/api/v1/namespaces/authproxy/serviceaccounts/{name}/token",
            self.url()
        );
        let answers =
            crate::curl_sequence(&[self.admin_write("POST", "application/json", &request, &url)])
                .await?;
        let (code, body) = &answers[0];
        if *code != 201 {
            bail!("a token of service account {name}: HTTP {code} {body}");
        }
        let answer: Value = serde_json::from_str(body)
            .with_context(|| format!("a token of service account {name}: {body}"))?;
        answer["status"]["token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("a token of service account {name}: no token in {body}"))
    }

    /// A client certificate kube-apiserver's request-header authentication
    /// trusts (its CA is `--requestheader-client-ca-file`, its name
    /// [`FRONT_PROXY_CLIENT`] the allowed name), written to files under
    /// `name`.
    pub fn front_proxy_client(&self, name: &str) -> anyhow::Result<crate::pki::CertFiles> {
        self.front_proxy_pki
            .issue_client(name, FRONT_PROXY_CLIENT, None)
    }

    /// A client certificate from the request-header CA with a name kube
    /// does not allow.
    pub fn front_proxy_client_named(
        &self,
        name: &str,
        common_name: &str,
    ) -> anyhow::Result<crate::pki::CertFiles> {
        self.front_proxy_pki.issue_client(name, common_name, None)
    }

    /// `https://127.0.0.1:PORT` of kube-apiserver.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The test CA: it signed kube-apiserver's serving certificate, and kube
    /// trusts the client certificates and the webhook certificate it signs.
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The matching kubectl.
    pub fn kubectl(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// The admin's kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// A service-account token of the proxy's identity (`authproxy:proxy`).
    pub fn proxy_token(&self) -> &str {
        &self.proxy_token
    }

    /// Where kube-apiserver sends its TokenReviews (`https://ADDR/`, trusting
    /// this CA); nothing listens there until a test starts the webhook.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    /// Every audit event written so far (kube's `audit.k8s.io/v1` Events).
    pub fn audit_events(&self) -> anyhow::Result<Vec<Value>> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("audit line is not JSON"))
            .collect()
    }

    /// The audit events for which `matches` holds.
    pub fn audit_where(&self, matches: impl Fn(&Value) -> bool) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .audit_events()?
            .into_iter()
            .filter(|e| matches(e))
            .collect())
    }

    /// The audit events whose `userAgent` is `agent` (tests mark their curl
    /// requests with a unique user agent to find them).
    pub fn audit_by_agent(&self, agent: &str) -> anyhow::Result<Vec<Value>> {
        self.audit_where(|e| e["userAgent"] == agent)
    }

    /// Waits (10 s at most) until at least `count` audit events match, and
    /// returns all that match.
    pub async fn wait_audit(
        &self,
        count: usize,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let matches = &matches;
        crate::wait_for(Duration::from_secs(10), "audit events", || async move {
            let seen = self.audit_where(matches).map_err(|e| e.to_string())?;
            if seen.len() >= count {
                Ok(Some(seen))
            } else {
                Err(format!("{} of {count} events", seen.len()))
            }
        })
        .await
    }

    /// Waits for `count` audit events with user agent `agent`.
    pub async fn wait_audit_by_agent(
        &self,
        agent: &str,
        count: usize,
    ) -> anyhow::Result<Vec<Value>> {
        self.wait_audit(count, |e| e["userAgent"] == agent).await
    }
}

/// A marker unique to this process and call, to find a test's requests in
/// kube's audit log (as a curl user agent, or inside a label selector).
pub fn unique_marker(what: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{what}-{}-{n}", std::process::id())
}

/// The verbs of kube's resource requests, as `impersonate-on` takes them.
pub const RESOURCE_VERBS: [&str; 9] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
];

/// The verbs of kube's non-resource requests (the method in lower case).
pub const PATH_VERBS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

/// A ClusterRole `name` that may impersonate by constrained impersonation
/// only (the chart's `rbac.impersonation: constrained`): users, groups,
/// uids and `userextras/<key>` (RBAC matches subresources only by name or
/// by `*`), service accounts by name, for every request.
pub fn constrained_impersonator(name: &str) -> String {
    let modes = ["user-info", "serviceaccount"];
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {name}}}\nrules:\n\
         - apiGroups: [authentication.k8s.io]\n  resources: [\"*\"]\n  verbs: [\"impersonate:user-info\", \"impersonate:serviceaccount\"]\n\
         - apiGroups: [\"*\"]\n  resources: [\"*\"]\n  verbs: [{}]\n\
         - nonResourceURLs: [\"*\"]\n  verbs: [{}]\n",
        impersonate_on(&modes, &RESOURCE_VERBS),
        impersonate_on(&modes, &PATH_VERBS),
    )
}

/// `"impersonate-on:<mode>:<verb>"` for each mode and verb, as a YAML flow
/// sequence's items.
pub fn impersonate_on(modes: &[&str], verbs: &[&str]) -> String {
    modes
        .iter()
        .flat_map(|mode| {
            verbs
                .iter()
                .map(move |verb| format!("\"impersonate-on:{mode}:{verb}\""))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `kubectl auth can-i` question as the SelfSubjectAccessReview kubectl
/// sends for it.
struct AccessCheck {
    /// `--as`: the user the review is asked as.
    user: Option<String>,
    /// `--as-group`, each.
    groups: Vec<String>,
    /// The review.
    body: Value,
}

impl AccessCheck {
    /// Reads `VERB (TYPE[.GROUP][/NAME] | /URL) [-n NS | -A] [--subresource S]
    /// [--as USER] [--as-group G]...`. The namespace is `-n`'s, none with
    /// `-A`, else `default` (kubectl takes the kubeconfig's, which is that
    /// in the admin's); a type without a group must be one this table
    /// knows, rather than a guess that asks kube something else.
    fn parse(check: &[&str]) -> anyhow::Result<AccessCheck> {
        let mut words = Vec::new();
        let (mut namespace, mut subresource) = (Some("default".to_owned()), String::new());
        let (mut user, mut groups) = (None, Vec::new());
        let mut args = check.iter().copied();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with('-') => (flag, Some(value.to_owned())),
                _ => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next().map(str::to_owned))
                    .with_context(|| format!("can-i {check:?}: {flag} needs a value"))
            };
            match flag {
                "-n" | "--namespace" => namespace = Some(value()?),
                "-A" | "--all-namespaces" => namespace = None,
                "--subresource" => subresource = value()?,
                "--as" => user = Some(value()?),
                "--as-group" => groups.push(value()?),
                other if other.starts_with('-') => {
                    bail!("can-i {check:?}: {other} is not read here")
                }
                word => words.push(word),
            }
        }
        let [verb, what] = words[..] else {
            bail!("can-i {check:?}: a verb and a resource (or a /path) were expected");
        };
        let spec = if what.starts_with('/') {
            serde_json::json!({"nonResourceAttributes": {"verb": verb, "path": what}})
        } else {
            let (kind, name) = what.split_once('/').unwrap_or((what, ""));
            let (resource, group) = match kind.split_once('.') {
                Some((resource, group)) => (resource, group),
                None => (
                    kind,
                    Self::group_of(kind).with_context(|| {
                        format!("can-i {check:?}: name the API group of {kind} ({kind}.GROUP)")
                    })?,
                ),
            };
            serde_json::json!({"resourceAttributes": {
                "namespace": namespace.unwrap_or_default(),
                "verb": verb,
                "group": group,
                "resource": resource,
                "subresource": subresource,
                "name": name,
            }})
        };
        Ok(AccessCheck {
            user,
            groups,
            body: serde_json::json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": spec,
            }),
        })
    }

    /// The API group of the resource types the tests ask about.
    fn group_of(resource: &str) -> Option<&'static str> {
        match resource {
            "pods" | "configmaps" | "secrets" | "serviceaccounts" | "namespaces" | "nodes"
            | "services" | "events" => Some(""),
            // As kubectl asks of the legacy `impersonate` verb (constrained
            // impersonation names them in authentication.k8s.io).
            "users" | "groups" => Some(""),
            "subjectaccessreviews" | "selfsubjectaccessreviews" => Some("authorization.k8s.io"),
            "tokenreviews" | "selfsubjectreviews" => Some("authentication.k8s.io"),
            "deployments" | "daemonsets" => Some("apps"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AccessCheck;

    fn attributes(check: &[&str]) -> serde_json::Value {
        AccessCheck::parse(check).expect("read").body["spec"]["resourceAttributes"].clone()
    }

    #[test]
    fn a_can_i_question_is_read_as_kubectl_asks_it() {
        let review = AccessCheck::parse(&["impersonate", "users/carol", "--as", "alice"]).unwrap();
        assert_eq!(review.user.as_deref(), Some("alice"));
        assert!(review.groups.is_empty());
        assert_eq!(
            review.body["spec"]["resourceAttributes"],
            serde_json::json!({"namespace": "default", "verb": "impersonate", "group": "",
                "resource": "users", "subresource": "", "name": "carol"})
        );
        let exec = attributes(&[
            "create",
            "pods",
            "--subresource=exec",
            "-n",
            "ns-1",
            "--as",
            "bob",
        ]);
        assert_eq!(exec["subresource"], "exec");
        assert_eq!(exec["namespace"], "ns-1");
        assert_eq!(exec["name"], "");
        let spaced = attributes(&[
            "create",
            "pods",
            "--subresource",
            "attach",
            "--namespace=ns-2",
        ]);
        assert_eq!(
            (&spaced["subresource"], &spaced["namespace"]),
            (&"attach".into(), &"ns-2".into())
        );
        assert_eq!(attributes(&["list", "pods", "-A"])["namespace"], "");
        let grouped = attributes(&["get", "leases.coordination.k8s.io/x"]);
        assert_eq!(
            (&grouped["resource"], &grouped["group"]),
            (&"leases".into(), &"coordination.k8s.io".into())
        );
        assert_eq!(
            attributes(&["create", "subjectaccessreviews"])["group"],
            "authorization.k8s.io"
        );
        let groups = AccessCheck::parse(&[
            "get",
            "pods",
            "--as",
            "a",
            "--as-group",
            "g1",
            "--as-group=g2",
        ])
        .unwrap();
        assert_eq!(groups.groups, ["g1", "g2"]);
        let path = AccessCheck::parse(&["get", "/healthz"]).unwrap();
        assert_eq!(
            path.body["spec"]["nonResourceAttributes"],
            serde_json::json!({"verb": "get", "path": "/healthz"})
        );
    }

    #[test]
    fn a_can_i_question_it_cannot_read_is_refused() {
        for check in [
            &["get", "widgets"][..],
            &["impersonate", "uids"],
            &["get"],
            &["get", "pods", "extra"],
            &["get", "pods", "--as"],
            &["get", "pods", "--output", "x"],
        ] {
            assert!(AccessCheck::parse(check).is_err(), "{check:?}");
        }
    }
}
