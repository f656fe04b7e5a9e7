//! Fresh identity from the directory for tokens the proxy issued after an
//! LDAP login: the token names the user and the groups of the login, the
//! directory says who they are now.
//!
//! Each user is looked up at most every `interval` (off the request's path:
//! a request uses the last answer and a lookup runs beside it, until the
//! answer is twice that old, when the request waits for the lookup). An
//! entry that is gone or disabled ends every session of the user; changed
//! groups apply to the next request. With the directory down, the last
//! answer holds for `grace`, then the session is refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::{AuthnError, UserInfo};

/// Default for how often a user is looked up again.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Default for how long the last answer holds while the directory is down.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// What a directory says about a user now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryAnswer {
    /// Present and enabled, as this user (groups and uid as of now).
    Found(UserInfo),
    /// Deleted, or disabled (OpenLDAP ppolicy `pwdAccountLockedTime`,
    /// Active Directory's ACCOUNTDISABLE, 389/FreeIPA `nsAccountLock`).
    Gone,
}

/// Something that can say who a user is now (the LDAP authenticator).
pub trait Directory: Send + Sync {
    /// Looks `username` up.
    fn lookup<'a>(
        &'a self,
        username: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<DirectoryAnswer, AuthnError>> + Send + 'a>>;
}

/// How often and how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSettings {
    /// A user is looked up at most this often.
    pub interval: Duration,
    /// With the directory down, the last answer holds this long.
    pub grace: Duration,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            interval: DEFAULT_INTERVAL,
            grace: DEFAULT_GRACE,
        }
    }
}

/// Directory lookups by result, for metrics.
#[derive(Debug, Default)]
pub struct RefreshCounters {
    /// The user is there.
    pub found: AtomicU64,
    /// The user is gone or disabled.
    pub gone: AtomicU64,
    /// The directory could not be asked.
    pub failed: AtomicU64,
}

struct Answer {
    at: Instant,
    found: Option<UserInfo>,
}

/// The answers of the directory, shared by requests and the lookups that
/// run beside them.
pub struct Refresher {
    directory: ArcSwapOption<Box<dyn Directory>>,
    settings: ArcSwap<RefreshSettings>,
    answers: moka::sync::Cache<String, Arc<Answer>>,
    /// Users looked up in the background right now.
    running: Mutex<std::collections::HashSet<String>>,
    counters: Arc<RefreshCounters>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("directory", &self.directory.load().is_some())
            .field("settings", &**self.settings.load())
            .finish_non_exhaustive()
    }
}

impl Default for Refresher {
    fn default() -> Self {
        Refresher {
            directory: ArcSwapOption::empty(),
            settings: ArcSwap::from_pointee(RefreshSettings::default()),
            answers: moka::sync::Cache::new(100_000),
            running: Mutex::default(),
            counters: Arc::default(),
        }
    }
}

impl Refresher {
    /// Sets the directory users are looked up in (`None`: none is
    /// configured, and tokens that need one are refused).
    pub fn set_directory(&self, directory: Option<Box<dyn Directory>>) {
        self.directory.store(directory.map(Arc::new));
    }

    /// Sets how often and how long.
    pub fn set_settings(&self, settings: RefreshSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Lookups by result.
    pub fn counters(&self) -> &Arc<RefreshCounters> {
        &self.counters
    }

    /// `user` (from a token) as the directory has them now; refused when
    /// the directory no longer does, or cannot say for longer than the
    /// grace.
    pub async fn refreshed(self: &Arc<Self>, user: &UserInfo) -> Result<UserInfo, AuthnError> {
        let settings = **self.settings.load();
        let cached = self.answers.get(&user.username);
        if let Some(answer) = &cached {
            let age = answer.at.elapsed();
            if age <= settings.interval {
                return apply(user, answer);
            }
            if age <= settings.interval.saturating_mul(2) {
                self.look_up_beside(user.username.clone());
                return apply(user, answer);
            }
        }
        match self.look_up(&user.username).await {
            Ok(answer) => apply(user, &answer),
            Err(error) => match cached {
                Some(answer) if answer.at.elapsed() <= settings.grace => {
                    tracing::warn!(user = %user.username, %error, "the directory cannot be asked; its last answer holds");
                    apply(user, &answer)
                }
                _ => Err(error),
            },
        }
    }

    async fn look_up(&self, username: &str) -> Result<Arc<Answer>, AuthnError> {
        let Some(directory) = self.directory.load_full() else {
            return Err(AuthnError::Invalid(
                "the token's user came from a directory that is no longer configured".into(),
            ));
        };
        match directory.lookup(username).await {
            Ok(answer) => {
                let found = match answer {
                    DirectoryAnswer::Found(user) => {
                        self.counters.found.fetch_add(1, Ordering::Relaxed);
                        Some(user)
                    }
                    DirectoryAnswer::Gone => {
                        self.counters.gone.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                };
                let answer = Arc::new(Answer {
                    at: Instant::now(),
                    found,
                });
                self.answers.insert(username.to_owned(), answer.clone());
                Ok(answer)
            }
            Err(error) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// Looks `username` up in the background, once at a time per user.
    fn look_up_beside(self: &Arc<Self>, username: String) {
        {
            let Ok(mut running) = self.running.lock() else {
                return;
            };
            if !running.insert(username.clone()) {
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.look_up(&username).await {
                tracing::info!(user = %username, %error, "refreshing a user from the directory failed");
            }
            if let Ok(mut running) = this.running.lock() {
                running.remove(&username);
            }
        });
    }
}

/// `user` with what `answer` says: its groups and uid, or a refusal.
fn apply(user: &UserInfo, answer: &Answer) -> Result<UserInfo, AuthnError> {
    match &answer.found {
        None => Err(AuthnError::Invalid(
            "the directory no longer has this user, or the account is disabled".into(),
        )),
        Some(now) => Ok(UserInfo {
            username: user.username.clone(),
            uid: now.uid.clone().or_else(|| user.uid.clone()),
            groups: now.groups.clone(),
            extra: user.extra.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory whose answers the test sets, counting lookups.
    struct Scripted {
        answer: Arc<Mutex<Result<DirectoryAnswer, String>>>,
        asked: Arc<AtomicU64>,
    }

    impl Directory for Scripted {
        fn lookup<'a>(
            &'a self,
            _username: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<DirectoryAnswer, AuthnError>> + Send + 'a>>
        {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let answer = self.answer.lock().unwrap().clone();
            Box::pin(async move {
                answer.map_err(|reason| AuthnError::Unavailable {
                    backend: "LDAP".into(),
                    reason,
                })
            })
        }
    }

    fn user(groups: &[&str]) -> UserInfo {
        UserInfo {
            username: "alice".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        }
    }

    #[tokio::test]
    async fn groups_follow_the_directory_a_gone_user_is_refused_and_the_grace_holds() {
        let answer = Arc::new(Mutex::new(Ok(DirectoryAnswer::Found(user(&[
            "devs", "ops",
        ])))));
        let asked = Arc::new(AtomicU64::new(0));
        let refresher = Arc::new(Refresher::default());
        refresher.set_directory(Some(Box::new(Scripted {
            answer: answer.clone(),
            asked: asked.clone(),
        })));
        let interval = Duration::from_millis(200);
        refresher.set_settings(RefreshSettings {
            interval,
            grace: Duration::from_secs(1),
        });
        // The token says devs; the directory, devs and ops.
        let from_token = user(&["devs"]);
        let now = refresher.refreshed(&from_token).await.unwrap();
        assert_eq!(now.groups, ["devs", "ops"]);
        // Within the interval: no lookup.
        refresher.refreshed(&from_token).await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // ops removed in the directory: seen after the interval; the first
        // request past it is answered at once, a lookup runs beside it.
        *answer.lock().unwrap() = Ok(DirectoryAnswer::Found(user(&["devs"])));
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        let beside = refresher.refreshed(&from_token).await.unwrap();
        assert_eq!(beside.groups, ["devs", "ops"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            refresher.refreshed(&from_token).await.unwrap().groups,
            ["devs"]
        );
        // The directory down: the last answer holds for the grace...
        *answer.lock().unwrap() = Err("down".into());
        tokio::time::sleep(interval * 2 + Duration::from_millis(50)).await;
        assert_eq!(
            refresher.refreshed(&from_token).await.unwrap().groups,
            ["devs"]
        );
        // ... and not after it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(matches!(
            refresher.refreshed(&from_token).await,
            Err(AuthnError::Unavailable { .. })
        ));
        // The user gone: refused.
        *answer.lock().unwrap() = Ok(DirectoryAnswer::Gone);
        let refused = refresher.refreshed(&from_token).await.unwrap_err();
        assert!(
            refused.to_string().contains("no longer has this user"),
            "{refused}"
        );
        assert_eq!(refresher.counters().gone.load(Ordering::SeqCst), 1);
        // No directory configured any more: refused.
        refresher.set_directory(None);
        tokio::time::sleep(interval * 2 + Duration::from_millis(50)).await;
        assert!(refresher.refreshed(&from_token).await.is_err());
    }
}
