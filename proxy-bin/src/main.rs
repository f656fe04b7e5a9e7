//! `authproxy`: authenticates people in front of a Kubernetes API server and
//! forwards their requests with impersonation headers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use authproxy::config::{FileConfig, LogFormat};
use authproxy::reload::ConfigSource;
use authproxy::{demo, logging, server};
use base64::Engine as _;
use clap::{Parser, Subcommand};

// The global allocator, chosen by feature (see the `watch_memory` bench for
// the figures behind the default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "authproxy",
    version,
    about = "Authentication and impersonation proxy for the Kubernetes API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The configuration file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        oidc: OidcArgs,
    },
    /// Check a configuration file and report every problem.
    CheckConfig {
        /// The configuration file (YAML).
        file: PathBuf,
        #[command(flatten)]
        oidc: OidcArgs,
    },
    /// Serve kube-apiserver's TokenReview webhook with the same authenticators.
    Webhook {
        /// The configuration file (YAML); `upstream` and `listen` are not used.
        #[arg(long, short)]
        config: PathBuf,
        /// Where the webhook listens (loopback by default).
        #[arg(long, default_value = authproxy::webhook::DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[command(flatten)]
        oidc: OidcArgs,
    },
    /// kubectl exec credential plugin: print an ExecCredential for kubectl.
    Login {
        #[command(subcommand)]
        method: LoginMethod,
    },
    /// Write a kubeconfig whose user runs `authproxy login`.
    Kubeconfig {
        /// The proxy's URL.
        #[arg(long)]
        server: String,
        /// CA bundle of the proxy's certificate.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Name of the cluster, user and context.
        #[arg(long, default_value = "authproxy")]
        name: String,
        /// Where to write it (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Log in with OIDC at this issuer instead of LDAP.
        #[arg(long)]
        oidc_issuer: Option<String>,
        /// The OIDC client ID (with --oidc-issuer).
        #[arg(long, default_value = "kubernetes")]
        oidc_client_id: String,
        /// CA bundle of the OIDC issuer (with --oidc-issuer).
        #[arg(long)]
        oidc_ca_file: Option<PathBuf>,
        /// Also a context `<name>-direct` for the API server itself (its
        /// authentication webhook is `authproxy webhook`), sharing the same login:
        /// the cluster stays reachable when the proxy is not.
        #[arg(long)]
        direct_server: Option<String>,
        /// CA bundle of the API server's certificate (with --direct-server).
        #[arg(long, requires = "direct_server")]
        direct_ca_file: Option<PathBuf>,
        /// Use the device-authorization flow (headless) instead of a browser.
        #[arg(long)]
        device: bool,
        /// A cluster named in the proxy's `upstreams:` (repeatable): one
        /// cluster and context `<name>-<cluster>` each, at
        /// `<server>/k8s/clusters/<cluster>`, sharing the same login.
        #[arg(long = "cluster", value_name = "CLUSTER")]
        clusters: Vec<String>,
        /// The proxy's configuration file: a context for every cluster of its
        /// `upstreams:` (as if each were given with --cluster).
        #[arg(long = "proxy-config", value_name = "FILE")]
        proxy_config: Option<PathBuf>,
        /// Put the CA bundles in the file itself (certificate-authority-data,
        /// and --ca-data for the login), not paths of this machine: a
        /// kubeconfig to hand out.
        #[arg(long)]
        embed_certs: bool,
        /// The command kubectl runs to log in (default: `authproxy` when it is
        /// on PATH, else this binary's absolute path).
        #[arg(long)]
        command: Option<String>,
        /// Scopes the OIDC login asks for (with --oidc-issuer).
        #[arg(long, requires = "oidc_issuer")]
        scopes: Option<String>,
    },
    /// Run in a cluster the proxy cannot reach: dial the proxy, register
    /// with the cluster's token and serve the requests it sends through the
    /// tunnel to this cluster's API server.
    Agent(authproxy::agent::AgentArgs),
    /// Revoke the token `authproxy login ldap` keeps for a proxy, and
    /// forget it: the next kubectl command asks for a login again.
    Logout {
        #[command(flatten)]
        proxy: ProxyAt,
    },
    /// Tokens the proxy issued (`issuedTokens`).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Recorded exec and attach sessions (`sessionRecording`).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Run the proxy in front of an embedded demo API server, and print
    /// commands that show it at work.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Revoke issued tokens on every replica and webhook
    /// (`issuedTokens.revocation`). A token's own session needs only the
    /// token; anything else needs a credential whose user kube lets create
    /// `revocations.authproxy.io` in the store's namespace.
    Revoke {
        #[command(flatten)]
        proxy: ProxyAt,
        /// Revoke the issued token in this file (its session).
        #[arg(long, group = "what")]
        token_file: Option<PathBuf>,
        /// Revoke one session by its ID (the token's `sid`).
        #[arg(long, group = "what")]
        session: Option<String>,
        /// Revoke every token of this user issued until now.
        #[arg(long, group = "what")]
        user: Option<String>,
        /// Revoke every token issued until this time (RFC 3339, e.g.
        /// 2026-12-06T10:00:00Z).
        #[arg(long, group = "what")]
        issued_before: Option<String>,
        /// The credential to revoke with: a bearer token in this file (else
        /// AUTHPROXY_BEARER_TOKEN, else the login `authproxy login ldap`
        /// keeps for the server).
        #[arg(long)]
        bearer_token_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Replay a recording (an asciicast v2 file) on this terminal, at the
    /// pace it was recorded.
    Play {
        /// The recording (`<audit-id>.cast`).
        file: PathBuf,
        /// How much faster than recorded (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// The longest pause between two outputs, in seconds, whatever the
        /// recording says.
        #[arg(long, default_value_t = 2.0)]
        idle_limit: f64,
        /// Print the output at once, without pauses.
        #[arg(long)]
        instant: bool,
    },
}

#[derive(Subcommand)]
enum LoginMethod {
    /// Sign in at an OIDC issuer (authorization code + PKCE in a browser, or
    /// the device flow) and hand kubectl the ID token; refresh tokens are used.
    Oidc {
        /// The issuer URL.
        #[arg(long)]
        issuer: String,
        /// The OIDC client ID.
        #[arg(long, default_value = "kubernetes")]
        client_id: String,
        /// CA bundle of the issuer.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// The issuer's CA bundle as base64 of its PEM (instead of --ca-file).
        #[arg(long)]
        ca_data: Option<String>,
        /// Use the device-authorization flow instead of a browser.
        #[arg(long)]
        device: bool,
        /// Scopes to ask for.
        #[arg(long, default_value = "openid email groups offline_access")]
        scopes: String,
    },
    /// Exchange an LDAP username/password (AUTHPROXY_USERNAME/AUTHPROXY_PASSWORD, or a prompt) for an issued token.
    Ldap {
        #[command(flatten)]
        proxy: ProxyAt,
    },
}

/// The proxy a client command talks to.
#[derive(clap::Args, Debug)]
struct ProxyAt {
    /// The proxy's URL.
    #[arg(long)]
    server: String,
    /// CA bundle of the proxy's certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The proxy's CA bundle as base64 of its PEM (instead of --ca-file).
    #[arg(long)]
    ca_data: Option<String>,
}

impl ProxyAt {
    fn ca(&self) -> anyhow::Result<Option<authproxy::login::CaBundle>> {
        authproxy::login::CaBundle::from_args(self.ca_file.as_deref(), self.ca_data.as_deref())
    }
}

/// kube-apiserver's OIDC flags, same names and meanings; they add one issuer.
#[derive(clap::Args, Debug, Default)]
struct OidcArgs {
    /// The issuer URL; the token's `iss` must equal it.
    #[arg(long = "oidc-issuer-url")]
    issuer_url: Option<String>,
    /// The client ID: the token's `aud` must contain it.
    #[arg(long = "oidc-client-id")]
    client_id: Option<String>,
    /// PEM CA bundle for the issuer's TLS.
    #[arg(long = "oidc-ca-file")]
    ca_file: Option<PathBuf>,
    /// The claim used as user name (default `sub`).
    #[arg(long = "oidc-username-claim")]
    username_claim: Option<String>,
    /// Prefix for user names (default `<issuer>#` unless the claim is `email`; `-` for none).
    #[arg(long = "oidc-username-prefix")]
    username_prefix: Option<String>,
    /// The claim holding groups (a string or an array).
    #[arg(long = "oidc-groups-claim")]
    groups_claim: Option<String>,
    /// Prefix for group names.
    #[arg(long = "oidc-groups-prefix")]
    groups_prefix: Option<String>,
    /// `key=value`: a claim that must be present with this value (repeatable).
    #[arg(long = "oidc-required-claim")]
    required_claims: Vec<String>,
    /// Allowed signing algorithms, comma-separated (default RS256).
    #[arg(long = "oidc-signing-algs")]
    signing_algs: Option<String>,
}

impl OidcArgs {
    fn to_flags(&self) -> anyhow::Result<proxy_core::authn::oidc::OidcFlags> {
        let ca_pem = match &self.ca_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--oidc-ca-file {}", path.display()))?,
            ),
            None => None,
        };
        Ok(proxy_core::authn::oidc::OidcFlags {
            issuer_url: self.issuer_url.clone(),
            client_id: self.client_id.clone(),
            ca_pem,
            username_claim: self.username_claim.clone(),
            username_prefix: self.username_prefix.clone(),
            groups_claim: self.groups_claim.clone(),
            groups_prefix: self.groups_prefix.clone(),
            required_claims: self.required_claims.clone(),
            signing_algs: self.signing_algs.clone(),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("authproxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("authproxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a kubeconfig runs to log in: `authproxy` when that name on PATH is
/// this binary (the file then works for anyone who has it on PATH), else
/// this binary's absolute path, said on standard error.
fn default_login_command() -> anyhow::Result<String> {
    let binary = std::env::current_exe().context("locating the authproxy binary")?;
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("authproxy"))
            .find(|candidate| candidate.is_file())
    });
    let same = |a: &std::path::Path, b: &std::path::Path| matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b);
    if on_path.is_some_and(|found| same(&found, &binary)) {
        return Ok("authproxy".into());
    }
    let absolute = binary.display().to_string();
    eprintln!(
        "note: the kubeconfig runs {absolute} (authproxy is not on PATH); give --command authproxy for a file to hand out"
    );
    Ok(absolute)
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { file, oidc } => {
            let config = FileConfig::load_with(&file, &oidc.to_flags()?)?;
            for warning in config.warnings() {
                eprintln!("warning: {}: {warning}", file.display());
            }
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Serve { config: path, oidc } => {
            let flags = oidc.to_flags()?;
            let config = FileConfig::load_with(&path, &flags)?;
            logging::init(config.logging.format, config.logging.level.as_deref());
            reload_on_sighup();
            let source = ConfigSource {
                path: path.clone(),
                flags,
            };
            let mut running = server::start_watching(&config, source)
                .await
                .with_context(|| format!("{}", path.display()))?;
            let trigger = running.trigger();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("signal received");
                if let Some(trigger) = trigger {
                    let _ = trigger.send(());
                }
            });
            running.wait().await;
            Ok(())
        }
        Command::Webhook {
            config: path,
            listen,
            oidc,
        } => {
            let flags = oidc.to_flags()?;
            let config = FileConfig::load_with(&path, &flags)?;
            logging::init(config.logging.format, config.logging.level.as_deref());
            reload_on_sighup();
            let source = ConfigSource {
                path: path.clone(),
                flags,
            };
            let mut running = authproxy::webhook::start_watching(&config, source, listen)
                .await
                .with_context(|| format!("{}", path.display()))?;
            let trigger = running.trigger();
            tokio::spawn(async move {
                shutdown_signal().await;
                if let Some(trigger) = trigger {
                    let _ = trigger.send(());
                }
            });
            running.wait().await;
            Ok(())
        }
        Command::Logout { proxy } => {
            let ca = proxy.ca()?;
            eprintln!(
                "{}",
                authproxy::login::logout(&proxy.server, ca.as_ref()).await?
            );
            Ok(())
        }
        Command::Tokens {
            command:
                TokensCommand::Revoke {
                    proxy,
                    token_file,
                    session,
                    user,
                    issued_before,
                    bearer_token_file,
                },
        } => {
            use authproxy::login::Revoke;
            use zeroize::Zeroizing;
            let ca = proxy.ca()?;
            let read_token = |path: &std::path::Path| -> anyhow::Result<Zeroizing<String>> {
                let text = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                );
                Ok(Zeroizing::new(text.trim().to_owned()))
            };
            let what = match (token_file, session, user, issued_before) {
                (Some(path), ..) => Revoke::Token(read_token(&path)?),
                (_, Some(session), ..) => Revoke::Session(session),
                (_, _, Some(user), _) => Revoke::User(user),
                (_, _, _, Some(at)) => Revoke::IssuedBefore(at),
                _ => anyhow::bail!(
                    "name what to revoke: --token-file, --session, --user or --issued-before"
                ),
            };
            let bearer = match bearer_token_file {
                Some(path) => Some(read_token(&path)?),
                None => std::env::var("AUTHPROXY_BEARER_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .map(|t| Zeroizing::new(t.trim().to_owned())),
            };
            println!(
                "{}",
                authproxy::login::revoke(&proxy.server, ca.as_ref(), what, bearer).await?
            );
            Ok(())
        }
        Command::Login {
            method: LoginMethod::Ldap { proxy },
        } => {
            let ca = proxy.ca()?;
            let credential = authproxy::login::login_ldap(&proxy.server, ca.as_ref()).await?;
            println!("{credential}");
            Ok(())
        }
        Command::Login {
            method:
                LoginMethod::Oidc {
                    issuer,
                    client_id,
                    ca_file,
                    ca_data,
                    device,
                    scopes,
                },
        } => {
            let ca = authproxy::login::CaBundle::from_args(ca_file.as_deref(), ca_data.as_deref())?;
            let credential =
                authproxy::login::login_oidc(&issuer, &client_id, ca.as_ref(), device, &scopes)
                    .await?;
            println!("{credential}");
            Ok(())
        }
        Command::Kubeconfig {
            server,
            ca_file,
            name,
            output,
            oidc_issuer,
            oidc_client_id,
            oidc_ca_file,
            direct_server,
            direct_ca_file,
            device,
            clusters: mut cluster_names,
            proxy_config,
            embed_certs,
            command,
            scopes,
        } => {
            let mut with_default = cluster_names.is_empty();
            if let Some(path) = &proxy_config {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let config = FileConfig::parse(&text).map_err(|(field, message)| {
                    anyhow::anyhow!("{}: {field}: {message}", path.display())
                })?;
                for (i, cluster) in config.named_upstreams().iter().enumerate() {
                    let name = cluster.name.clone().with_context(|| {
                        format!("{}: upstreams[{i}].name is not set", path.display())
                    })?;
                    cluster_names.push(name);
                }
                with_default = config.default_upstream().is_some();
            }
            for cluster in &cluster_names {
                proxy_core::upstream::router::validate_name(cluster)
                    .with_context(|| format!("--cluster {cluster:?}"))?;
            }
            let command = match command {
                Some(command) => command,
                None => default_login_command()?,
            };
            let absolute = |p: &PathBuf| std::fs::canonicalize(p).map(|p| p.display().to_string());
            let mut args: Vec<String> = match &oidc_issuer {
                Some(issuer) => vec![
                    "login".into(),
                    "oidc".into(),
                    "--issuer".into(),
                    issuer.clone(),
                    "--client-id".into(),
                    oidc_client_id.clone(),
                ],
                None => vec![
                    "login".into(),
                    "ldap".into(),
                    "--server".into(),
                    server.clone(),
                ],
            };
            let ca = if oidc_issuer.is_some() {
                oidc_ca_file.as_ref()
            } else {
                ca_file.as_ref()
            };
            if let Some(ca) = ca {
                if embed_certs {
                    let pem =
                        std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                    args.extend([
                        "--ca-data".to_string(),
                        base64::engine::general_purpose::STANDARD.encode(pem),
                    ]);
                } else {
                    args.extend(["--ca-file".to_string(), absolute(ca)?]);
                }
            }
            if device && oidc_issuer.is_some() {
                args.push("--device".into());
            }
            if let Some(scopes) = scopes {
                args.extend(["--scopes".to_string(), scopes]);
            }
            use authproxy::login::KubeconfigCluster;
            let direct_name = format!("{name}-direct");
            let named = authproxy::login::cluster_contexts(&name, &server, &cluster_names);
            // The proxy's default upstream, at the server URL itself.
            let mut clusters = Vec::new();
            if with_default {
                clusters.push(KubeconfigCluster {
                    name: &name,
                    server: &server,
                    ca_file: ca_file.as_deref(),
                    ca_pem: None,
                });
            }
            for (context, url) in &named {
                clusters.push(KubeconfigCluster {
                    name: context,
                    server: url,
                    ca_file: ca_file.as_deref(),
                    ca_pem: None,
                });
            }
            if let Some(direct) = &direct_server {
                clusters.push(KubeconfigCluster {
                    name: &direct_name,
                    server: direct,
                    ca_file: direct_ca_file.as_deref(),
                    ca_pem: None,
                });
            }
            anyhow::ensure!(
                !clusters.is_empty(),
                "no cluster to write: the configuration has neither upstream nor upstreams"
            );
            let text =
                authproxy::login::kubeconfig(&clusters, &name, &command, &args, embed_certs)?;
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::Agent(args) => {
            let format = match args.log_format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => anyhow::bail!("--log-format {other:?}: use text or json"),
            };
            logging::init(format, Some(&args.log_level));
            let agent = args.build()?;
            tracing::info!(proxy = %args.proxy_url, cluster = %args.cluster, "agent starting");
            tokio::select! {
                never = agent.run() => match never {},
                () = shutdown_signal() => tracing::info!("signal received; stopping"),
            }
            Ok(())
        }
        Command::Sessions {
            command:
                SessionsCommand::Play {
                    file,
                    speed,
                    idle_limit,
                    instant,
                },
        } => {
            let pace = (!instant).then_some(authproxy::sessions::Pace { speed, idle_limit });
            let played = {
                let file = file.clone();
                tokio::task::spawn_blocking(move || authproxy::sessions::play(&file, pace)).await?
            };
            if let Err(message) = played {
                eprintln!("authproxy: {}: {message}", file.display());
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Demo { listen } => {
            logging::init(LogFormat::Text, Some("warn"));
            let running = match demo::Demo::start(listen).await {
                Ok(running) => running,
                Err(demo::DemoError::Start(server::StartError::Bind { addr, source })) => {
                    eprintln!(
                        "authproxy: {addr} is not free ({source}); using a free port instead"
                    );
                    demo::Demo::start(SocketAddr::new(addr.ip(), 0)).await?
                }
                Err(error) => return Err(error.into()),
            };
            println!("{}", running.instructions());
            shutdown_signal().await;
            running.shutdown().await;
            Ok(())
        }
    }
}

/// On SIGHUP, every watched file (certificates, CAs, keys, the
/// configuration) is read at once instead of at its next interval.
fn reload_on_sighup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reading every watched file now");
                        proxy_core::reload::check_all_now();
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP"),
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
