//! The real OpenID provider (`oidc-provider` from npm, run by node from
//! tests/oidc/provider.js) and a client that signs in through its
//! authorization-code + PKCE flow with curl, as a browser would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt as _;

use crate::pki::TestPki;
use crate::{require_tool, wait_for, INSTALL_HINT};

/// Where the provider's script and node packages live.
pub fn provider_dir() -> PathBuf {
    crate::package_dir().join("oidc")
}

/// The redirect URI registered for the test clients.
pub const REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// A signing key made for the provider: (PEM file, kid).
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// PEM private key file.
    pub path: PathBuf,
    /// Its key id.
    pub kid: String,
    /// PEM private key (the tests sign negative-case tokens with it).
    pub pem: String,
}

/// Makes a key with node's crypto: `rsa` (2048) or `ec` (P-256).
pub async fn generate_key(dir: &Path, kind: &str, kid: &str) -> anyhow::Result<SigningKey> {
    require_tool("node")?;
    let script = match kind {
        "rsa" => "const c=require('crypto');process.stdout.write(c.generateKeyPairSync('rsa',{modulusLength:2048}).privateKey.export({type:'pkcs8',format:'pem'}))",
        "ec" => "const c=require('crypto');process.stdout.write(c.generateKeyPairSync('ec',{namedCurve:'P-256'}).privateKey.export({type:'pkcs8',format:'pem'}))",
        other => bail!("unknown key kind {other}"),
    };
    let out = tokio::process::Command::new("node")
        .args(["-e", script])
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "node could not make a key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pem = String::from_utf8(out.stdout)?;
    let path = dir.join(format!("{kid}.pem"));
    std::fs::write(&path, &pem)?;
    Ok(SigningKey {
        path,
        kid: kid.into(),
        pem,
    })
}

/// A running provider. Dropping it kills the process.
pub struct OidcProvider {
    child: Option<tokio::process::Child>,
    port: u16,
    ca: PathBuf,
    tls: (PathBuf, PathBuf),
    jar: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl OidcProvider {
    /// Starts the provider on a free port with `keys`, waits until discovery answers.
    pub async fn start(pki: &TestPki, keys: &[SigningKey]) -> anyhow::Result<OidcProvider> {
        Self::start_with_env(pki, keys, &[]).await
    }

    /// Like [`OidcProvider::start`] with more environment for provider.js
    /// (`KEYS_WITHOUT_ALG`), kept across restarts.
    pub async fn start_with_env(
        pki: &TestPki,
        keys: &[SigningKey],
        env: &[(&str, &str)],
    ) -> anyhow::Result<OidcProvider> {
        let cert = pki.issue_server("oidc-provider")?;
        let mut provider = OidcProvider {
            child: None,
            port: crate::free_port()?,
            ca: pki.ca_path().to_owned(),
            tls: (cert.cert_path, cert.key_path),
            jar: tempfile::tempdir()?,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        provider.launch(keys).await?;
        Ok(provider)
    }

    async fn launch(&mut self, keys: &[SigningKey]) -> anyhow::Result<()> {
        require_tool("node")?;
        let dir = provider_dir();
        if !dir.join("node_modules/oidc-provider").is_dir() {
            bail!("tests/oidc/node_modules is missing; {INSTALL_HINT}");
        }
        let join = |f: fn(&SigningKey) -> String| keys.iter().map(f).collect::<Vec<_>>().join(",");
        let child = tokio::process::Command::new("node")
            .arg(dir.join("provider.js"))
            .current_dir(&dir)
            .env("PORT", self.port.to_string())
            .env("ISSUER", self.issuer())
            .env("TLS_CERT", &self.tls.0)
            .env("TLS_KEY", &self.tls.1)
            .env("SIGNING_KEYS", join(|k| k.path.display().to_string()))
            .env("KEY_IDS", join(|k| k.kid.clone()))
            .env("REDIRECT_URI", REDIRECT_URI)
            .env("NODE_NO_WARNINGS", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting node")?;
        // provider.js prints one line once it listens: waiting for it spares
        // a curl process per 100 ms of node's start. The rest of its output
        // is drained, so that a full pipe never blocks it.
        let mut child = child;
        let stdout = child.stdout.take().context("provider stdout")?;
        self.child = Some(child);
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("oidc-provider ready at ") {
                    return anyhow::Ok(true);
                }
            }
            anyhow::Ok(false)
        })
        .await
        .context("oidc-provider did not say it was ready within 20 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        if !ready {
            let status = match self.child.as_mut() {
                Some(child) => format!("{:?}", child.wait().await),
                None => String::new(),
            };
            bail!("oidc-provider ended before it was ready: {status}");
        }
        // Then discovery must answer (at once, as it listens).
        let url = format!("{}/.well-known/openid-configuration", self.issuer());
        let ca = self.ca.clone();
        wait_for(Duration::from_secs(20), "oidc-provider discovery", || {
            let (url, ca) = (url.clone(), ca.clone());
            async move {
                match crate::curl_with_ca(&ca, &[&url]).await {
                    Ok((200, _)) => Ok(Some(())),
                    Ok((code, body)) => Err(format!("{code}: {body}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }

    /// Stops the provider (an IdP outage).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops it if running and starts it again on the same port with `keys`.
    pub async fn restart(&mut self, keys: &[SigningKey]) -> anyhow::Result<()> {
        self.stop().await;
        self.launch(keys).await
    }

    /// The issuer URL.
    pub fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// How many times the provider served its JWKS.
    pub async fn jwks_count(&self) -> anyhow::Result<u64> {
        let (code, body) =
            crate::curl_with_ca(&self.ca, &[&format!("{}/test/jwks-count", self.issuer())]).await?;
        if code != 200 {
            bail!("jwks-count: {code} {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        v["count"].as_u64().context("count")
    }

    async fn step(
        &self,
        jar: &Path,
        url: &str,
        form: Option<&[(&str, &str)]>,
    ) -> anyhow::Result<(u16, Option<String>, String)> {
        let jar = jar.display().to_string();
        let mut args: Vec<String> = vec![
            "-b".into(),
            jar.clone(),
            "-c".into(),
            jar,
            "-D".into(),
            "-".into(),
        ];
        if let Some(form) = form {
            for (k, v) in form {
                args.push("--data-urlencode".into());
                args.push(format!("{k}={v}"));
            }
        }
        args.push(url.into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text) = crate::curl_with_ca(&self.ca, &refs).await?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
        let location = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("location: ")
                    .or_else(|| l.strip_prefix("Location: "))
            })
            .map(|l| l.trim().to_owned());
        Ok((code, location, body.to_owned()))
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http") {
            location.to_owned()
        } else {
            format!("{}{location}", self.issuer())
        }
    }

    /// Signs in as `login` through authorization code + PKCE and returns the ID token.
    pub async fn id_token(&self, client_id: &str, login: &str) -> anyhow::Result<String> {
        let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(format!("{login}{}", self.port)));
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        let auth = format!(
            "{}/auth?client_id={client_id}&response_type=code&scope=openid%20email%20groups&redirect_uri={}&code_challenge={challenge}&code_challenge_method=S256&state=st4te&nonce=n0nce",
            self.issuer(),
            percent_encoding::utf8_percent_encode(REDIRECT_URI, percent_encoding::NON_ALPHANUMERIC),
        );
        // A fresh cookie jar: a new browser session, so no single sign-on
        // from an earlier login.
        let jar = tempfile::NamedTempFile::new_in(self.jar.path())?.into_temp_path();
        let mut url = auth;
        let mut form: Option<Vec<(&str, &str)>> = None;
        for _ in 0..12 {
            let (code, location, body) = self.step(&jar, &url, form.as_deref()).await?;
            form = None;
            if let Some(location) = location {
                if location.starts_with(REDIRECT_URI) {
                    let code = location
                        .split(['?', '&'])
                        .find_map(|p| p.strip_prefix("code="))
                        .context("no code in the redirect")?
                        .to_owned();
                    return self.exchange(&jar, client_id, &code, &verifier).await;
                }
                url = self.absolute(&location);
                continue;
            }
            // An interaction page: the login form or the consent form.
            let action = body
                .split("action=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .with_context(|| format!("no form on the page ({code}): {body}"))?;
            url = self.absolute(action);
            form = Some(if body.contains("name=\"login\"") {
                vec![("prompt", "login"), ("login", login), ("password", "any")]
            } else {
                vec![("prompt", "consent")]
            });
        }
        bail!("the sign-in flow did not reach the redirect URI")
    }

    /// Signs in as `login` at an authorization URL someone else made (the
    /// `authproxy login oidc` browser flow), as a person would in a browser:
    /// logs in and consents, and returns the redirect the browser would then
    /// follow to the loopback callback (`http://127.0.0.1:<port>/...`), not
    /// followed.
    pub async fn sign_in_at(&self, authorization_url: &str, login: &str) -> anyhow::Result<String> {
        let jar = tempfile::NamedTempFile::new_in(self.jar.path())?.into_temp_path();
        let mut url = authorization_url.to_owned();
        let mut form: Option<Vec<(&str, &str)>> = None;
        for _ in 0..12 {
            let (code, location, body) = self.step(&jar, &url, form.as_deref()).await?;
            form = None;
            if let Some(location) = location {
                if location.starts_with("http://127.0.0.1:") {
                    return Ok(location);
                }
                url = self.absolute(&location);
                continue;
            }
            let action = body
                .split("action=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .with_context(|| format!("no form on the page ({code}): {body}"))?;
            url = self.absolute(action);
            form = Some(if body.contains("name=\"login\"") {
                vec![("prompt", "login"), ("login", login), ("password", "any")]
            } else {
                vec![("prompt", "consent")]
            });
        }
        bail!("the sign-in flow did not reach the loopback redirect")
    }

    /// Completes a device-flow sign-in as `login`, as a person would in a
    /// browser: opens `verification_uri_complete`, confirms the code, logs in
    /// and consents.
    pub async fn complete_device(&self, uri: &str, login: &str) -> anyhow::Result<()> {
        let jar = tempfile::NamedTempFile::new_in(self.jar.path())?.into_temp_path();
        let mut url = uri.to_owned();
        let mut form: Option<Vec<(String, String)>> = None;
        for _ in 0..12 {
            let fields: Option<Vec<(&str, &str)>> = form
                .as_ref()
                .map(|f| f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
            let (code, location, body) = self.step(&jar, &url, fields.as_deref()).await?;
            form = None;
            if let Some(location) = location {
                url = self.absolute(&location);
                continue;
            }
            let Some((action, mut inputs)) = parse_form(&body) else {
                if code == 200 && body.to_lowercase().contains("success") {
                    return Ok(());
                }
                bail!("device sign-in stopped at a page without a form ({code}): {body}");
            };
            for (name, value) in inputs.iter_mut() {
                match name.as_str() {
                    "login" => *value = login.to_owned(),
                    "password" => *value = "any".to_owned(),
                    _ => {}
                }
            }
            inputs.retain(|(name, _)| name != "abort");
            url = self.absolute(&action);
            form = Some(inputs);
        }
        bail!("the device sign-in did not finish")
    }

    async fn exchange(
        &self,
        jar: &Path,
        client_id: &str,
        code: &str,
        verifier: &str,
    ) -> anyhow::Result<String> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ];
        let (status, _, body) = self
            .step(jar, &format!("{}/token", self.issuer()), Some(&form))
            .await?;
        if status != 200 {
            bail!("token endpoint answered {status}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        v["id_token"]
            .as_str()
            .map(str::to_owned)
            .context("no id_token in the token response")
    }
}

/// The SPKI PEM public key of a signing key (for the HS256-with-public-key attack).
pub async fn public_pem(key: &SigningKey) -> anyhow::Result<String> {
    public_key_export(key, "{type:'spki',format:'pem'}").await
}

/// The public half of `key` as node's crypto exports it with `options`
/// (`{format:'jwk'}`, `{type:'spki',format:'pem'}`).
pub async fn public_key_export(key: &SigningKey, options: &str) -> anyhow::Result<String> {
    let script = format!("const c=require('crypto');const fs=require('fs');process.stdout.write(JSON.stringify(c.createPublicKey(fs.readFileSync(process.argv[1])).export({options})))");
    let out = tokio::process::Command::new("node")
        .args(["-e", &script])
        .arg(&key.path)
        .output()
        .await?;
    if !out.status.success() {
        bail!("node: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    // A PEM comes back as a JSON string, a JWK as a JSON object.
    Ok(match serde_json::from_str::<serde_json::Value>(&text)? {
        serde_json::Value::String(pem) => pem,
        other => other.to_string(),
    })
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].replace("&amp;", "&"))
}

/// The first form of an HTML page: its action and every named input with its value.
fn parse_form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let form_start = html.find("<form")?;
    let form_tag_end = html[form_start..].find('>')? + form_start;
    let action = attribute(&html[form_start..form_tag_end], "action")?;
    let form_end = html[form_start..]
        .find("</form>")
        .map(|e| e + form_start)
        .unwrap_or(html.len());
    let mut inputs = Vec::new();
    let mut rest = &html[form_start..form_end];
    while let Some(i) = rest.find("<input") {
        let end = rest[i..].find('>').map(|e| e + i).unwrap_or(rest.len());
        let tag = &rest[i..end];
        if let Some(name) = attribute(tag, "name") {
            inputs.push((name, attribute(tag, "value").unwrap_or_default()));
        }
        rest = &rest[end..];
    }
    Some((action, inputs))
}
