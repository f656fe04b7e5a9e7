//! Test support for authproxy's end-to-end tests: starts the real parts on
//! loopback (the API-server double, authproxy itself) and runs real clients
//! (curl, kubectl) against them.
//!
//! Every wait is a bounded poll that fails with what it saw; a missing tool is
//! a failed test that says how to install it, never a skip.

pub mod apiserver;
pub mod helm;
pub mod jwt_issuer;
pub mod kube;
pub mod netns;
pub mod observe;
pub mod oidc;
pub mod pki;
pub mod self_review;
pub mod slapd;
pub mod streaming;
pub mod upgrade;
pub mod watchers;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
/// The double, under the name the tests use.
pub use apiserver as double;
pub use apiserver::{RecordedRequest, RunningDouble, UserInfo};
use authproxy::config::FileConfig;
use authproxy::server::RunningServer;
pub use pki::TestPki;

/// The proxy's service-account identity at the double.
pub const PROXY_USER: &str = "system:serviceaccount:authproxy:proxy";
/// The proxy's first token at the double.
pub const PROXY_TOKEN: &str = "proxy-token-one";

/// The command that installs every test dependency.
pub const INSTALL_HINT: &str = "run `scripts/test.sh` (it installs curl, slapd and node packages and builds kube-apiserver, kubectl and etcd)";

/// Fails with an install hint when `tool` is not on PATH.
pub fn require_tool(tool: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("`{tool}` is not installed; {INSTALL_HINT}");
    }
    Ok(())
}

/// Polls `check` every 20ms until it returns `Some`, failing after `limit`
/// with the last thing `describe` reports.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let start = Instant::now();
    let mut last = String::from("nothing yet");
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(seen) => last = seen,
        }
        if start.elapsed() > limit {
            bail!("{what}: not seen within {limit:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port free at the time of asking, for a server a test starts
/// (kube-apiserver, etcd, slapd, the OpenID provider) that binds it later.
///
/// Test binaries run several at once (scripts/suite.sh), so a port is kept
/// from the others until this process exits: each is claimed by binding an
/// abstract Unix socket named after it (exclusive across processes, gone
/// when this one exits). And where the kernel leaves room, it comes from
/// outside the ephemeral range (where `bind(0)` and outgoing connections
/// draw theirs), so nothing else is handed it between this check and the
/// server's bind.
pub fn free_port() -> anyhow::Result<u16> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
    static HELD: std::sync::Mutex<Vec<UnixListener>> = std::sync::Mutex::new(Vec::new());
    let claim = |port: u16| -> anyhow::Result<bool> {
        let name = UnixAddr::from_abstract_name(format!("authproxy-test-port-{port}"))?;
        match UnixListener::bind_addr(&name) {
            Ok(claimed) => {
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                    return Ok(false); // in use by something else; the claim goes
                }
                HELD.lock().unwrap_or_else(|e| e.into_inner()).push(claimed);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(false),
            Err(e) => Err(e).context("claiming a test port"),
        }
    };
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut bounds = range.split_whitespace().map(|b| b.parse::<u16>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32_768, 60_999));
    // The room below the range (from 10000), else above it.
    let (first, span) = if low > 11_000 {
        (10_000, low - 10_000)
    } else if high < 64_000 {
        (high + 1, u16::MAX - high)
    } else {
        (0, 0)
    };
    if span > 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Spread the processes' starting points: pid and clock.
        let mut state = (u64::from(std::process::id()) << 32 | u64::from(nanos)) | 1;
        for _ in 0..4 * u32::from(span) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let port = first + (state % u64::from(span)) as u16;
            if claim(port)? {
                return Ok(port);
            }
        }
    }
    // No room outside the ephemeral range: the kernel's pick, still claimed.
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if claim(port)? {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port left to claim")
}

/// The users the tests log in as: (token, name, uid, groups).
pub const USERS: [(&str, &str, &str, &str); 4] = [
    ("alice-token", "alice", "1001", "devs"),
    ("bob-token", "bob", "1002", ""),
    ("admin-token", "root", "0", "admins"),
    // A name holding a control character: kube could not receive it intact.
    ("bell-token", "mal\u{7}lory", "1003", "devs"),
];

/// One test's world: CA, the API-server double, authproxy in front of it.
pub struct Env {
    /// Test CA and certificates.
    pub pki: TestPki,
    /// The API-server double.
    pub double: RunningDouble,
    /// authproxy, in process, over real TLS on loopback.
    pub proxy: Option<RunningServer>,
    /// The folder of config, token and kubeconfig files.
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Starts the double and authproxy with static tokens and client certificates.
    pub async fn start() -> anyhow::Result<Env> {
        Self::start_with(TestPki::new()?, "").await
    }

    /// Like [`Env::start`] with more `authentication:` settings: `extra_auth`
    /// is YAML (or JSON) lines already indented by two spaces.
    pub async fn start_with(pki: TestPki, extra_auth: &str) -> anyhow::Result<Env> {
        let server_cert = pki.issue_server("apiserver")?;
        let tls = pki::server_config(&server_cert, &[b"h2", b"http/1.1"])?;
        let config = double::DoubleConfig::new(tls).with_token(
            PROXY_TOKEN,
            UserInfo {
                username: PROXY_USER.into(),
                uid: String::new(),
                groups: vec!["system:serviceaccounts".into()],
                extra: Default::default(),
            },
        );
        let double = double::start(config).await?;
        let dir = tempfile::tempdir()?;
        let proxy = start_proxy(
            &pki,
            dir.path(),
            &double.url(),
            pki.ca_path(),
            PROXY_TOKEN,
            extra_auth,
        )
        .await?;
        let env = Env {
            pki,
            double,
            proxy: Some(proxy),
            dir,
        };
        write_user_kubeconfig(&env.kubeconfig(), &env.proxy_url(), env.pki.ca_path())?;
        Ok(env)
    }

    /// Another authproxy in front of the same double, its files in `dir`,
    /// with `top_level` YAML added to its configuration.
    pub async fn another_proxy(
        &self,
        dir: &Path,
        top_level: &str,
    ) -> anyhow::Result<RunningServer> {
        start_proxy_with_top_level(
            &self.pki,
            dir,
            &self.double.url(),
            self.pki.ca_path(),
            PROXY_TOKEN,
            "",
            top_level,
        )
        .await
    }

    /// `https://127.0.0.1:PORT` of authproxy.
    pub fn proxy_url(&self) -> String {
        let addr = self
            .proxy
            .as_ref()
            .map(|p| p.addr())
            .expect("proxy running");
        format!("https://{addr}")
    }

    /// A kubeconfig pointing at authproxy with one context per test user.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Runs curl against authproxy with the test CA; `args` follow the CA
    /// option. Returns (HTTP status, body). `-w` writes the status last.
    pub async fn curl(&self, args: &[&str]) -> anyhow::Result<(u16, String)> {
        curl_with_ca(self.pki.ca_path(), args).await
    }

    /// Runs kubectl with the test kubeconfig.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        kubectl_with(&self.kubeconfig(), args).await
    }

    /// Requests the double received, in order.
    pub fn upstream_requests(&self) -> Vec<RecordedRequest> {
        self.double.requests()
    }
}

/// Starts authproxy in process in front of `upstream_url` (trusting
/// `upstream_ca`, presenting `upstream_token`), with a serving certificate from
/// `pki`, client certificates from `pki`, the static tokens of [`USERS`], and
/// more `authentication:` settings in `extra_auth` (YAML lines indented by two
/// spaces; lines that follow at column 0 are top-level settings, such as
/// `limits:`). Its files go to `dir`, the config as `authproxy.yaml`, which
/// is watched and reloaded as `authproxy serve` does.
pub async fn start_proxy(
    pki: &TestPki,
    dir: &Path,
    upstream_url: &str,
    upstream_ca: &Path,
    upstream_token: &str,
    extra_auth: &str,
) -> anyhow::Result<RunningServer> {
    start_proxy_with_top_level(
        pki,
        dir,
        upstream_url,
        upstream_ca,
        upstream_token,
        extra_auth,
        "",
    )
    .await
}

/// Like [`start_proxy`], with `top_level` YAML appended at the top level of
/// the config (`metrics:`, `audit:`, `limits:`).
pub async fn start_proxy_with_top_level(
    pki: &TestPki,
    dir: &Path,
    upstream_url: &str,
    upstream_ca: &Path,
    upstream_token: &str,
    extra_auth: &str,
    top_level: &str,
) -> anyhow::Result<RunningServer> {
    std::fs::write(dir.join("proxy-token"), upstream_token)?;
    let upstream = format!(
        "{{url: '{upstream_url}', caFile: {}, tokenFile: proxy-token, tokenReloadInterval: 50ms, connectTimeout: 2s}}",
        upstream_ca.display()
    );
    start_proxy_with_upstream(pki, dir, &upstream, extra_auth, top_level).await
}

/// Like [`start_proxy_with_top_level`] with the whole `upstream:` section
/// given (a flow mapping).
pub async fn start_proxy_with_upstream(
    pki: &TestPki,
    dir: &Path,
    upstream: &str,
    extra_auth: &str,
    top_level: &str,
) -> anyhow::Result<RunningServer> {
    let proxy_cert = pki.issue_server("proxy")?;
    let mut csv = String::new();
    for (token, name, uid, groups) in USERS {
        csv.push_str(&format!("{token},{name},{uid},\"{groups}\"\n"));
    }
    std::fs::write(dir.join("tokens.csv"), csv)?;
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         tls: {{certFile: {cert}, keyFile: {key}, clientCAFile: {ca}}}\n\
         upstream: {upstream}\n\
         authentication:\n  clientCertificates: true\n  staticTokens: {{file: tokens.csv, reloadInterval: 50ms}}\n{extra_auth}\n\
         shutdownTimeout: 2s\n{top_level}\n",
        cert = proxy_cert.cert_path.display(),
        key = proxy_cert.key_path.display(),
        ca = pki.ca_path().display(),
    );
    let config_path = dir.join("authproxy.yaml");
    std::fs::write(&config_path, yaml)?;
    let config = FileConfig::load(&config_path)?;
    // Watching its file as `authproxy serve` does (tests/shared_kube/reload.rs edits it).
    let source = authproxy::reload::ConfigSource {
        path: config_path,
        flags: Default::default(),
    };
    Ok(authproxy::server::start_watching(&config, source).await?)
}

/// Writes a kubeconfig for `server` (trusting `ca`) with one token context
/// per test user (the current one is alice).
pub fn write_user_kubeconfig(path: &Path, server: &str, ca: &Path) -> anyhow::Result<()> {
    let mut users = String::new();
    let mut contexts = String::new();
    for (token, name, _, _) in USERS
        .into_iter()
        .filter(|u| !u.1.contains(char::is_control))
    {
        users.push_str(&format!("- name: {name}\n  user:\n    token: {token}\n"));
        contexts.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: proxy\n    user: {name}\n    namespace: default\n"
        ));
    }
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n{users}contexts:\n{contexts}current-context: alice\n",
        ca.display()
    );
    std::fs::write(path, text)?;
    Ok(())
}

/// The kubectl built with kube-apiserver (see [`kube::kube_bin`]), without
/// a `KUBECONFIG` from the environment, killed if dropped.
pub fn kubectl_command() -> anyhow::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(kube::kube_bin()?.join("kubectl"));
    cmd.env_remove("KUBECONFIG").kill_on_drop(true);
    Ok(cmd)
}

/// Runs kubectl with `kubeconfig` and `args`, bounded by 30 s.
pub async fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = kubectl_command()?;
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    let output = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .context("kubectl did not finish in 30s")??;
    Ok(output)
}

/// Runs curl with `--cacert ca` and returns (status, body).
pub async fn curl_with_ca(ca: &Path, args: &[&str]) -> anyhow::Result<(u16, String)> {
    require_tool("curl")?;
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(args)
        .args(["-w", "\n%{http_code}"])
        .kill_on_drop(true);
    let output = cmd.output().await.context("running curl")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    let code: u16 = code.trim().parse().with_context(|| {
        format!(
            "curl printed no status; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if code == 0 {
        bail!(
            "curl got no HTTP answer: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((code, body.to_owned()))
}

/// This package's folder (`tests/`) in the checkout under test, found when a
/// test runs, not when it was built.
///
/// A test binary may come from a build folder kept across checkouts of the
/// same sources (CI keeps one across its clones, and builds again only what
/// changed), so `env!("CARGO_MANIFEST_DIR")` may name a checkout that is
/// gone. cargo runs a test or a bench in its package's folder and names it
/// in `CARGO_MANIFEST_DIR`; `scripts/suite.sh` runs each test binary in that
/// folder. A bench of another package of the workspace (`benches/`) finds
/// this one beside its own.
///
/// # Panics
/// When neither that folder nor its sibling `tests/` is this package's.
pub fn package_dir() -> PathBuf {
    // Found once per process: every fixture, chart and kube binary asks.
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND.get_or_init(find_package_dir).clone()
}

/// [`package_dir`], looked for.
fn find_package_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    let is_this_package = |dir: &Path| {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .is_ok_and(|m| m.lines().any(|l| l.trim() == "name = \"authproxy-tests\""))
    };
    [dir.clone(), dir.join("../tests")]
        .into_iter()
        .find(|d| is_this_package(d))
        .unwrap_or_else(|| {
            panic!(
                "neither {} nor its sibling tests/ is the authproxy-tests package's folder: run from the workspace's packages (as cargo does), or set CARGO_MANIFEST_DIR",
                dir.display()
            )
        })
}

/// The modules of a test binary made of a folder under `tests/tests/` (a
/// `main.rs` and one file per module): each file's path and text, once
/// every one is found declared in `main.rs` (a file it leaves out would
/// never run).
pub fn binary_modules(folder: &str) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let dir = package_dir().join("tests").join(folder);
    let main = std::fs::read_to_string(dir.join("main.rs"))?;
    let mut modules = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("a module's file name")?;
        if stem == "main" {
            continue;
        }
        anyhow::ensure!(
            main.contains(&format!("\nmod {stem};\n")),
            "{} is not a module of this binary (it would never run)",
            path.display()
        );
        let text = std::fs::read_to_string(&path)?;
        modules.push((path, text));
    }
    Ok(modules)
}

/// One transfer of [`curl_sequence`]: the CA it trusts and the rest of its
/// arguments (method, headers, client certificate, body, URL).
pub struct Transfer<'a> {
    /// The CA that signed the server's certificate.
    pub ca: &'a Path,
    /// curl arguments of this transfer alone, its URL included.
    pub args: Vec<String>,
}

/// Runs `transfers` one after another, in order, in one curl process
/// (`--next` between them), and returns each one's (status, body).
///
/// Each transfer keeps its own options, as a curl of its own would; curl
/// reuses a connection where host and TLS settings match. A suite that sends
/// hundreds of requests in sequence spares a process start for each (most of
/// a curl's CPU is its start).
pub async fn curl_sequence(transfers: &[Transfer<'_>]) -> anyhow::Result<Vec<(u16, String)>> {
    require_tool("curl")?;
    if transfers.is_empty() {
        return Ok(Vec::new());
    }
    let bodies = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new("curl");
    for (i, transfer) in transfers.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--max-time", "20", "--cacert"])
            .arg(transfer.ca)
            .args(&transfer.args)
            .arg("-o")
            .arg(bodies.path().join(i.to_string()))
            .args(["-w", "%{http_code}\\n"]);
    }
    let timeout = Duration::from_secs(20 * transfers.len() as u64 + 10);
    let output = tokio::time::timeout(timeout, cmd.kill_on_drop(true).output())
        .await
        .context("curl did not finish in time")?
        .context("running curl")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let codes: Vec<&str> = stdout.lines().collect();
    if codes.len() != transfers.len() {
        bail!(
            "curl printed {} statuses for {} transfers; stderr: {}",
            codes.len(),
            transfers.len(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut answers = Vec::with_capacity(codes.len());
    for (i, code) in codes.into_iter().enumerate() {
        let code: u16 = code
            .trim()
            .parse()
            .with_context(|| format!("curl printed {code:?} as transfer {i}'s status"))?;
        if code == 0 {
            // Named by its URL (its last argument): the others may hold
            // a credential.
            bail!(
                "curl got no HTTP answer to transfer {i} ({}): {}",
                transfers[i]
                    .args
                    .last()
                    .map(String::as_str)
                    .unwrap_or_default(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let body = std::fs::read(bodies.path().join(i.to_string())).unwrap_or_default();
        answers.push((code, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(answers)
}

/// Text of a process's stdout and stderr, for assertions and messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `authproxy` binary of this build (`cargo test --workspace` builds it
/// before any test runs).
pub fn authproxy_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target folder")?;
    let binary = dir.join("authproxy");
    if !binary.is_file() {
        bail!(
            "{} is missing: run `cargo build -p proxy-bin` (scripts/test.sh builds it)",
            binary.display()
        );
    }
    Ok(binary)
}
