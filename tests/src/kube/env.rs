//! authproxy in front of the real kube-apiserver: one proxy per test, with
//! its own CA for its serving and client certificates, the static-token test
//! users, and the proxy's service-account token as its upstream credential.

use std::path::PathBuf;
use std::process::Output;

use authproxy::server::RunningServer;

use super::{kube, Kube};
use crate::pki::TestPki;
use crate::{curl_with_ca, start_proxy_with_top_level, write_user_kubeconfig};

/// One test's proxy in front of the shared kube-apiserver.
pub struct KubeEnv {
    /// The shared API server.
    pub kube: &'static Kube,
    /// This test's CA: the proxy's serving certificate and client certificates.
    pub pki: TestPki,
    /// authproxy, in process, over real TLS on loopback.
    pub proxy: Option<RunningServer>,
    /// The folder of config, token and kubeconfig files.
    pub dir: tempfile::TempDir,
}

impl KubeEnv {
    /// Starts authproxy with static tokens and client certificates.
    pub async fn start() -> anyhow::Result<KubeEnv> {
        Self::start_with(TestPki::new()?, "").await
    }

    /// Like [`KubeEnv::start`] with more `authentication:` settings
    /// (YAML lines indented by two spaces).
    pub async fn start_with(pki: TestPki, extra_auth: &str) -> anyhow::Result<KubeEnv> {
        Self::start_with_top_level(pki, extra_auth, "").await
    }

    /// Like [`KubeEnv::start_with`], with `top_level` YAML appended at the
    /// top level of the config.
    /// The proxy's account holds constrained impersonation only
    /// (`identityHeaders: {rbac: constrained}`, unless `top_level` has an
    /// `identityHeaders` section of its own).
    pub async fn start_with_top_level(
        pki: TestPki,
        extra_auth: &str,
        top_level: &str,
    ) -> anyhow::Result<KubeEnv> {
        Self::start_as(pki, extra_auth, top_level, false).await
    }

    /// Like [`KubeEnv::start_with_top_level`], the proxy's account holding
    /// the legacy `impersonate` verb (`identityHeaders: {rbac: legacy}`).
    pub async fn start_legacy(
        pki: TestPki,
        extra_auth: &str,
        top_level: &str,
    ) -> anyhow::Result<KubeEnv> {
        Self::start_as(pki, extra_auth, top_level, true).await
    }

    async fn start_as(
        pki: TestPki,
        extra_auth: &str,
        top_level: &str,
        legacy: bool,
    ) -> anyhow::Result<KubeEnv> {
        let kube = tokio::task::spawn_blocking(|| kube().map_err(|e| e.to_string()))
            .await?
            .map_err(anyhow::Error::msg)?;
        let dir = tempfile::tempdir()?;
        let (token, rbac) = if legacy {
            (kube.legacy_proxy_token(), "legacy")
        } else {
            (kube.proxy_token(), "constrained")
        };
        let top_level = if top_level.contains("identityHeaders") {
            top_level.to_owned()
        } else {
            format!("{top_level}\nidentityHeaders: {{rbac: {rbac}}}")
        };
        let proxy = start_proxy_with_top_level(
            &pki,
            dir.path(),
            &kube.url(),
            kube.pki().ca_path(),
            token,
            extra_auth,
            &top_level,
        )
        .await?;
        let env = KubeEnv {
            kube,
            pki,
            proxy: Some(proxy),
            dir,
        };
        write_user_kubeconfig(&env.kubeconfig(), &env.proxy_url(), env.pki.ca_path())?;
        Ok(env)
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

    /// Runs curl against authproxy trusting this test's CA; returns (status, body).
    pub async fn curl(&self, args: &[&str]) -> anyhow::Result<(u16, String)> {
        curl_with_ca(self.pki.ca_path(), args).await
    }

    /// Runs curl straight at kube-apiserver (no proxy); returns (status, body).
    pub async fn curl_kube(&self, args: &[&str]) -> anyhow::Result<(u16, String)> {
        curl_with_ca(self.kube.pki().ca_path(), args).await
    }

    /// Asserts that no request with user agent `agent` reached kube-apiserver:
    /// first sends a request of its own and waits for its audit event, so
    /// every earlier request that reached the server is logged by then.
    pub async fn assert_not_forwarded(&self, agent: &str) -> anyhow::Result<()> {
        let barrier = super::unique_marker("barrier");
        let (code, body) = self
            .curl(&[
                "-A",
                &barrier,
                "-H",
                "Authorization: Bearer alice-token",
                &format!("{}/api/v1/namespaces/default/pods", self.proxy_url()),
            ])
            .await?;
        anyhow::ensure!(code == 200, "barrier request: {code} {body}");
        self.kube.wait_audit_by_agent(&barrier, 1).await?;
        let reached = self.kube.audit_by_agent(agent)?;
        anyhow::ensure!(
            reached.is_empty(),
            "requests reached kube-apiserver: {reached:?}"
        );
        Ok(())
    }

    /// A kubeconfig for this proxy whose one user sends `token` (context
    /// `name`, the current one).
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user: {{token: '{token}'}}\ncontexts:\n- name: {name}\n  context: {{cluster: proxy, user: {name}, namespace: default}}\ncurrent-context: {name}\n",
                self.proxy_url(),
                self.pki.ca_path().display()
            ),
        )?;
        Ok(path)
    }

    /// Waits (20 s at most) until `/readyz` answers 200: every
    /// authenticator is ready (an OIDC issuer's keys are loaded).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.proxy_url());
        crate::wait_for(
            std::time::Duration::from_secs(20),
            "authproxy ready (keys loaded)",
            || async {
                match self.curl(&[&url]).await {
                    Ok((200, _)) => Ok(Some(())),
                    Ok((code, body)) => Err(format!("/readyz {code} {body}")),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
    }

    /// Runs the matching kubectl with the test kubeconfig.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        crate::kubectl_with(&self.kubeconfig(), args).await
    }
}
