//! LDAP logins (`Authorization: Basic`) by bind-search-bind.
//!
//! 1. An empty password is refused before anything reaches the directory
//!    (an empty simple bind is an *unauthenticated* bind that many servers
//!    accept as anonymous), and so is a user name longer than
//!    `maxUsernameLength`, before any counting.
//! 2. A recent success is answered from a cache keyed by the user name and a
//!    keyed hash of name and password ([`super::secret_key`], its key random
//!    per process).
//! 3. The attempt is throttled per client address, then per user name in the
//!    form the directory compares it (case and spaces folded).
//! 4. A pooled service connection searches the user with the configured
//!    filter, the user name escaped per RFC 4515; exactly one entry must match.
//!    The attempt is then throttled per entry DN too, so spellings of one
//!    name, or different names of one entry, share one budget.
//! 5. The user's DN binds with the password on a connection of its own.
//! 6. Groups come from a group search (the DN escaped) or a memberOf-style
//!    attribute, scoped to `memberOfBaseDN`.
//!
//! A directory that cannot be reached, or does not answer within
//! `operationTimeout`, is a 503; the next request tries again. A request
//! cancelled at any point releases its throttle slots.

pub mod config;
mod directory;
mod dn;
pub mod filter;
mod throttle;

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

pub use config::LdapConfig;
use config::{DEFAULT_MAX_USERNAME_LENGTH, DEFAULT_THROTTLE_CAPACITY};
use directory::Directory;
use dn::Dn;
use proxy_support::rate_limit::client_key;
use throttle::{canonical_username, Outcome, Slot, Throttle};

use super::{Authenticator, AuthnError, AuthnFuture, Identity, Source, UserInfo, Verification};
use crate::counters::ThrottleScope;
use crate::credential::{Credential, Secret};

/// LDAP result code for a wrong password.
const INVALID_CREDENTIALS: u32 = 49;

/// The LDAP authenticator.
pub struct LdapAuthenticator {
    directory: Directory,
    user_base: String,
    user_filter: String,
    username_attr: String,
    uid_attr: Option<String>,
    group_search: Option<(String, String, String)>,
    member_of: Option<(String, Option<Dn>)>,
    group_prefix: String,
    max_username_length: usize,
    cache: Cache<(String, u128), Arc<Identity>>,
    per_user: Throttle,
    per_client: Throttle,
    password_watch: std::sync::Mutex<Option<crate::reload::FileWatch>>,
}

impl std::fmt::Debug for LdapAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapAuthenticator")
            .field("url", &self.directory.url())
            .finish()
    }
}

/// The service account's password from the content of its file: UTF-8,
/// trailing line ends removed, not empty. The error never holds the content.
pub fn bind_password_from(content: &[u8]) -> Result<Secret, &'static str> {
    let text = std::str::from_utf8(content).map_err(|_| "not UTF-8")?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err("empty");
    }
    Ok(Secret::new(password))
}

fn too_many(retry_after_secs: u64) -> AuthnError {
    AuthnError::TooManyAttempts { retry_after_secs }
}

impl LdapAuthenticator {
    /// Counts a throttled login and makes it the caller's 429.
    fn throttled(&self, scope: ThrottleScope) -> impl FnOnce(u64) -> AuthnError + '_ {
        move |retry_after_secs| {
            self.directory.counters().throttled.throttled(scope);
            too_many(retry_after_secs)
        }
    }
}

/// The throttle slots one login holds: its client address, its user name
/// and, once the search found the entry, the entry's DN.
struct Attempt {
    client: Option<Slot>,
    user: Slot,
    entry: Option<Slot>,
}

impl Attempt {
    /// The password is on its way to the directory: from now on a cancelled
    /// attempt counts as a failure (its answer is unknown).
    fn password_sent(&mut self) {
        let slots = std::iter::once(&mut self.user)
            .chain(self.entry.as_mut())
            .chain(self.client.as_mut());
        for slot in slots {
            slot.if_dropped(Outcome::Failed);
        }
    }

    fn finish(self, result: &Result<Option<UserInfo>, AuthnError>) {
        let (user, client) = match result {
            // A success clears this account's failures only, never those
            // that other names piled up from the same client.
            Ok(Some(_)) => (Outcome::Succeeded, Outcome::Uncounted),
            Ok(None) => (Outcome::Failed, Outcome::Failed),
            Err(_) => (Outcome::Uncounted, Outcome::Uncounted),
        };
        self.user.finish(user);
        if let Some(slot) = self.entry {
            slot.finish(user);
        }
        if let Some(slot) = self.client {
            slot.finish(client);
        }
    }
}

impl LdapAuthenticator {
    /// Re-reads the service account's password from `path` every `interval`
    /// while the authenticator lives; service connections bind with the new
    /// password from then on (pooled ones are re-bound). An empty file is
    /// refused and the password in force stays. Must be called within a
    /// tokio runtime.
    pub fn watch_bind_password(
        self: &Arc<Self>,
        path: std::path::PathBuf,
        interval: Duration,
        reporter: crate::reload::ReloadReporter,
    ) {
        let initial = std::fs::read(&path).unwrap_or_default();
        let weak = Arc::downgrade(self);
        let name = path.display().to_string();
        let watch = crate::reload::watch_file_reported(
            path,
            interval,
            initial,
            crate::reload::ReloadKind::LdapBindPassword,
            reporter,
            move |content| {
                let password = bind_password_from(content)
                    .map_err(|problem| format!("bindPasswordFile {name}: {problem}"))?;
                if let Some(this) = weak.upgrade() {
                    this.directory.set_bind_password(password);
                }
                Ok(())
            },
        );
        if let Ok(mut slot) = self.password_watch.lock() {
            *slot = Some(watch);
        }
    }

    /// Builds the authenticator; `bind_password` is the service account's.
    ///
    /// A `memberOfBaseDN` that is not a DN (refused by validation) leaves
    /// `memberOfAttribute` yielding no groups.
    pub fn new(config: &LdapConfig, tls: rustls::ClientConfig, bind_password: Secret) -> Self {
        let (user_limits, client_limits) = config.throttle.limits();
        let capacity = config
            .throttle
            .capacity
            .unwrap_or(DEFAULT_THROTTLE_CAPACITY);
        let search = &config.user_search;
        LdapAuthenticator {
            directory: Directory::new(config, tls, bind_password),
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
            // Without a valid base no DN is under it: no groups, never all.
            member_of: config.member_of_attribute.clone().map(|attr| {
                let base = config.member_of_base_dn.as_deref();
                (attr, base.and_then(|b| Dn::parse(b).ok()))
            }),
            group_prefix: config.group_prefix.clone(),
            max_username_length: config
                .max_username_length
                .unwrap_or(DEFAULT_MAX_USERNAME_LENGTH),
            cache: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(config.cache_ttl.unwrap_or(Duration::from_secs(30)))
                .build(),
            per_user: Throttle::new(user_limits, capacity),
            per_client: Throttle::new(client_limits, capacity),
            password_watch: std::sync::Mutex::new(None),
        }
    }

    fn cache_key(&self, username: &str, password: &Secret) -> (String, u128) {
        let key =
            super::secret_key::key_of_parts(&[username.as_bytes(), password.expose().as_bytes()]);
        (username.to_owned(), key)
    }

    /// The directory part: search, bind, groups. `Ok(None)`: wrong user or password.
    async fn login(
        &self,
        username: &str,
        password: &Secret,
        attempt: &mut Attempt,
    ) -> Result<Option<UserInfo>, AuthnError> {
        let entries = self.find(username).await?;
        let [entry] = entries.as_slice() else {
            tracing::info!(
                matches = entries.len(),
                "LDAP login: the user search did not find exactly one entry"
            );
            return Ok(None);
        };
        let entry_key = format!("dn:{}", entry.dn.to_lowercase());
        attempt.entry = Some(
            self.per_user
                .begin(&entry_key)
                .await
                .map_err(self.throttled(ThrottleScope::User))?,
        );
        attempt.password_sent();
        match self.directory.user_bind(&entry.dn, password).await? {
            0 => {}
            INVALID_CREDENTIALS => return Ok(None),
            rc => {
                tracing::info!(rc, "LDAP login: user bind refused");
                return Ok(None);
            }
        }
        // A directory refuses a disabled account's bind only where a policy
        // says so (OpenLDAP's ppolicy leaves an administrative lock to the
        // policy that applies to the entry): the attributes decide here too,
        // as they do when the user is looked up again.
        if disabled(entry) {
            tracing::info!("LDAP login: the account is disabled");
            return Ok(None);
        }
        self.user_of(entry, username).await.map(Some)
    }

    /// The entries the user search finds for `username`, with the
    /// attributes a login and a lookup read.
    async fn find(&self, username: &str) -> Result<Vec<ldap3::SearchEntry>, AuthnError> {
        let filter = filter::fill(&self.user_filter, &[("username", username)]);
        let mut attrs = vec![self.username_attr.clone()];
        attrs.extend(self.uid_attr.clone());
        attrs.extend(self.member_of.as_ref().map(|(attr, _)| attr.clone()));
        attrs.extend(DISABLED_ATTRIBUTES.iter().map(|a| (*a).to_owned()));
        self.directory.search(&self.user_base, &filter, attrs).await
    }

    /// Who `entry` is: its name, uid and groups (found as `username`).
    async fn user_of(
        &self,
        entry: &ldap3::SearchEntry,
        username: &str,
    ) -> Result<UserInfo, AuthnError> {
        let attr = |name: &str| entry.attrs.get(name).and_then(|v| v.first()).cloned();
        let name = attr(&self.username_attr).unwrap_or_else(|| username.to_owned());
        let mut groups: Vec<String> = Vec::new();
        if let Some((member_of, Some(base))) = &self.member_of {
            for group_dn in entry.attrs.get(member_of).into_iter().flatten() {
                groups.extend(dn::group_name(group_dn, base));
            }
        }
        if let Some((base, filter, name_attr)) = &self.group_search {
            let filter = filter::fill(
                filter,
                &[("dn", entry.dn.as_str()), ("username", name.as_str())],
            );
            let found = self
                .directory
                .search(base, &filter, vec![name_attr.clone()])
                .await?;
            for group in found {
                groups.extend(group.attrs.get(name_attr).and_then(|v| v.first()).cloned());
            }
        }
        groups.sort();
        groups.dedup();
        Ok(UserInfo {
            username: name,
            uid: self.uid_attr.as_deref().and_then(attr),
            groups: groups
                .into_iter()
                .map(|g| format!("{}{g}", self.group_prefix))
                .collect(),
            extra: Default::default(),
        })
    }

    /// Who `username` is in the directory now, without a password (the
    /// service account searches): gone when the search does not find
    /// exactly one entry, or the entry is disabled.
    pub async fn lookup(
        &self,
        username: &str,
    ) -> Result<crate::authn::refresh::DirectoryAnswer, AuthnError> {
        use crate::authn::refresh::DirectoryAnswer;
        let entries = self.find(username).await?;
        let [entry] = entries.as_slice() else {
            return Ok(DirectoryAnswer::Gone);
        };
        if disabled(entry) {
            return Ok(DirectoryAnswer::Gone);
        }
        Ok(DirectoryAnswer::Found(self.user_of(entry, username).await?))
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
        if username.len() > self.max_username_length {
            return Err(AuthnError::Invalid(format!(
                "user name longer than {} bytes",
                self.max_username_length
            )));
        }
        let key = self.cache_key(username, password);
        if let Some(identity) = self.cache.get(&key).await {
            return Ok(Some(identity));
        }
        // The client first: a blocked client adds no user names to remember.
        let client = match client {
            Some(ip) => Some(
                self.per_client
                    .begin(&client_key(ip))
                    .await
                    .map_err(self.throttled(ThrottleScope::Client))?,
            ),
            None => None,
        };
        let user_key = format!("user:{}", canonical_username(username));
        let user = self
            .per_user
            .begin(&user_key)
            .await
            .map_err(self.throttled(ThrottleScope::User))?;
        let mut attempt = Attempt {
            client,
            user,
            entry: None,
        };
        let result = self.login(username, password, &mut attempt).await;
        attempt.finish(&result);
        match result? {
            Some(user) => {
                let identity = Identity::verified(
                    user,
                    Verification {
                        source: Source::Ldap,
                        ..Default::default()
                    },
                );
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

    fn counters(&self, found: &mut crate::counters::AuthnCounters) {
        found.ldap.push(self.directory.counters().clone());
    }

    fn name(&self) -> &str {
        "ldap"
    }
}

/// The attributes that say an account is disabled: OpenLDAP ppolicy's
/// `pwdAccountLockedTime` of `000001010000Z` (locked by an administrator
/// until unlocked; any other value is a lockout after failed binds, which
/// ends by itself and would let anyone who knows a name end that user's
/// sessions), Active Directory's `userAccountControl` (the ACCOUNTDISABLE
/// bit, 2), 389 and FreeIPA's `nsAccountLock: true`. Operational, so asked
/// for by name; the service account must be allowed to read them.
const DISABLED_ATTRIBUTES: [&str; 3] = [
    "pwdAccountLockedTime",
    "userAccountControl",
    "nsAccountLock",
];

/// Whether `entry` is a disabled account (see [`DISABLED_ATTRIBUTES`]).
fn disabled(entry: &ldap3::SearchEntry) -> bool {
    let values = |name: &'static str| {
        entry
            .attrs
            .iter()
            .filter(move |(attr, _)| attr.eq_ignore_ascii_case(name))
            .flat_map(|(_, values)| values.iter())
    };
    values("pwdAccountLockedTime").any(|v| v.trim() == "000001010000Z")
        || values("nsAccountLock").any(|v| v.eq_ignore_ascii_case("true"))
        || values("userAccountControl")
            .any(|v| v.trim().parse::<u64>().is_ok_and(|flags| flags & 2 != 0))
}

/// `answer` as a login would take it: a user named with a `system:` user
/// or group name is gone unless `allow_system_names`.
fn with_login_policy(
    answer: crate::authn::refresh::DirectoryAnswer,
    allow_system_names: bool,
) -> crate::authn::refresh::DirectoryAnswer {
    use crate::authn::refresh::DirectoryAnswer;
    match answer {
        DirectoryAnswer::Found(user)
            if !allow_system_names && crate::authn::policy::refuse_system_names(&user).is_err() =>
        {
            tracing::info!(user = %user.username, "the directory now names this user with a system: name; the session ends");
            DirectoryAnswer::Gone
        }
        answer => answer,
    }
}

/// Shares one LDAP authenticator as the directory of a
/// [`crate::authn::refresh::Refresher`], with the login's policy: a user
/// the directory now names with a `system:` user or group name is gone,
/// unless `allow_system_names` (as a login of it would be refused).
#[derive(Debug, Clone)]
pub struct SharedDirectory {
    /// The directory.
    pub ldap: std::sync::Arc<LdapAuthenticator>,
    /// The LDAP section's `allowSystemNames`.
    pub allow_system_names: bool,
}

impl crate::authn::refresh::Directory for SharedDirectory {
    fn lookup<'a>(
        &'a self,
        username: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<crate::authn::refresh::DirectoryAnswer, AuthnError>,
                > + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            let answer = self.ldap.lookup(username).await?;
            Ok(with_login_policy(answer, self.allow_system_names))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refreshed_user_with_a_system_name_is_gone_unless_allowed() {
        use crate::authn::refresh::DirectoryAnswer;
        use crate::authn::UserInfo;
        let user = UserInfo {
            username: "carol".into(),
            groups: vec!["devs".into(), "system:masters".into()],
            ..UserInfo::default()
        };
        assert_eq!(
            super::with_login_policy(DirectoryAnswer::Found(user.clone()), false),
            DirectoryAnswer::Gone
        );
        assert_eq!(
            super::with_login_policy(DirectoryAnswer::Found(user.clone()), true),
            DirectoryAnswer::Found(user)
        );
    }

    #[test]
    fn disabled_accounts_are_read_from_each_directory_kind() {
        let entry = |attrs: &[(&str, &str)]| ldap3::SearchEntry {
            dn: "uid=a,dc=x".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                .collect(),
            bin_attrs: Default::default(),
        };
        assert!(!super::disabled(&entry(&[("uid", "a")])));
        assert!(super::disabled(&entry(&[(
            "pwdAccountLockedTime",
            "000001010000Z"
        )])));
        // A lockout after failed binds ends by itself: not a disabled account.
        assert!(!super::disabled(&entry(&[(
            "pwdAccountLockedTime",
            "20261206051500Z"
        )])));
        assert!(super::disabled(&entry(&[("nsaccountlock", "TRUE")])));
        assert!(!super::disabled(&entry(&[("nsAccountLock", "false")])));
        // Active Directory: ACCOUNTDISABLE (2) among NORMAL_ACCOUNT (512).
        assert!(super::disabled(&entry(&[("userAccountControl", "514")])));
        assert!(!super::disabled(&entry(&[("userAccountControl", "512")])));
    }

    #[test]
    fn filter_metacharacters_are_escaped() {
        assert_eq!(ldap3::ldap_escape("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
    }
}
