//! LDAP logins (`Authorization: Basic`) by bind-search-bind.
//!
//! 1. An empty password is refused before anything reaches the directory
//!    (an empty simple bind is an *unauthenticated* bind that many servers
//!    accept as anonymous).
//! 2. The attempt is throttled per user name and per client address.
//! 3. A recent success is answered from a cache keyed by the user name and a
//!    salted SHA-256 of the password (the salt is random per process).
//! 4. A pooled service connection searches the user with the configured
//!    filter, the user name escaped per RFC 4515; exactly one entry must match.
//! 5. The user's DN binds with the password on a connection of its own.
//! 6. Groups come from a group search (the DN escaped) or a memberOf-style
//!    attribute.
//!
//! A directory that cannot be reached is a 503; the next request tries again.

pub mod config;
pub mod filter;
mod throttle;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use moka::future::Cache;
use sha2::{Digest, Sha256};

pub use config::LdapConfig;
use throttle::Throttle;

use super::{Authenticator, AuthnError, AuthnFuture, Identity, UserInfo};
use crate::credential::{Credential, Secret};

/// LDAP result code for a wrong password.
const INVALID_CREDENTIALS: u32 = 49;

/// The LDAP authenticator.
pub struct LdapAuthenticator {
    url: String,
    start_tls: bool,
    tls: Arc<rustls::ClientConfig>,
    bind_dn: String,
    bind_password: Secret,
    user_base: String,
    user_filter: String,
    username_attr: String,
    uid_attr: Option<String>,
    group_search: Option<(String, String, String)>,
    member_of_attr: Option<String>,
    group_prefix: String,
    connect_timeout: Duration,
    operation_timeout: Duration,
    pool: Vec<tokio::sync::Mutex<Option<Ldap>>>,
    next: AtomicUsize,
    cache: Cache<(String, [u8; 32]), Arc<Identity>>,
    salt: [u8; 32],
    per_user: Throttle,
    per_client: Throttle,
}

impl std::fmt::Debug for LdapAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapAuthenticator")
            .field("url", &self.url)
            .finish()
    }
}

fn unavailable(error: impl std::fmt::Display) -> AuthnError {
    AuthnError::Unavailable {
        backend: "LDAP directory".into(),
        reason: error.to_string(),
    }
}

fn first_rdn_value(dn: &str) -> &str {
    let first = dn.split(',').next().unwrap_or(dn);
    first
        .split_once('=')
        .map(|(_, v)| v)
        .unwrap_or(first)
        .trim()
}

impl LdapAuthenticator {
    /// Builds the authenticator; `bind_password` is the service account's.
    pub fn new(config: &LdapConfig, tls: rustls::ClientConfig, bind_password: Secret) -> Self {
        let (user_limits, client_limits) = config.throttle.limits();
        let mut salt = [0u8; 32];
        let _ = rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut salt);
        let search = &config.user_search;
        LdapAuthenticator {
            url: config.url.clone(),
            start_tls: config.start_tls,
            tls: Arc::new(tls),
            bind_dn: config.bind_dn.clone(),
            bind_password,
            user_base: search.base_dn.clone(),
            user_filter: search
                .filter
                .clone()
                .unwrap_or_else(|| "(uid={username})".into()),
            username_attr: search
                .username_attribute
                .clone()
                .unwrap_or_else(|| "uid".into()),
            uid_attr: search.uid_attribute.clone(),
            group_search: config.group_search.as_ref().map(|g| {
                (
                    g.base_dn.clone(),
                    g.filter.clone().unwrap_or_else(|| "(member={dn})".into()),
                    g.name_attribute.clone().unwrap_or_else(|| "cn".into()),
                )
            }),
            member_of_attr: config.member_of_attribute.clone(),
            group_prefix: config.group_prefix.clone(),
            connect_timeout: config.connect_timeout.unwrap_or(Duration::from_secs(5)),
            operation_timeout: config.operation_timeout.unwrap_or(Duration::from_secs(5)),
            pool: (0..config.pool_size.unwrap_or(2).max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            cache: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(config.cache_ttl.unwrap_or(Duration::from_secs(30)))
                .build(),
            salt,
            per_user: Throttle::new(user_limits),
            per_client: Throttle::new(client_limits),
        }
    }

    /// Host and port of the URL, with LDAP's default ports.
    fn address(&self) -> Result<String, AuthnError> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|_| unavailable(format!("{} is not a URL", self.url)))?;
        let host = uri
            .host()
            .ok_or_else(|| unavailable(format!("{} has no host", self.url)))?;
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("ldaps") {
                636
            } else {
                389
            });
        Ok(format!("{host}:{port}"))
    }

    async fn connect(&self) -> Result<Ldap, AuthnError> {
        // Our own TCP connection, so that Nagle's algorithm is off: LDAP
        // exchanges small messages and would otherwise wait for delayed ACKs.
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(self.address()?),
        )
        .await
        .map_err(|_| unavailable("connect timed out"))?
        .map_err(unavailable)?;
        tcp.set_nodelay(true).map_err(unavailable)?;
        let tcp = tcp.into_std().map_err(unavailable)?;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(self.connect_timeout)
            .set_config(self.tls.clone())
            .set_starttls(self.start_tls)
            .set_std_stream(ldap3::StdStream::Tcp(tcp));
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(unavailable)?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.operation_timeout);
        Ok(ldap)
    }

    /// A bound service connection from the pool (opened and bound on first use
    /// or after a failure).
    async fn service(&self) -> Result<(usize, Ldap), AuthnError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut guard = self.pool[slot].lock().await;
        if let Some(ldap) = guard.as_mut() {
            if !ldap.is_closed() {
                return Ok((slot, ldap.clone()));
            }
        }
        let mut ldap = self.connect().await?;
        let result = ldap
            .simple_bind(&self.bind_dn, self.bind_password.expose())
            .await
            .map_err(unavailable)?;
        if result.rc != 0 {
            return Err(unavailable(format!(
                "service account bind refused (LDAP result {})",
                result.rc
            )));
        }
        *guard = Some(ldap.clone());
        Ok((slot, ldap))
    }

    async fn forget(&self, slot: usize) {
        *self.pool[slot].lock().await = None;
    }

    async fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: Vec<String>,
    ) -> Result<Vec<SearchEntry>, AuthnError> {
        let (slot, mut ldap) = self.service().await?;
        let result = match ldap.search(base, Scope::Subtree, filter, attrs).await {
            Ok(result) => result,
            Err(error) => {
                self.forget(slot).await;
                return Err(unavailable(error));
            }
        };
        match result.success() {
            Ok((entries, _)) => Ok(entries.into_iter().map(SearchEntry::construct).collect()),
            Err(ldap3::LdapError::LdapResult { result }) if result.rc == 32 => Ok(Vec::new()), // noSuchObject
            Err(error) => Err(unavailable(error)),
        }
    }

    fn cache_key(&self, username: &str, password: &Secret) -> (String, [u8; 32]) {
        let mut hash = Sha256::new();
        hash.update(self.salt);
        hash.update(username.as_bytes());
        hash.update([0]);
        hash.update(password.expose().as_bytes());
        (username.to_owned(), hash.finalize().into())
    }

    /// The directory part: search, bind, groups. `Ok(None)`: wrong user or password.
    async fn login(
        &self,
        username: &str,
        password: &Secret,
    ) -> Result<Option<UserInfo>, AuthnError> {
        let filter = filter::fill(&self.user_filter, &[("username", username)]);
        let mut attrs = vec![self.username_attr.clone()];
        attrs.extend(self.uid_attr.clone());
        attrs.extend(self.member_of_attr.clone());
        let entries = self.search(&self.user_base, &filter, attrs).await?;
        let [entry] = entries.as_slice() else {
            tracing::info!(
                matches = entries.len(),
                "LDAP login: the user search did not find exactly one entry"
            );
            return Ok(None);
        };
        let mut user_conn = self.connect().await?;
        let bind = user_conn
            .simple_bind(&entry.dn, password.expose())
            .await
            .map_err(unavailable)?;
        let _ = user_conn.unbind().await;
        match bind.rc {
            0 => {}
            INVALID_CREDENTIALS => return Ok(None),
            rc => {
                tracing::info!(rc, "LDAP login: user bind refused");
                return Ok(None);
            }
        }
        let attr = |name: &str| entry.attrs.get(name).and_then(|v| v.first()).cloned();
        let name = attr(&self.username_attr).unwrap_or_else(|| username.to_owned());
        let mut groups: Vec<String> = Vec::new();
        if let Some(member_of) = &self.member_of_attr {
            for dn in entry.attrs.get(member_of).into_iter().flatten() {
                groups.push(first_rdn_value(dn).to_owned());
            }
        }
        if let Some((base, filter, name_attr)) = &self.group_search {
            let filter = filter::fill(
                filter,
                &[("dn", entry.dn.as_str()), ("username", name.as_str())],
            );
            for group in self.search(base, &filter, vec![name_attr.clone()]).await? {
                groups.extend(group.attrs.get(name_attr).and_then(|v| v.first()).cloned());
            }
        }
        groups.sort();
        groups.dedup();
        Ok(Some(UserInfo {
            username: name,
            uid: self.uid_attr.as_deref().and_then(attr),
            groups: groups
                .into_iter()
                .map(|g| format!("{}{g}", self.group_prefix))
                .collect(),
            extra: Default::default(),
        }))
    }

    async fn authenticate_basic(
        &self,
        username: &str,
        password: &Secret,
        client: Option<std::net::IpAddr>,
    ) -> Result<Option<Arc<Identity>>, AuthnError> {
        if username.is_empty() || password.expose().is_empty() {
            return Err(AuthnError::Invalid("empty user name or password".into()));
        }
        let key = self.cache_key(username, password);
        if let Some(identity) = self.cache.get(&key).await {
            return Ok(Some(identity));
        }
        let user_key = format!("user:{}", username.to_lowercase());
        let client_key = client.map(|ip| format!("client:{ip}"));
        self.per_user
            .begin(&user_key)
            .map_err(|retry_after_secs| AuthnError::TooManyAttempts { retry_after_secs })?;
        if let Some(client_key) = &client_key {
            if let Err(retry_after_secs) = self.per_client.begin(client_key) {
                self.per_user.end(&user_key, None);
                return Err(AuthnError::TooManyAttempts { retry_after_secs });
            }
        }
        let result = self.login(username, password).await;
        let failed = match &result {
            Ok(Some(_)) => Some(false),
            Ok(None) => Some(true),
            Err(_) => None,
        };
        self.per_user.end(&user_key, failed);
        if let Some(client_key) = &client_key {
            self.per_client.end(client_key, failed);
        }
        match result? {
            Some(user) => {
                let identity = Identity::new(user);
                self.cache.insert(key, identity.clone()).await;
                Ok(Some(identity))
            }
            None => Err(AuthnError::Invalid(
                "LDAP login failed: unknown user or wrong password".into(),
            )),
        }
    }
}

impl Authenticator for LdapAuthenticator {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        Box::pin(async move {
            match credential {
                Credential::Basic {
                    username,
                    password,
                    client,
                } => self.authenticate_basic(username, password, *client).await,
                _ => Ok(None),
            }
        })
    }

    fn name(&self) -> &str {
        "ldap"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_come_from_the_first_rdn() {
        assert_eq!(
            first_rdn_value("cn=devs,ou=groups,dc=example,dc=org"),
            "devs"
        );
        assert_eq!(first_rdn_value("devs"), "devs");
    }

    #[test]
    fn filter_metacharacters_are_escaped() {
        assert_eq!(ldap3::ldap_escape("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
    }
}
