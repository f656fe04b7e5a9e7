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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

pub use crate::counters::RefreshCounters;

struct Answer {
    at: Instant,
    found: Option<UserInfo>,
}

/// How long after a failed lookup the directory is not asked again for the
/// same user (requests use the last answer within the grace meanwhile).
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);

/// The answers of the directory, shared by requests, the lookups that run
/// beside them, and the chains a reload replaces (each chain brings its
/// own directory and settings: see [`Refreshing`]).
pub struct Refresher {
    answers: moka::sync::Cache<String, Arc<Answer>>,
    /// One lookup per user at a time: requests that need one wait for it.
    lookups: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
    /// When a user's last lookup failed.
    failures: moka::sync::Cache<String, Instant>,
    /// Users looked up in the background right now.
    running: Mutex<std::collections::HashSet<String>>,
    counters: Arc<RefreshCounters>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("answers", &self.answers.entry_count())
            .finish_non_exhaustive()
    }
}

impl Default for Refresher {
    fn default() -> Self {
        Refresher {
            answers: moka::sync::Cache::new(100_000),
            lookups: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILURE_BACKOFF)
                .build(),
            running: Mutex::default(),
            counters: Arc::default(),
        }
    }
}

/// One chain's way to the directory: where users are looked up (none: no
/// directory is configured, and tokens that need one are refused) and how
/// often. A reload builds a new one with its chain, so a configuration the
/// proxy refused never changes it.
#[derive(Clone)]
pub struct Refreshing {
    /// Where users are looked up.
    pub directory: Option<Arc<dyn Directory>>,
    /// How often and how long.
    pub settings: RefreshSettings,
}

impl std::fmt::Debug for Refreshing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refreshing")
            .field("directory", &self.directory.is_some())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Refresher {
    /// Lookups by result.
    pub fn counters(&self) -> &Arc<RefreshCounters> {
        &self.counters
    }

    /// `user` (from a token) as `way`'s directory has them now; refused
    /// when the directory no longer does (or names someone else), or cannot
    /// say for longer than the grace.
    pub async fn refreshed(
        self: &Arc<Self>,
        user: &UserInfo,
        way: &Refreshing,
    ) -> Result<UserInfo, AuthnError> {
        let settings = way.settings;
        let fresh = |answer: &Answer| answer.at.elapsed() <= settings.interval;
        if let Some(answer) = self.answers.get(&user.username) {
            if fresh(&answer) {
                return apply(user, &answer);
            }
            if answer.at.elapsed() <= settings.interval.saturating_mul(2) {
                self.look_up_beside(user.username.clone(), way.clone());
                return apply(user, &answer);
            }
        }
        // One lookup per user at a time; those waiting take its answer.
        let gate = self.lookups.get_with(user.username.clone(), || {
            Arc::new(tokio::sync::Mutex::new(()))
        });
        let _turn = gate.lock().await;
        let cached = self.answers.get(&user.username);
        if let Some(answer) = cached.as_ref().filter(|a| fresh(a)) {
            return apply(user, answer);
        }
        let within_grace = |answer: &Arc<Answer>| answer.at.elapsed() <= settings.grace;
        let backoff = FAILURE_BACKOFF.min(settings.interval);
        if self
            .failures
            .get(&user.username)
            .is_some_and(|at| at.elapsed() < backoff)
        {
            // Asked a moment ago and it failed: not again yet.
            return match cached.filter(within_grace) {
                Some(answer) => apply(user, &answer),
                None => Err(AuthnError::Unavailable {
                    backend: "LDAP".into(),
                    reason: "the directory could not be asked a moment ago".into(),
                }),
            };
        }
        match self.look_up(&user.username, way).await {
            Ok(answer) => apply(user, &answer),
            Err(error) => match cached.filter(within_grace) {
                Some(answer) => {
                    tracing::warn!(user = %user.username, %error, "the directory cannot be asked; its last answer holds");
                    apply(user, &answer)
                }
                None => Err(error),
            },
        }
    }

    async fn look_up(&self, username: &str, way: &Refreshing) -> Result<Arc<Answer>, AuthnError> {
        let Some(directory) = &way.directory else {
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
                self.failures.invalidate(username);
                Ok(answer)
            }
            Err(error) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.failures.insert(username.to_owned(), Instant::now());
                Err(error)
            }
        }
    }

    /// Looks `username` up in the background, once at a time per user.
    fn look_up_beside(self: &Arc<Self>, username: String, way: Refreshing) {
        {
            let Ok(mut running) = self.running.lock() else {
                return;
            };
            if !running.insert(username.clone()) {
                return;
            }
        }
        /// Takes the user off the running set however the lookup ends.
        struct Done(Arc<Refresher>, String);
        impl Drop for Done {
            fn drop(&mut self) {
                if let Ok(mut running) = self.0.running.lock() {
                    running.remove(&self.1);
                }
            }
        }
        let done = Done(self.clone(), username);
        tokio::spawn(async move {
            let (this, username) = (&done.0, &done.1);
            // The same turn as a request's own lookup: a request whose
            // cached answer has grown too old meanwhile waits for this one,
            // and takes its answer instead of asking the directory again.
            let gate = this
                .lookups
                .get_with(username.clone(), || Arc::new(tokio::sync::Mutex::new(())));
            let _turn = gate.lock().await;
            if this
                .answers
                .get(username)
                .is_some_and(|answer| answer.at.elapsed() <= way.settings.interval)
            {
                return;
            }
            let backoff = FAILURE_BACKOFF.min(way.settings.interval);
            if this
                .failures
                .get(username)
                .is_some_and(|at| at.elapsed() < backoff)
            {
                return;
            }
            if let Err(error) = this.look_up(username, &way).await {
                tracing::info!(user = %username, %error, "refreshing a user from the directory failed");
            }
        });
    }
}

/// `user` with what `answer` says: its groups and uid, or a refusal when
/// the directory's entry is gone, or is no longer the same user (another
/// name, or another uid where the token had one: a name reused by a new
/// entry, or a filter that now finds someone else).
fn apply(user: &UserInfo, answer: &Answer) -> Result<UserInfo, AuthnError> {
    let gone = || {
        AuthnError::Invalid(
            "the directory no longer has this user, or the account is disabled".into(),
        )
    };
    let Some(now) = &answer.found else {
        return Err(gone());
    };
    if !now.username.eq_ignore_ascii_case(&user.username) {
        return Err(gone());
    }
    if let (Some(was), Some(is)) = (&user.uid, &now.uid) {
        if was != is {
            return Err(gone());
        }
    }
    Ok(UserInfo {
        username: user.username.clone(),
        uid: now.uid.clone().or_else(|| user.uid.clone()),
        groups: now.groups.clone(),
        extra: user.extra.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A directory whose answers the test sets, counting lookups (each
    /// takes a moment, so that requests can meet).
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
                tokio::time::sleep(Duration::from_millis(20)).await;
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
            uid: Some("1001".into()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        }
    }

    /// The answer a [`Scripted`] directory gives, settable.
    type Script = Arc<Mutex<Result<DirectoryAnswer, String>>>;

    fn scripted(
        first: DirectoryAnswer,
        interval: Duration,
    ) -> (Refreshing, Script, Arc<AtomicU64>) {
        let answer = Arc::new(Mutex::new(Ok(first)));
        let asked = Arc::new(AtomicU64::new(0));
        let way = Refreshing {
            directory: Some(Arc::new(Scripted {
                answer: answer.clone(),
                asked: asked.clone(),
            })),
            settings: RefreshSettings {
                interval,
                grace: Duration::from_secs(1),
            },
        };
        (way, answer, asked)
    }

    #[tokio::test]
    async fn groups_follow_the_directory_a_gone_user_is_refused_and_the_grace_holds() {
        let interval = Duration::from_millis(200);
        let (way, answer, asked) =
            scripted(DirectoryAnswer::Found(user(&["devs", "ops"])), interval);
        let refresher = Arc::new(Refresher::default());
        // The token says devs; the directory, devs and ops.
        let from_token = user(&["devs"]);
        let now = refresher.refreshed(&from_token, &way).await.unwrap();
        let looked_up = std::time::Instant::now();
        assert_eq!(now.groups, ["devs", "ops"]);
        // Within the interval: no lookup.
        refresher.refreshed(&from_token, &way).await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // ops removed in the directory: seen after the interval; the first
        // request past it is answered at once, a lookup runs beside it.
        *answer.lock().unwrap() = Ok(DirectoryAnswer::Found(user(&["devs"])));
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        let beside = refresher.refreshed(&from_token, &way).await.unwrap();
        assert_eq!(beside.groups, ["devs", "ops"]);
        // ... and once that lookup has run, its answer is used. Looked for
        // until the first answer is two intervals old: past that, a request
        // would look the user up itself, and could not tell whether the
        // lookup beside it ever stored its answer.
        let window_ends = looked_up + interval * 2 - Duration::from_millis(10);
        let mut groups = beside.groups;
        while groups != ["devs"] && std::time::Instant::now() < window_ends {
            tokio::time::sleep(Duration::from_millis(10)).await;
            groups = refresher.refreshed(&from_token, &way).await.unwrap().groups;
        }
        assert_eq!(
            groups,
            ["devs"],
            "the lookup beside the request stored nothing"
        );
        // The directory down: the last answer holds for the grace...
        *answer.lock().unwrap() = Err("down".into());
        tokio::time::sleep(interval * 2 + Duration::from_millis(50)).await;
        assert_eq!(
            refresher.refreshed(&from_token, &way).await.unwrap().groups,
            ["devs"]
        );
        // ... and not after it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(matches!(
            refresher.refreshed(&from_token, &way).await,
            Err(AuthnError::Unavailable { .. })
        ));
        // The user gone: refused.
        *answer.lock().unwrap() = Ok(DirectoryAnswer::Gone);
        tokio::time::sleep(interval).await;
        let refused = refresher.refreshed(&from_token, &way).await.unwrap_err();
        assert!(
            refused.to_string().contains("no longer has this user"),
            "{refused}"
        );
        assert_eq!(refresher.counters().gone.load(Ordering::SeqCst), 1);
        // No directory configured any more: refused once the answers age.
        let none = Refreshing {
            directory: None,
            ..way
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(refresher.refreshed(&from_token, &none).await.is_err());
    }

    /// A directory that always finds the user, each lookup taking as long
    /// as the test sets.
    struct Slow {
        delay_ms: Arc<AtomicU64>,
        asked: Arc<AtomicU64>,
    }

    impl Directory for Slow {
        fn lookup<'a>(
            &'a self,
            _username: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<DirectoryAnswer, AuthnError>> + Send + 'a>>
        {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let delay = Duration::from_millis(self.delay_ms.load(Ordering::SeqCst));
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(DirectoryAnswer::Found(user(&["devs"])))
            })
        }
    }

    #[tokio::test]
    async fn a_request_whose_answer_aged_meanwhile_takes_the_background_lookups_answer() {
        let interval = Duration::from_millis(100);
        let (delay_ms, asked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let way = Refreshing {
            directory: Some(Arc::new(Slow {
                delay_ms: delay_ms.clone(),
                asked: asked.clone(),
            })),
            settings: RefreshSettings {
                interval,
                grace: Duration::from_secs(60),
            },
        };
        let refresher = Arc::new(Refresher::default());
        let from_token = user(&["devs"]);
        refresher.refreshed(&from_token, &way).await.unwrap();
        // Past the interval: answered at once, a lookup (a slow one now)
        // starts beside the request.
        delay_ms.store(400, Ordering::SeqCst);
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        refresher.refreshed(&from_token, &way).await.unwrap();
        // Past twice the interval, that lookup still running: the next
        // request waits for it rather than asking the directory again.
        tokio::time::sleep(interval).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        let groups = refresher.refreshed(&from_token, &way).await.unwrap().groups;
        assert_eq!(groups, ["devs"]);
        assert_eq!(asked.load(Ordering::SeqCst), 2, "one lookup, not two");
    }

    #[tokio::test]
    async fn requests_that_need_a_lookup_share_one() {
        let (way, _answer, asked) = scripted(
            DirectoryAnswer::Found(user(&["devs"])),
            Duration::from_secs(60),
        );
        let refresher = Arc::new(Refresher::default());
        let from_token = user(&["devs"]);
        let all = (0..20).map(|_| refresher.refreshed(&from_token, &way));
        for result in futures_util::future::join_all(all).await {
            assert_eq!(result.unwrap().groups, ["devs"]);
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_entry_that_is_someone_else_now_ends_the_session() {
        let refresher = Arc::new(Refresher::default());
        let from_token = user(&["devs"]);
        // The name reused by a new entry (another uid), or a filter that
        // now finds another name.
        let other_uid = UserInfo {
            uid: Some("2002".into()),
            ..user(&["admins"])
        };
        let other_name = UserInfo {
            username: "mallory".into(),
            ..user(&["admins"])
        };
        for someone_else in [other_uid, other_name] {
            let (way, _, _) = scripted(
                DirectoryAnswer::Found(someone_else),
                Duration::from_secs(60),
            );
            refresher.answers.invalidate_all();
            assert!(refresher.refreshed(&from_token, &way).await.is_err());
        }
    }
}
