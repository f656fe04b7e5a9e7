//! `authproxy demo`: the proxy in front of a small embedded API server, with
//! demo users and throwaway certificates on loopback, so a new user sees the
//! whole path work with one command.
//!
//! The embedded upstream trusts only the proxy's token, honours impersonation
//! only from the proxy, lets group `devs` list pods and nobody else, and
//! echoes the identity it received in `SelfSubjectReview`s.

mod error;
mod pki;
mod upstream;

pub use error::DemoError;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use proxy_core::config::{AuthenticationConfig, StaticTokensConfig, UpstreamConfig};

use crate::config::{FileConfig, ListenerTls, Logging};
use crate::server::{self, RunningServer};

/// The demo users: (name, token, uid, groups).
pub const USERS: [(&str, &str, &str, &str); 2] = [
    ("alice", "alice-token", "1001", "devs"),
    ("bob", "bob-token", "1002", "interns"),
];

/// A running demo: the proxy, the embedded upstream and their files.
pub struct Demo {
    dir: tempfile::TempDir,
    proxy: RunningServer,
    upstream: upstream::RunningUpstream,
}

impl Demo {
    /// Starts the demo with the proxy on `listen` (port 0 picks a free one).
    pub async fn start(listen: SocketAddr) -> Result<Demo, DemoError> {
        let dir = tempfile::Builder::new()
            .prefix("authproxy-demo-")
            .tempdir()?;
        let files = pki::write_demo_pki(dir.path())?;
        let proxy_token = pki::random_token();
        std::fs::write(dir.path().join("proxy-token"), &proxy_token)?;
        let mut csv = String::new();
        for (name, token, uid, groups) in USERS {
            let _ = writeln!(csv, "{token},{name},{uid},\"{groups}\"");
        }
        std::fs::write(dir.path().join("tokens.csv"), csv)?;

        let upstream = upstream::start(&files, proxy_token).await?;
        let config = FileConfig {
            listen,
            tls: ListenerTls {
                cert_file: files.proxy_cert.clone(),
                key_file: files.proxy_key.clone(),
                client_ca_file: None,
            },
            upstream: Some(UpstreamConfig {
                url: Some(format!("https://{}", upstream.addr())),
                ca_file: Some(files.ca.clone()),
                token_file: Some(dir.path().join("proxy-token")),
                ..Default::default()
            }),
            upstreams: None,
            authentication: AuthenticationConfig {
                client_certificates: false,
                static_tokens: Some(StaticTokensConfig {
                    file: dir.path().join("tokens.csv"),
                    reload_interval: None,
                }),
                ..Default::default()
            },
            logging: Logging::default(),
            limits: Default::default(),
            shutdown_timeout: Some(Duration::from_secs(5)),
            webhook: Default::default(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            metrics: None,
            audit: None,
            // The embedded upstream has no authorizer to ask.
            identity_headers: Default::default(),
            caller_impersonation: proxy_core::impersonate::nested::Config {
                mode: proxy_core::impersonate::nested::Mode::Deny,
                ..Default::default()
            },
            reload_interval: None,
            kubeconfig: None,
            session_recording: None,
        };
        let problems = config.validate(dir.path());
        if !problems.is_empty() {
            return Err(DemoError::Config(format!("{problems:?}")));
        }
        let proxy = server::start(&config, dir.path()).await?;
        write_kubeconfig(dir.path(), proxy.addr(), &files.ca)?;
        Ok(Demo {
            dir,
            proxy,
            upstream,
        })
    }

    /// The proxy's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    /// The folder holding the demo's CA, kubeconfig and token files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Copy-paste commands that show the proxy at work.
    pub fn instructions(&self) -> String {
        let dir = self.dir.path().display();
        let proxy = format!("https://{}", self.proxy.addr());
        let ca = format!("{dir}/ca.crt");
        let kubeconfig = format!("{dir}/kubeconfig");
        let review = "-X POST -H 'Content-Type: application/json' -d '{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"SelfSubjectReview\"}'";
        let mut out = String::new();
        let _ = writeln!(out, "authproxy demo is running.");
        let _ = writeln!(out, "  proxy:    {proxy}  (TLS; CA at {ca})");
        let _ = writeln!(
            out,
            "  upstream: https://{}  (embedded API server; it trusts only the proxy's token)",
            self.upstream.addr()
        );
        let _ = writeln!(out, "  users:    alice (token alice-token, group devs), bob (token bob-token, group interns)");
        let _ = writeln!(out, "  files:    {dir}");
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Who am I? The upstream echoes the identity the proxy impersonated:"
        );
        let _ = writeln!(out, "  curl -sS --cacert {ca} -H 'Authorization: Bearer alice-token' {review} {proxy}/apis/authentication.k8s.io/v1/selfsubjectreviews");
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Impersonation headers sent by the caller are never dropped silently; here they are refused (403):"
        );
        let _ = writeln!(out, "  curl -sS --cacert {ca} -H 'Authorization: Bearer alice-token' -H 'Impersonate-User: system:admin' -H 'Impersonate-Group: system:masters' {review} {proxy}/apis/authentication.k8s.io/v1/selfsubjectreviews");
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "kubectl as alice (group devs may list pods) and as bob (the API server says 403):"
        );
        let _ = writeln!(
            out,
            "  kubectl --kubeconfig {kubeconfig} --context alice get pods"
        );
        let _ = writeln!(
            out,
            "  kubectl --kubeconfig {kubeconfig} --context bob get pods"
        );
        let _ = writeln!(
            out,
            "  kubectl --kubeconfig {kubeconfig} --context bob auth whoami   # kubectl 1.27 and later"
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "A bad token gets a 401 Status:");
        let _ = writeln!(out, "  curl -sS --cacert {ca} -H 'Authorization: Bearer wrong-token' {proxy}/api/v1/namespaces/default/pods");
        let _ = writeln!(
            out,
            "  kubectl --kubeconfig {kubeconfig} --token wrong-token get pods"
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "Press Ctrl-C to stop.");
        out
    }

    /// Stops the proxy and the upstream and removes the files.
    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.upstream.shutdown();
        drop(self.dir);
    }
}

fn write_kubeconfig(dir: &Path, proxy: SocketAddr, ca: &Path) -> std::io::Result<()> {
    let mut users = String::new();
    let mut contexts = String::new();
    for (name, token, _, _) in USERS {
        let _ = writeln!(users, "- name: {name}\n  user:\n    token: {token}");
        let _ = writeln!(contexts, "- name: {name}\n  context:\n    cluster: authproxy-demo\n    user: {name}\n    namespace: default");
    }
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: authproxy-demo\n  cluster:\n    server: https://{proxy}\n    certificate-authority: {}\nusers:\n{users}contexts:\n{contexts}current-context: alice\n",
        ca.display()
    );
    std::fs::write(dir.join("kubeconfig"), text)
}
