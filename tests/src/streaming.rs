//! Support for the streaming tests (`tests/streaming*.rs`) and the streaming
//! benchmark: kubectl's ways to the pods of the test kubelet ([`Route`]),
//! `authproxy serve` as a child process whose cluster `edge` is reached
//! through `authproxy agent` children and `direct` straight
//! ([`AgentProxy`]), data that does not compress, and a process's resident
//! memory.

use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::Full;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdout};

use crate::kube::{kube, Kube};
use crate::{authproxy_binary, curl_with_ca, free_port, kubectl_command, write_user_kubeconfig};
use crate::{TestPki, USERS};

/// 100 MiB: what cp and the port-forwarded download carry.
pub const BIG: usize = 100 << 20;
/// A bound for one kubectl run (a hung stream fails the test, not the suite).
pub const BOUND: Duration = Duration::from_secs(60);
/// A bound for a run that moves [`BIG`] bytes.
pub const BIG_BOUND: Duration = Duration::from_secs(300);

/// alice may exec, attach, port-forward and read logs in `default`; bob
/// may only read pods; the agents' accounts may impersonate (constrained
/// impersonation only, the proxy's own role).
pub const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: streaming, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
- apiGroups: [""]
  resources: [pods/exec, pods/attach, pods/portforward]
  verbs: [get, create]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: streaming, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: streaming}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pods-read, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: pods-read, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pods-read}
subjects:
- {kind: User, name: bob, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: streaming-agent, namespace: authproxy}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: streaming-agent-2, namespace: authproxy}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: streaming-agent-impersonator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: authproxy-impersonator}
subjects:
- {kind: ServiceAccount, name: streaming-agent, namespace: authproxy}
- {kind: ServiceAccount, name: streaming-agent-2, namespace: authproxy}
"#;

/// The service accounts (in `authproxy`) the agents reach kube-apiserver
/// as: the first agent of an [`AgentProxy`] as the first, and so on.
pub const AGENT_ACCOUNTS: [&str; 2] = ["streaming-agent", "streaming-agent-2"];
/// The first agent's identity at kube-apiserver.
pub const AGENT_ACCOUNT: &str = "system:serviceaccount:authproxy:streaming-agent";
/// The agents' registration token at the proxy.
pub const AGENT_TOKEN: &str = "streaming-agent-registration-token-41c7";

/// The shared kube-apiserver, with the test kubelet registered and [`RBAC`]
/// in force.
pub async fn kube_with_kubelet() -> anyhow::Result<&'static Kube> {
    let kube = tokio::task::spawn_blocking(|| {
        let kube = kube()?;
        kube.kubelet()?;
        anyhow::Ok(kube)
    })
    .await??;
    kube.apply_rbac(
        RBAC,
        &[
            &["create", "pods", "--subresource=exec", "--as", "alice"][..],
            &["get", "pods", "--as", "bob"][..],
            &[
                "impersonate-on:user-info:list",
                "pods",
                "--as",
                AGENT_ACCOUNT,
            ][..],
            &[
                "impersonate-on:user-info:list",
                "pods",
                "--as",
                "system:serviceaccount:authproxy:streaming-agent-2",
            ][..],
        ],
    )
    .await?;
    Ok(kube)
}

/// One way kubectl reaches the pods.
pub struct Route {
    /// `direct-websocket`, `proxy-spdy`, ...
    pub name: String,
    /// The kubeconfig kubectl runs with.
    pub kubeconfig: PathBuf,
    /// kubectl's global flags for this route (a context, `--as`).
    pub flags: Vec<String>,
    /// SPDY instead of kubectl's default, WebSocket.
    pub spdy: bool,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Route {
    /// A route named `name` with `kubeconfig` and `flags`.
    pub fn new(name: &str, kubeconfig: PathBuf, flags: &[&str], spdy: bool) -> Route {
        Route {
            name: name.to_owned(),
            kubeconfig,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            spdy,
        }
    }

    /// kubectl with this route's kubeconfig, flags and protocol, and `args`
    /// (stdin null, stdout and stderr piped).
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<tokio::process::Command> {
        let mut cmd = kubectl_command()?;
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(&self.flags)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.protocol_env(cmd.as_std_mut());
        Ok(cmd)
    }

    /// Sets the environment that makes kubectl use this route's protocol.
    pub fn protocol_env(&self, cmd: &mut std::process::Command) {
        for var in [
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
        ] {
            if self.spdy {
                cmd.env(var, "false");
            } else {
                // kubectl's default
                cmd.env_remove(var);
            }
        }
    }

    /// Runs kubectl with `args`, feeding it `stdin` if given, bounded by `bound`.
    pub async fn run(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        bound: Duration,
    ) -> anyhow::Result<Output> {
        let mut cmd = self.kubectl(args)?;
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().context("running kubectl")?;
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(bytes).await?;
            // dropped: kubectl sees the end of its input
        }
        tokio::time::timeout(bound, child.wait_with_output())
            .await
            .with_context(|| format!("{self}: kubectl {args:?} did not finish in {bound:?}"))?
            .context("waiting for kubectl")
    }

    /// kubectl with `args`, its stdout as lines (stderr is read only at the
    /// end: keep it small), stdin piped if `stdin`.
    pub fn spawn_reading(
        &self,
        args: &[&str],
        stdin: bool,
    ) -> anyhow::Result<(Child, BufReader<ChildStdout>)> {
        let mut cmd = self.kubectl(args)?;
        if stdin {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().context("running kubectl")?;
        let stdout = child.stdout.take().context("kubectl stdout")?;
        Ok((child, BufReader::new(stdout)))
    }

    /// kubectl with `args` on a terminal of its own (util-linux `script`,
    /// so that kubectl asks for a TTY): `before` runs first in the
    /// terminal's shell (`stty cols 100` say); stdin, stdout and stderr piped.
    pub fn on_a_terminal(
        &self,
        args: &[&str],
        before: &str,
    ) -> anyhow::Result<tokio::process::Command> {
        crate::require_tool("script")?;
        let kubectl = crate::kube::kube_bin()?.join("kubectl");
        let quoted = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let line = [
            quoted(kubectl.to_str().context("kubectl path is not UTF-8")?),
            "--kubeconfig".to_owned(),
            quoted(self.kubeconfig.to_str().context("path is not UTF-8")?),
        ]
        .into_iter()
        .chain(self.flags.iter().map(|f| quoted(f)))
        .chain(args.iter().map(|a| quoted(a)))
        .collect::<Vec<_>>()
        .join(" ");
        let mut script = tokio::process::Command::new("script");
        script
            .args(["-qec", &format!("{before} {line}"), "/dev/null"])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.protocol_env(script.as_std_mut());
        Ok(script)
    }

    /// A name for this route's own pod for `what`.
    pub fn pod(&self, what: &str) -> String {
        format!("{what}-{}", self.name)
    }
}

/// Reads `stdout` line by line until a line equals `want`, adding the lines
/// read to `seen`; fails after [`BOUND`] with what it saw.
pub async fn read_until_line(
    stdout: &mut BufReader<ChildStdout>,
    want: &str,
    seen: &mut Vec<String>,
) -> anyhow::Result<()> {
    let found = tokio::time::timeout(BOUND, async {
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).await? == 0 {
                bail!("output ended");
            }
            let line = line.trim_end_matches('\n').to_owned();
            let done = line == want;
            seen.push(line);
            if done {
                return Ok(());
            }
        }
    })
    .await;
    match found {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => bail!("waiting for {want:?}: {e}; seen: {seen:?}"),
        Err(_) => bail!("{want:?} not seen within {BOUND:?}; seen: {seen:?}"),
    }
}

/// `kubectl port-forward pod/<pod> :<port>` on `route`: the child and the
/// local port kubectl listens on (its later output is read and dropped).
pub async fn port_forward(route: &Route, pod: &str, port: u16) -> anyhow::Result<(Child, u16)> {
    let (child, mut stdout) = route.spawn_reading(
        &["port-forward", &format!("pod/{pod}"), &format!(":{port}")],
        false,
    )?;
    // "Forwarding from 127.0.0.1:LOCAL -> PORT"
    let mut line = String::new();
    tokio::time::timeout(BOUND, stdout.read_line(&mut line))
        .await
        .with_context(|| format!("{route}: kubectl port-forward printed nothing"))??;
    let local = line
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|port| port.parse().ok())
        .with_context(|| format!("{route}: unexpected first line {line:?}"))?;
    // kubectl goes on writing a line per connection: read while it runs.
    tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut stdout, &mut sink).await;
    });
    Ok((child, local))
}

/// [`BIG`] bytes that do not compress, the same on every call.
pub fn big_data() -> &'static Bytes {
    static DATA: OnceLock<Bytes> = OnceLock::new();
    DATA.get_or_init(|| Bytes::from(incompressible(BIG)))
}

/// `len` bytes that do not compress (a seeded xorshift64*), the same for the
/// same length.
pub fn incompressible(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(len);
    data
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of the file at `path`, in hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// An HTTP/1.1 server on loopback: `/big` answers [`big_data`], any other
/// path `hello <path>`. Its port.
pub async fn http_server() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: http::Request<hyper::body::Incoming>| async move {
                        let body = if request.uri().path() == "/big" {
                            big_data().clone()
                        } else {
                            Bytes::from(format!("hello {}\n", request.uri().path()))
                        };
                        Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// The resident memory of process `pid`, in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the status of process {pid}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))?;
    Ok(kib * 1024)
}

/// Mounts a tmpfs of `$1` bytes at `$2`.
const MOUNT_TMPFS: &str = r#"mount -t tmpfs -o size="$1" authproxy-test "$2""#;

/// util-linux `unshare` arguments for a mount namespace where a tmpfs can
/// be mounted at `dir`: root's own (it needs `CAP_SYS_ADMIN`), or one in a
/// user namespace of its own (where unprivileged user namespaces are on),
/// whichever works here, tried first so that the test says why it cannot
/// run rather than time out.
fn small_disk_namespace(dir: &Path) -> anyhow::Result<Vec<&'static str>> {
    let mut tried = Vec::new();
    for args in [
        &["--mount", "--propagation", "private"][..],
        &["--map-root-user", "--mount", "--propagation", "private"][..],
    ] {
        let out = std::process::Command::new("unshare")
            .args(args)
            .args(["sh", "-c", MOUNT_TMPFS, "sh", "4096"])
            .arg(dir)
            .output()
            .context("running unshare (util-linux)")?;
        if out.status.success() {
            return Ok(args.to_vec());
        }
        tried.push(format!(
            "unshare {}: {}",
            args.join(" "),
            crate::output_text(&out)
        ));
    }
    bail!(
        "this test needs a mount namespace with a tmpfs (root with CAP_SYS_ADMIN, or unprivileged user namespaces): {}",
        tried.join("; ")
    )
}

/// A running `authproxy agent`.
struct RunningAgent {
    child: Child,
    log: PathBuf,
}

/// `authproxy serve` as a child process on loopback, with two clusters:
/// `edge`, reached only through `authproxy agent` children (each its own
/// service account from [`AGENT_ACCOUNTS`], impersonating the caller), and
/// `direct`, reached straight with the proxy's own service account token.
/// Its `/metrics` listen on a port of their own. Killed when dropped.
pub struct AgentProxy {
    pki: TestPki,
    dir: tempfile::TempDir,
    proxy: Child,
    port: u16,
    metrics_port: u16,
    agents: Vec<Option<RunningAgent>>,
    kube: &'static Kube,
}

impl AgentProxy {
    /// Starts the proxy with `extra` appended to its configuration (top-level
    /// YAML, `limits: {...}` say) and one agent, and waits until kube answers
    /// through it.
    pub async fn start(kube: &'static Kube, extra: &str) -> anyhow::Result<AgentProxy> {
        AgentProxy::start_with(kube, extra, None).await
    }

    /// As [`Self::start`], with the proxy in a mount namespace of its own
    /// where `dir` is a tmpfs of `bytes` (a small disk that fills up); what
    /// the proxy writes there is read at [`Self::proxy_path`].
    pub async fn start_on_small_disk(
        kube: &'static Kube,
        extra: &str,
        dir: &Path,
        bytes: u64,
    ) -> anyhow::Result<AgentProxy> {
        AgentProxy::start_with(kube, extra, Some((dir, bytes))).await
    }

    /// `path` as the proxy sees it (through `/proc/<pid>/root`, so inside
    /// its mount namespace).
    pub fn proxy_path(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let pid = self.proxy_pid()?;
        let path = std::fs::canonicalize(path)?;
        let path = path.as_path();
        Ok(PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path)))
    }

    async fn start_with(
        kube: &'static Kube,
        extra: &str,
        small_disk: Option<(&Path, u64)>,
    ) -> anyhow::Result<AgentProxy> {
        let pki = TestPki::new()?;
        let dir = tempfile::tempdir()?;
        let cert = pki.issue_server("proxy")?;
        let mut csv = String::new();
        for (token, name, uid, groups) in USERS {
            csv.push_str(&format!("{token},{name},{uid},\"{groups}\"\n"));
        }
        std::fs::write(dir.path().join("tokens.csv"), csv)?;
        std::fs::write(dir.path().join("edge.token"), AGENT_TOKEN)?;
        std::fs::write(dir.path().join("direct.token"), kube.proxy_token())?;
        let (port, metrics_port) = (free_port()?, free_port()?);
        let yaml = format!(
            "listen: 127.0.0.1:{port}\n\
             tls: {{certFile: {cert}, keyFile: {key}, clientCAFile: {ca}}}\n\
             upstreams:\n\
             - {{name: edge, via: agent, agent: {{tokenFile: edge.token}}}}\n\
             - {{name: direct, url: '{kube_url}', caFile: {kube_ca}, tokenFile: direct.token}}\n\
             authentication:\n  clientCertificates: true\n  staticTokens: {{file: tokens.csv}}\n\
             metrics: {{listen: '127.0.0.1:{metrics_port}'}}\n\
             identityHeaders: {{rbac: constrained}}\n\
             shutdownTimeout: 1s\n\
             {extra}\n",
            cert = cert.cert_path.display(),
            key = cert.key_path.display(),
            kube_url = kube.url(),
            kube_ca = kube.pki().ca_path().display(),
            ca = pki.ca_path().display(),
        );
        std::fs::write(dir.path().join("authproxy.yaml"), yaml)?;
        let log = std::fs::File::create(dir.path().join("proxy.log"))?;
        let mut command = match small_disk {
            None => tokio::process::Command::new(authproxy_binary()?),
            Some((disk, bytes)) => {
                let disk = std::fs::canonicalize(disk)?;
                let mut command = tokio::process::Command::new("unshare");
                command
                    .args(small_disk_namespace(&disk)?)
                    .args(["sh", "-c"])
                    .arg(format!("{MOUNT_TMPFS} && shift 2 && exec \"$@\""))
                    .arg("sh")
                    .arg(bytes.to_string())
                    .arg(&disk)
                    .arg(authproxy_binary()?);
                command
            }
        };
        let proxy = command
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("authproxy.yaml"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting authproxy serve")?;
        let mut env = AgentProxy {
            pki,
            dir,
            proxy,
            port,
            metrics_port,
            agents: Vec::new(),
            kube,
        };
        for cluster in ["edge", "direct"] {
            write_user_kubeconfig(
                &env.kubeconfig(cluster),
                &format!("{}/k8s/clusters/{cluster}", env.url()),
                env.pki.ca_path(),
            )?;
        }
        env.start_agent().await?;
        env.wait_tunnels(1).await?;
        Ok(env)
    }

    /// The proxy's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The proxy's CA, which also signs the client certificates it takes
    /// (CN: user, O: group).
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The CA of the proxy's certificate.
    pub fn ca_path(&self) -> &Path {
        self.pki.ca_path()
    }

    /// The CA of the proxy's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.pki.ca_pem()
    }

    /// A kubeconfig for `cluster` (`edge` or `direct`) with a context per
    /// test user (alice's the current one).
    pub fn kubeconfig(&self, cluster: &str) -> PathBuf {
        self.dir.path().join(format!("{cluster}.kubeconfig"))
    }

    /// A folder that lives as long as this proxy.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The proxy's process id.
    pub fn proxy_pid(&self) -> anyhow::Result<u32> {
        self.proxy.id().context("the proxy has exited")
    }

    /// The process id of agent `n` (from 0, in the order started).
    pub fn agent_pid(&self, n: usize) -> anyhow::Result<u32> {
        self.agents
            .get(n)
            .and_then(Option::as_ref)
            .and_then(|agent| agent.child.id())
            .with_context(|| format!("agent {n} is not running"))
    }

    /// The proxy's log so far.
    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// The logs of the agents so far.
    pub fn agent_logs(&self) -> String {
        self.agents
            .iter()
            .flatten()
            .map(|agent| std::fs::read_to_string(&agent.log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// Starts the next agent for `edge`, as the next of [`AGENT_ACCOUNTS`];
    /// its number. It connects in the background: see [`Self::wait_tunnels`].
    pub async fn start_agent(&mut self) -> anyhow::Result<usize> {
        let n = self.agents.len();
        let account = AGENT_ACCOUNTS
            .get(n)
            .with_context(|| format!("no service account for agent {n}"))?;
        let token = self.kube.service_account_token(account).await?;
        let kubeconfig = self.dir.path().join(format!("agent-{n}.kubeconfig"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: kube\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: kube\n  context: {{cluster: kube, user: agent}}\ncurrent-context: kube\n",
                self.kube.url(),
                self.kube.pki().ca_path().display()
            ),
        )?;
        let log = self.dir.path().join(format!("agent-{n}.log"));
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(authproxy_binary()?)
            .arg("agent")
            .args(["--proxy-url", &self.url()])
            .arg("--proxy-ca-file")
            .arg(self.pki.ca_path())
            .arg("--token-file")
            .arg(self.dir.path().join("edge.token"))
            .args(["--cluster", "edge"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--backoff-base", "100ms", "--backoff-max", "1s"])
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .context("starting authproxy agent")?;
        self.agents.push(Some(RunningAgent { child, log }));
        Ok(n)
    }

    /// Kills agent `n` (SIGKILL: its tunnel ends without goodbye).
    pub async fn kill_agent(&mut self, n: usize) -> anyhow::Result<()> {
        let mut agent = self
            .agents
            .get_mut(n)
            .and_then(Option::take)
            .with_context(|| format!("agent {n} is not running"))?;
        agent.child.kill().await?;
        Ok(())
    }

    /// `/metrics` of the proxy.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .kill_on_drop(true)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Waits until `edge` has `count` tunnels connected and kube answers
    /// through them.
    pub async fn wait_tunnels(&self, count: usize) -> anyhow::Result<()> {
        let want = format!("authproxy_tunnels_connected{{cluster=\"edge\"}} {count}\n");
        let version = format!("{}/k8s/clusters/edge/version", self.url());
        let ready = crate::wait_for(Duration::from_secs(30), "the agents' tunnels", || {
            let (want, version) = (want.clone(), version.clone());
            async move {
                let metrics = self.metrics().await.map_err(|e| e.to_string())?;
                if !metrics.contains(&want) {
                    return Err(metrics
                        .lines()
                        .filter(|l| l.starts_with("authproxy_tunnels_connected"))
                        .collect::<Vec<_>>()
                        .join(", "));
                }
                match curl_with_ca(
                    self.pki.ca_path(),
                    &["-H", "Authorization: Bearer alice-token", &version],
                )
                .await
                {
                    Ok((200, _)) => Ok(Some(())),
                    Ok((code, body)) => Err(format!("{code} {body}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        if let Err(e) = ready {
            bail!(
                "{e:#}\nproxy log:\n{}\nagent logs:\n{}",
                self.proxy_log(),
                self.agent_logs()
            );
        }
        Ok(())
    }
}
