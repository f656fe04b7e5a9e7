//! The audit log: one JSON line per request in kube's `audit.k8s.io/v1`
//! `Event` shape, so pipelines that read kube-apiserver's audit log read
//! the proxy's too, and join both on `auditID` (the proxy sends it upstream
//! as the `Audit-ID` header, which kube-apiserver takes as its own).
//!
//! ```json
//! {"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"8f1c…","stage":"ResponseComplete",
//!  "requestURI":"/api/v1/namespaces/default/pods","verb":"list",
//!  "user":{"username":"alice","uid":"1001","groups":["devs"],"extra":{"authproxy.io/authenticator":["static-tokens"]}},
//!  "sourceIPs":["10.0.0.7"],"userAgent":"kubectl/v1.31.0","objectRef":{"resource":"pods","namespace":"default","apiVersion":"v1"},
//!  "responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"…","stageTimestamp":"…"}
//! ```
//!
//! Every request is logged at `ResponseComplete`; a long-running one (a
//! watch, logs, exec) also at `ResponseStarted`, when its response head is
//! sent. Writing never blocks a request: events go through a bounded queue to a
//! writer thread; when the queue is full the event is dropped and counted.
//! The file is rotated by size (`audit.log` → `audit.log.1` …). Failed
//! authentications are always logged, whatever the policy; the credential
//! never is.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::metrics::AuditCounters;
use crate::status::Reason;

/// How long the writer waits when its queue is empty.
const WRITER_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// The key of the authenticator's name in the user's `extra` and annotations.
pub const AUTHENTICATOR_KEY: &str = "authproxy.io/authenticator";

/// The audit annotation naming an exec or attach session's recording (see
/// [`super::sessions`]).
pub const RECORDING_KEY: &str = "authproxy.io/session-recording";

/// The audit annotation naming what a revocation revoked (`session <id>`,
/// `every token of user "<name>" issued until <time>`, `every token issued
/// until <time>`).
pub const REVOKED_KEY: &str = "authproxy.io/revoked";

/// The audit annotation naming who revoked: the authenticated caller, or
/// for a token that revoked itself (a logout), that token's user.
pub const REVOKED_BY_KEY: &str = "authproxy.io/revoked-by";

/// Annotations an endpoint served beside the proxy (token exchange,
/// revocation) puts in its response's extensions for its audit event.
#[derive(Debug, Clone, Default)]
pub struct Annotations(pub Vec<(&'static str, String)>);

/// The key of the authentication's result in the annotations: `success`,
/// `invalid`, `throttled`, `unavailable`, or `unclaimed` (no authenticator
/// took the credential; the authenticator is then `none`).
pub const RESULT_KEY: &str = "authproxy.io/authentication-result";

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard output.
    Stdout,
    /// A file rotated by size.
    File {
        /// The file.
        path: PathBuf,
        /// Size at which it is rotated, in bytes.
        max_bytes: u64,
        /// Rotated files kept (`path.1` … `path.N`).
        max_backups: u32,
    },
}

/// How much is logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum Level {
    /// Only failed authentications.
    None,
    /// Every request's metadata (no bodies).
    #[default]
    Metadata,
}

/// Which requests are logged (failed authentications always are).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `Metadata` or `None`.
    pub level: Level,
    /// Paths not logged: exact, or a prefix when ending in `*`.
    pub omit_paths: Vec<String>,
    /// Log `get`, `list` and `watch` requests too.
    pub log_read_only: bool,
}

impl Policy {
    /// Whether a request that authenticated is logged.
    pub fn logs(&self, path: &str, read_only: bool) -> bool {
        self.level == Level::Metadata
            && (self.log_read_only || !read_only)
            && !self
                .omit_paths
                .iter()
                .any(|omit| match omit.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => path == omit,
                })
    }
}

/// kube's `authentication.k8s.io/v1` `UserInfo` in an event, serialized by
/// the writer thread (the request path only shares the identity).
#[derive(Debug, Clone, Default)]
pub enum EventUser {
    /// Authentication failed: `{}`.
    #[default]
    Unauthenticated,
    /// The authenticated user and the authenticator that decided.
    Authenticated {
        /// The user.
        identity: Arc<crate::authn::Identity>,
        /// Its label, added to `extra` under [`AUTHENTICATOR_KEY`].
        authenticator: Arc<str>,
    },
}

impl Serialize for EventUser {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if let EventUser::Authenticated {
            identity,
            authenticator,
        } = self
        {
            let user = identity.user();
            map.serialize_entry("username", &user.username)?;
            if let Some(uid) = &user.uid {
                map.serialize_entry("uid", uid)?;
            }
            if !user.groups.is_empty() {
                map.serialize_entry("groups", &user.groups)?;
            }
            let mut extra: BTreeMap<&str, Vec<&str>> = user
                .extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
                .collect();
            extra.insert(AUTHENTICATOR_KEY, vec![authenticator]);
            map.serialize_entry("extra", &extra)?;
        }
        map.end()
    }
}

/// A user as kube's `authentication.k8s.io/v1` `UserInfo` (an
/// `impersonatedUser`).
struct UserInfoJson<'a>(&'a crate::authn::UserInfo);

impl Serialize for UserInfoJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let user = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("username", &user.username)?;
        if let Some(uid) = &user.uid {
            map.serialize_entry("uid", uid)?;
        }
        if !user.groups.is_empty() {
            map.serialize_entry("groups", &user.groups)?;
        }
        if !user.extra.is_empty() {
            let extra: BTreeMap<&str, &Vec<String>> =
                user.extra.iter().map(|(k, v)| (k.as_str(), v)).collect();
            map.serialize_entry("extra", &extra)?;
        }
        map.end()
    }
}

/// A time, written as RFC 3339 with microseconds by the writer thread.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

/// The `responseStatus` of an event (a `metav1.Status`).
#[derive(Debug, Clone, Serialize)]
pub struct ResponseStatus {
    metadata: BTreeMap<String, String>,
    /// `Failure` for a failure the proxy answered itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// The reason of a failure the proxy answered itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The HTTP status code.
    pub code: u16,
}

impl ResponseStatus {
    /// A status with `code`, and the reason when the proxy made the answer.
    pub fn new(code: u16, reason: Option<Reason>) -> Self {
        ResponseStatus {
            metadata: BTreeMap::new(),
            status: reason.map(|_| "Failure"),
            reason,
            code,
        }
    }
}

/// What a request said about itself, kept as shared handles (no copies on
/// the request path) and written out by the writer thread.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// The request's URI.
    pub uri: http::Uri,
    /// Its `User-Agent`.
    pub user_agent: Option<http::HeaderValue>,
    /// The address that connected (the hop before the proxy).
    pub source_ip: Option<std::net::IpAddr>,
    /// The `X-Forwarded-For` that arrived from a trusted proxy (`None` from
    /// anyone else: theirs is replaced before it is forwarded).
    pub forwarded_for: Option<http::HeaderValue>,
    /// Whether it names an API object (`objectRef` is then read from the URI).
    pub resource: bool,
    /// Whether it went through a router of named clusters (see
    /// [`super::Routing`]): the object is then read below a cluster's prefix.
    pub routed: bool,
}

/// Most addresses taken from `X-Forwarded-For` into `sourceIPs`.
const MAX_FORWARDED_IPS: usize = 16;

impl RequestFacts {
    /// `sourceIPs` as kube-apiserver will list them for the forwarded
    /// request: the valid addresses of `X-Forwarded-For` (the first
    /// 16), then the connecting address unless it is the
    /// last one listed. (A caller's `X-Real-Ip` is not forwarded, so it is not
    /// listed.) The connecting address is the one that cannot be forged; the
    /// rest is what callers and proxies before it said.
    pub fn source_ips(&self) -> Vec<String> {
        fn ip(text: &str) -> Option<std::net::IpAddr> {
            text.trim().parse().ok()
        }
        let mut ips: Vec<std::net::IpAddr> = self
            .forwarded_for
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .filter_map(ip)
                    .take(MAX_FORWARDED_IPS)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(remote) = self.source_ip {
            if ips.last() != Some(&remote) {
                ips.push(remote);
            }
        }
        ips.into_iter().map(crate::forwarded::ip_text).collect()
    }
}

/// kube's `audit.k8s.io/v1` `Event`, as the proxy fills it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The request's ID, also sent upstream as `Audit-ID`.
    pub audit_id: super::AuditId,
    /// True for the `ResponseStarted` stage of a long-running request;
    /// false for `ResponseComplete` (logged for every request, and again
    /// for a long-running one when its stream ends).
    pub long_running: bool,
    /// kube's verb.
    pub verb: &'static str,
    /// The request.
    pub request: RequestFacts,
    /// The authenticated user (empty when authentication failed).
    pub user: EventUser,
    /// Who the request ran as, when the caller asked to act as someone else
    /// (`kubectl --as`) and was allowed: kube's `impersonatedUser`.
    pub impersonated_user: Option<Arc<crate::authn::Identity>>,
    /// The answer's status.
    pub response_status: ResponseStatus,
    /// When the request arrived.
    pub received: Timestamp,
    /// When this stage was reached.
    pub stage_reached: Timestamp,
    /// The authenticator and its result ([`AUTHENTICATOR_KEY`], [`RESULT_KEY`]),
    /// for every outcome.
    pub annotations: BTreeMap<&'static str, String>,
}

impl Event {
    /// A Metadata-level event.
    pub fn new(
        audit_id: super::AuditId,
        long_running: bool,
        verb: &'static str,
        request: RequestFacts,
        response_status: ResponseStatus,
        received: SystemTime,
    ) -> Self {
        Event {
            audit_id,
            long_running,
            verb,
            request,
            user: EventUser::Unauthenticated,
            impersonated_user: None,
            response_status,
            received: Timestamp(received),
            stage_reached: Timestamp(SystemTime::now()),
            annotations: BTreeMap::new(),
        }
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", "Event")?;
        map.serialize_entry("apiVersion", "audit.k8s.io/v1")?;
        map.serialize_entry("level", "Metadata")?;
        map.serialize_entry("auditID", self.audit_id.as_str())?;
        map.serialize_entry(
            "stage",
            if self.long_running {
                "ResponseStarted"
            } else {
                "ResponseComplete"
            },
        )?;
        let uri = &self.request.uri;
        map.serialize_entry(
            "requestURI",
            uri.path_and_query().map_or(uri.path(), |pq| pq.as_str()),
        )?;
        map.serialize_entry("verb", self.verb)?;
        map.serialize_entry("user", &self.user)?;
        if let Some(identity) = &self.impersonated_user {
            map.serialize_entry("impersonatedUser", &UserInfoJson(identity.user()))?;
        }
        map.serialize_entry("sourceIPs", &self.request.source_ips())?;
        if let Some(agent) = self
            .request
            .user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
        {
            map.serialize_entry("userAgent", agent)?;
        }
        if self.request.resource {
            if let Some(object) = super::request_info::object_ref(uri, self.request.routed) {
                map.serialize_entry("objectRef", &object)?;
            }
        }
        map.serialize_entry("responseStatus", &self.response_status)?;
        map.serialize_entry("requestReceivedTimestamp", &self.received)?;
        map.serialize_entry("stageTimestamp", &self.stage_reached)?;
        if !self.annotations.is_empty() {
            map.serialize_entry("annotations", &self.annotations)?;
        }
        map.end()
    }
}

/// The audit log: a policy and a queue to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: SyncSender<Event>,
    policy: Arc<Policy>,
    counters: Arc<AuditCounters>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("policy", &self.policy)
            .finish()
    }
}

/// The audit file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

impl AuditLog {
    /// Opens the destination and starts the writer thread. The thread ends
    /// (after writing what is queued) when the last clone is dropped.
    pub fn start(
        destination: Destination,
        policy: Policy,
        queue_size: usize,
    ) -> Result<AuditLog, AuditError> {
        let writer = Writer::open(destination)?;
        let (queue, events) = sync_channel(queue_size.max(1));
        let counters = Arc::new(AuditCounters::default());
        let written = counters.clone();
        std::thread::Builder::new()
            .name("authproxy-audit".into())
            .spawn(move || writer.run(events, &written))
            .map_err(|source| AuditError {
                path: PathBuf::from("(writer thread)"),
                source,
            })?;
        Ok(AuditLog {
            queue,
            policy: Arc::new(policy),
            counters,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Written and dropped events, for metrics.
    pub fn counters(&self) -> Arc<AuditCounters> {
        self.counters.clone()
    }

    /// Queues an event; never blocks. A full queue drops it (counted).
    pub fn log(&self, event: Event) {
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: BufWriter<File>,
        /// The open file's device and inode, to see it moved or deleted.
        identity: (u64, u64),
        size: u64,
        max_bytes: u64,
        max_backups: u32,
    },
}

struct Writer {
    sink: Sink,
    /// The file was moved or deleted and could not be opened again: events
    /// are not written where nobody looks, but counted as failed writes.
    detached: bool,
    /// When the file was last checked to still be at its path.
    checked: std::time::Instant,
    /// Failed writes since the last warning, and when that was.
    failures: (u64, Option<std::time::Instant>),
}

/// How often the writer checks that its file is still at its path.
const REOPEN_CHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// Fewest seconds between two warnings about failed writes.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens `path` for appending, readable and writable by its owner only
/// (0600, as kube-apiserver's audit files; an existing file is narrowed to
/// it): the events name users, their groups and what they did.
fn open_append(path: &Path) -> Result<(File, (u64, u64), u64), AuditError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let error = |source| AuditError {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    let metadata = file.metadata().map_err(error)?;
    // A file that was there already (an older version made it 0644) is
    // narrowed too.
    if metadata.mode() & 0o077 != 0 {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(error)?;
    }
    Ok((file, (metadata.dev(), metadata.ino()), metadata.len()))
}

/// Whether `path` still names the open file `identity`.
fn still_at(path: &Path, identity: (u64, u64)) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == identity)
}

impl Writer {
    fn open(destination: Destination) -> Result<Writer, AuditError> {
        let sink = match destination {
            Destination::Stdout => Sink::Stdout,
            Destination::File {
                path,
                max_bytes,
                max_backups,
            } => {
                let (file, identity, size) = open_append(&path)?;
                Sink::File {
                    path,
                    file: BufWriter::new(file),
                    identity,
                    size,
                    max_bytes,
                    max_backups,
                }
            }
        };
        Ok(Writer {
            sink,
            detached: false,
            checked: std::time::Instant::now(),
            failures: (0, None),
        })
    }

    /// Opens the file again when it was moved or deleted (logrotate without
    /// `copytruncate`, an operator's `rm`), checking at most every
    /// [`REOPEN_CHECK`]: events are never written into a file nobody sees.
    fn reopen_if_moved(&mut self, counters: &AuditCounters) {
        let Sink::File {
            path,
            file,
            identity,
            size,
            ..
        } = &mut self.sink
        else {
            return;
        };
        if self.checked.elapsed() < REOPEN_CHECK {
            return;
        }
        self.checked = std::time::Instant::now();
        if still_at(path, *identity) {
            self.detached = false;
            return;
        }
        let _ = file.flush();
        match open_append(path) {
            Ok((fresh, fresh_identity, fresh_size)) => {
                *file = BufWriter::new(fresh);
                *identity = fresh_identity;
                *size = fresh_size;
                self.detached = false;
                counters.reopened.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), "audit log was moved or deleted; opened it again");
            }
            Err(error) => {
                self.detached = true;
                self.failed(&error.source, counters);
            }
        }
    }

    /// Counts a failed write, warning at most every [`WARN_EVERY`] with how
    /// many failed since the last warning.
    fn failed(&mut self, error: &std::io::Error, counters: &AuditCounters) {
        counters.write_errors.fetch_add(1, Ordering::Relaxed);
        let (count, last) = &mut self.failures;
        *count += 1;
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(%error, failed = *count, "audit events not written");
            *count = 0;
            *last = Some(std::time::Instant::now());
        }
    }

    fn run(mut self, events: Receiver<Event>, counters: &AuditCounters) {
        let mut line = Vec::with_capacity(1024);
        loop {
            match events.try_recv() {
                Ok(event) => {
                    self.reopen_if_moved(counters);
                    if self.detached {
                        let gone = std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "the audit file was moved or deleted and cannot be opened again",
                        );
                        self.failed(&gone, counters);
                        continue;
                    }
                    line.clear();
                    event.write_json(&mut line);
                    line.push(b'\n');
                    match self.write(&line) {
                        Ok(()) => {
                            counters.written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => self.failed(&error, counters),
                    }
                }
                Err(TryRecvError::Empty) => {
                    // The queue is empty: make what was written visible, then
                    // look again shortly. Polling keeps senders from waking
                    // this thread on every event (a system call per request).
                    if let Err(error) = self.flush() {
                        self.failed(&error, counters);
                    }
                    self.reopen_if_moved(counters);
                    std::thread::sleep(WRITER_POLL);
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        let _ = self.flush();
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(line),
            Sink::File {
                path,
                file,
                identity,
                size,
                max_bytes,
                max_backups,
            } => {
                if *size > 0 && *size + line.len() as u64 > *max_bytes {
                    file.flush()?;
                    rotate(path, *max_backups)?;
                    let (fresh, fresh_identity, fresh_size) =
                        open_append(path).map_err(|e| e.source)?;
                    *file = BufWriter::new(fresh);
                    *identity = fresh_identity;
                    *size = fresh_size;
                }
                file.write_all(line)?;
                *size += line.len() as u64;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.sink {
            Sink::Stdout => std::io::stdout().lock().flush(),
            Sink::File { file, .. } => file.flush(),
        }
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// `path.N-1` → `path.N` … `path` → `path.1`; the oldest beyond `max_backups` goes.
/// A file that is gone already (moved or deleted by someone else) is
/// nothing to rotate.
fn rotate(path: &Path, max_backups: u32) -> std::io::Result<()> {
    let gone_is_fine = |result: std::io::Result<()>| match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    if max_backups == 0 {
        return gone_is_fine(std::fs::remove_file(path));
    }
    for n in (1..max_backups).rev() {
        let from = numbered(path, n);
        if from.exists() {
            gone_is_fine(std::fs::rename(&from, numbered(path, n + 1)))?;
        }
    }
    gone_is_fine(std::fs::rename(path, numbered(path, 1)))
}

#[path = "audit_json.rs"]
mod json;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn event(_n: usize) -> Event {
        Event::new(
            crate::observe::AuditId::next(),
            false,
            "list",
            RequestFacts {
                uri: "/api/v1/pods".parse().unwrap(),
                user_agent: None,
                source_ip: Some([127, 0, 0, 1].into()),
                forwarded_for: None,
                resource: true,
                routed: true,
            },
            ResponseStatus::new(200, None),
            SystemTime::now(),
        )
    }

    /// Waits (bounded) until the writer opened its file again `count` times.
    fn wait_reopened(log: &AuditLog, count: u64) {
        let start = Instant::now();
        while log.counters().reopened.load(Ordering::Relaxed) < count {
            assert!(start.elapsed() < REOPEN_CHECK * 10, "not opened again");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_written(log: &AuditLog, count: u64) {
        let start = Instant::now();
        while log.counters().written.load(Ordering::Relaxed) < count {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "events not written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn facts(forwarded_for: Option<&str>) -> RequestFacts {
        RequestFacts {
            uri: "/api".parse().unwrap(),
            user_agent: None,
            source_ip: Some([10, 0, 0, 9].into()),
            forwarded_for: forwarded_for.map(|v| http::HeaderValue::from_str(v).unwrap()),
            resource: false,
            routed: true,
        }
    }

    #[test]
    fn source_ips_follow_kube_forwarded_for_then_the_connection() {
        let cases: &[(Option<&str>, &[&str])] = &[
            (None, &["10.0.0.9"]),
            (Some("203.0.113.9"), &["203.0.113.9", "10.0.0.9"]),
            (
                Some(" 203.0.113.9 , junk, 2001:db8::1"),
                &["203.0.113.9", "2001:db8::1", "10.0.0.9"],
            ),
            // The connecting address last already: not repeated.
            (Some("203.0.113.9, 10.0.0.9"), &["203.0.113.9", "10.0.0.9"]),
        ];
        for (xff, expected) in cases {
            assert_eq!(
                facts(*xff).source_ips(),
                expected.to_vec(),
                "X-Forwarded-For {xff:?}"
            );
        }
        let long = vec!["192.0.2.1"; 100].join(",");
        assert_eq!(facts(Some(&long)).source_ips().len(), MAX_FORWARDED_IPS + 1);
    }

    #[test]
    fn file_is_rotated_by_size_keeping_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(
            Destination::File {
                path: path.clone(),
                max_bytes: 1000,
                max_backups: 2,
            },
            Policy::default(),
            100,
        )
        .unwrap();
        for n in 0..40 {
            log.log(event(n));
        }
        wait_written(&log, 40);
        drop(log);
        let mut lines = 0;
        for file in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.len() <= 1000,
                "{} is {} bytes",
                file.display(),
                text.len()
            );
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
                lines += 1;
            }
        }
        assert!(!numbered(&path, 3).exists());
        assert!(lines < 40, "older events past the backups are gone");
    }

    #[test]
    fn a_moved_or_deleted_file_is_opened_again_and_nothing_more_is_lost() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // Made by an older version, world-readable.
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = AuditLog::start(
            Destination::File {
                path: path.clone(),
                max_bytes: 1 << 20,
                max_backups: 2,
            },
            Policy::default(),
            1000,
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        log.log(event(0));
        wait_written(&log, 1);
        // logrotate without copytruncate: moved away, then deleted outright.
        std::fs::rename(&path, dir.path().join("audit.log.moved")).unwrap();
        wait_reopened(&log, 1);
        for n in 1..=30 {
            log.log(event(n));
        }
        wait_written(&log, 31);
        std::fs::remove_file(&path).unwrap();
        wait_reopened(&log, 2);
        for n in 31..=60 {
            log.log(event(n));
        }
        wait_written(&log, 61);
        let counters = log.counters();
        drop(log);
        assert_eq!(counters.write_errors.load(Ordering::Relaxed), 0);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(counters.reopened.load(Ordering::Relaxed), 2);
        // The events after the deletion are all in the file at the path:
        // none went into the deleted file.
        let seen = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(seen, 30, "events where the operator looks");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    #[test]
    fn events_for_a_file_that_cannot_be_opened_again_are_counted_as_failed() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("audit");
        std::fs::create_dir(&folder).unwrap();
        let path = folder.join("audit.log");
        let log = AuditLog::start(
            Destination::File {
                path: path.clone(),
                max_bytes: 1 << 20,
                max_backups: 1,
            },
            Policy::default(),
            1000,
        )
        .unwrap();
        log.log(event(0));
        wait_written(&log, 1);
        // The whole folder goes: the file cannot be opened again.
        std::fs::remove_dir_all(&folder).unwrap();
        let start = Instant::now();
        let mut n = 1;
        while log.counters().write_errors.load(Ordering::Relaxed) < 3 {
            assert!(
                start.elapsed() < REOPEN_CHECK * 10,
                "no failed writes counted"
            );
            log.log(event(n));
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let written = log.counters().written.load(Ordering::Relaxed);
        // The folder is back: events are written at the path again.
        std::fs::create_dir(&folder).unwrap();
        wait_reopened(&log, 1);
        log.log(event(n));
        wait_written(&log, written + 1);
        drop(log);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn policy_omits_paths_and_read_only_requests() {
        let policy = Policy {
            level: Level::Metadata,
            omit_paths: vec!["/livez".into(), "/metrics/*".into()],
            log_read_only: false,
        };
        assert!(!policy.logs("/livez", false));
        assert!(!policy.logs("/metrics/x", false));
        assert!(!policy.logs("/api/v1/pods", true));
        assert!(policy.logs("/api/v1/pods", false));
        let none = Policy {
            level: Level::None,
            log_read_only: true,
            ..Policy::default()
        };
        assert!(!none.logs("/api/v1/pods", false));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (queue, _events) = sync_channel(1);
        let log = AuditLog {
            queue,
            policy: Arc::new(Policy::default()),
            counters: Arc::new(AuditCounters::default()),
        };
        for n in 0..5 {
            log.log(event(n));
        }
        assert_eq!(log.counters().dropped.load(Ordering::Relaxed), 4);
    }
}
