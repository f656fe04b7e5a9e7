//! Recording of `kubectl exec` and `kubectl attach` sessions: one asciicast
//! v2 file per session (the container's output, and what was typed when
//! `input` is on), named by the request's audit ID and named in its audit
//! event (`authproxy.io/session-recording`).
//!
//! The stream is read as it passes, over either protocol kubectl speaks
//! (WebSocket `v5.channel.k8s.io` and the older channel protocols, or
//! SPDY/3.1), and never waits for the recording: what the stream readers
//! find goes to the file's writer thread through a bounded queue, and what
//! does not fit is counted and named in a marker at the end instead. A file
//! stops growing at `maxBytes` (with a marker saying so) while the session
//! goes on.
//!
//! [`SessionRecorder`] decides which sessions are recorded (by the user who
//! authenticated, their groups, or the pod's namespace) and goes to
//! [`LongRunningLayer::with_recording`](crate::layer::LongRunningLayer::with_recording).

mod cast;
mod spdy;
mod websocket;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{header, HeaderMap, Request};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::authn::Identity;
use crate::problem::Problem;
use cast::Happened;
pub use cast::{Cast, CastEvent, CastHeader};
use spdy::{SpdyParser, StreamKind};
use websocket::WsParser;

pub use super::audit::RECORDING_KEY;

/// A recording's size limit when `maxBytes` is not set: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Events queued for a recording's writer before more are counted as lost.
const QUEUE: usize = 1024;
/// Bytes one session may have waiting for its writer; more are left out
/// and counted.
const SESSION_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Bytes every session of a recorder together may have waiting.
const ALL_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// `sessionRecording:` which exec and attach sessions are recorded, where,
/// and how much.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionRecordingConfig {
    /// The folder recordings are written to (it must exist), one
    /// `<audit-id>.cast` file per session.
    pub dir: PathBuf,
    /// Record the sessions of these users (who authenticated, by name).
    #[serde(default)]
    pub users: Vec<String>,
    /// Record the sessions of members of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Record the sessions in pods of these namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Record what is sent to the container's stdin too (passwords typed
    /// into a shell would be in the file: off by default).
    #[serde(default)]
    pub input: bool,
    /// The size a recording stops growing at (default [`DEFAULT_MAX_BYTES`]).
    pub max_bytes: Option<u64>,
    /// A selected session that cannot be recorded does not happen (default
    /// false: it goes on unrecorded, logged and counted). Its file is
    /// created before the request is forwarded (refused with 503 when it
    /// cannot be), and a stream the recorder cannot read is refused with 503
    /// instead of being opened for the caller.
    #[serde(default)]
    pub required: bool,
}

impl SessionRecordingConfig {
    /// The folder with relative paths resolved against `base`.
    pub fn dir_in(&self, base: &Path) -> PathBuf {
        if self.dir.is_absolute() {
            self.dir.clone()
        } else {
            base.join(&self.dir)
        }
    }

    /// Every problem in the section, `prefix` being its path.
    pub fn validate(&self, prefix: &str, base: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        let dir = self.dir_in(base);
        match std::fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => problems.push(Problem {
                field: format!("{prefix}.dir"),
                message: format!("{} is not a folder", dir.display()),
            }),
            Err(e) => problems.push(Problem {
                field: format!("{prefix}.dir"),
                message: format!("cannot use {}: {e}", dir.display()),
            }),
        }
        if self.max_bytes == Some(0) {
            problems.push(Problem {
                field: format!("{prefix}.maxBytes"),
                message: "must be more than 0".into(),
            });
        }
        for (name, list) in [
            ("users", &self.users),
            ("groups", &self.groups),
            ("namespaces", &self.namespaces),
        ] {
            if let Some(i) = list.iter().position(|v| v.trim().is_empty()) {
                problems.push(Problem {
                    field: format!("{prefix}.{name}[{i}]"),
                    message: "must not be empty".into(),
                });
            }
        }
        problems
    }
}

pub use crate::counters::RecordingCounters;

/// Decides which sessions are recorded and starts their recordings.
#[derive(Debug)]
pub struct SessionRecorder {
    dir: PathBuf,
    users: Vec<String>,
    groups: Vec<String>,
    namespaces: Vec<String>,
    input: bool,
    max_bytes: u64,
    /// Sessions that cannot be recorded are refused.
    required: bool,
    counters: Arc<RecordingCounters>,
    /// Bytes every session has waiting for its writer.
    queued: Arc<AtomicUsize>,
}

impl SessionRecorder {
    /// A recorder for `config` (relative `dir` resolved against `base`).
    /// With no users, groups or namespaces listed, every session is
    /// recorded; otherwise those matching any of them.
    pub fn new(config: &SessionRecordingConfig, base: &Path) -> Arc<SessionRecorder> {
        Arc::new(SessionRecorder {
            dir: config.dir_in(base),
            users: config.users.clone(),
            groups: config.groups.clone(),
            namespaces: config.namespaces.clone(),
            input: config.input,
            max_bytes: config.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            required: config.required,
            counters: Arc::default(),
            queued: Arc::default(),
        })
    }

    /// What recording did so far.
    pub fn counters(&self) -> &Arc<RecordingCounters> {
        &self.counters
    }

    fn selects(&self, identity: Option<&Identity>, namespace: &str) -> bool {
        if self.users.is_empty() && self.groups.is_empty() && self.namespaces.is_empty() {
            return true;
        }
        let user = identity.map(Identity::user);
        self.namespaces.iter().any(|n| n == namespace)
            || user.is_some_and(|u| {
                self.users.contains(&u.username) || u.groups.iter().any(|g| self.groups.contains(g))
            })
    }

    /// The tap for `req` when it opens an exec or attach session this
    /// recorder selects (the request's path as the API server reads it).
    pub(crate) fn tap_for<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        identity: Option<&Identity>,
    ) -> Option<SessionTap> {
        // An exec or attach of a pod, or the same through the kubelet's API
        // behind `nodes/<node>/proxy` (recorded alike: it is the same session).
        let pod_session = crate::observe::request_info::object_ref(req.uri(), false)
            .filter(|object| {
                object.resource == "pods"
                    && object.api_group.is_empty()
                    && matches!(object.subresource.as_str(), "exec" | "attach")
            })
            .map(|object| {
                // kube reads the container from the query.
                let container = req.uri().query().and_then(|q| {
                    q.split('&')
                        .find_map(|pair| pair.strip_prefix("container="))
                        .map(str::to_owned)
                });
                (object.subresource, object.namespace, object.name, container)
            });
        let (subresource, namespace, pod, container) = match pod_session {
            Some(session) => session,
            None => {
                // The kubelet reads the container from the path.
                let session = crate::observe::request_info::node_proxy_session(req.uri())
                    .filter(|session| session.kind != "run")?;
                (
                    session.kind.to_owned(),
                    session.namespace,
                    session.pod,
                    Some(session.container),
                )
            }
        };
        if !self.selects(identity, &namespace) {
            return None;
        }
        let audit_id = req
            .headers()
            .get(crate::observe::AUDIT_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| is_file_name(id))
            .map(str::to_owned)
            .unwrap_or_else(|| crate::observe::AuditId::next().to_string());
        let container = container.filter(|c| is_file_name(c));
        let who = identity.map_or("(anonymous)", |i| i.user().username.as_str());
        let mut title = format!("{who} {subresource} {namespace}/{pod}");
        if let Some(container) = container {
            title.push('/');
            title.push_str(&container);
        }
        Some(SessionTap {
            recorder: self.clone(),
            path: self.dir.join(format!("{audit_id}.cast")),
            title,
            started: Arc::default(),
            prepared: Arc::default(),
        })
    }

    /// Whether a session that cannot be recorded is refused.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Whether `req` runs a command this recorder selects in a way no
    /// recording can follow, and recording is required: the kubelet's `run`
    /// behind `nodes/<node>/proxy` (one command, its output in the response
    /// body, no stream to record). Such a request is refused.
    pub(crate) fn refuses_unrecordable<B>(
        &self,
        req: &Request<B>,
        identity: Option<&Identity>,
    ) -> bool {
        self.required
            && crate::observe::request_info::node_proxy_session(req.uri())
                .is_some_and(|s| s.kind == "run" && self.selects(identity, &s.namespace))
    }
}

/// Narrows an upgrade request to protocols the recorder can read, so the
/// API server cannot open a stream that would go unrecorded: SPDY, or a
/// WebSocket offering kube's channel protocols (those offered that the
/// recorder cannot read are taken out of `Sec-WebSocket-Protocol`). `Err`
/// when nothing readable is left.
pub(crate) fn keep_readable_protocols(headers: &mut HeaderMap) -> Result<(), String> {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if upgrade.starts_with("spdy/") {
        return Ok(());
    }
    if upgrade != "websocket" {
        return Err(format!("the recorder cannot read {upgrade:?}"));
    }
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        // None named: kube reads it as `channel.k8s.io`, which is readable.
        return Ok(());
    }
    let readable: Vec<&String> = offered
        .iter()
        .filter(|p| WsParser::new(p).is_some())
        .collect();
    if readable.is_empty() {
        return Err(format!(
            "the recorder cannot read any protocol offered: {}",
            offered.join(", ")
        ));
    }
    let joined = readable
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let Ok(value) = http::HeaderValue::from_str(&joined) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    Ok(())
}

/// A name that is safe as (part of) a file name: letters, digits, `-`,
/// `_` and `.`, not starting with a dot.
fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A session chosen for recording, before its stream opens: it goes in the
/// request's extensions, and the forwarder starts it when the API server
/// switches protocols.
#[derive(Debug, Clone)]
pub struct SessionTap {
    recorder: Arc<SessionRecorder>,
    path: PathBuf,
    title: String,
    /// Set once the recording's file is created (shared by clones).
    started: Arc<std::sync::atomic::AtomicBool>,
    /// The file made ahead of the stream when recording is required.
    prepared: Arc<Mutex<Option<Prepared>>>,
}

/// A recording's file made before its stream opened; removed again if the
/// stream never opens.
#[derive(Debug)]
struct Prepared {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SessionTap {
    /// Where the recording goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the recording's file now, before the request is forwarded
    /// (when recording is required): an error says why it cannot be, and
    /// the session must not happen.
    pub(crate) fn prepare(&self) -> std::io::Result<()> {
        let file = cast::create(&self.path).inspect_err(|_| {
            self.recorder
                .counters
                .failed
                .fetch_add(1, Ordering::Relaxed);
        })?;
        if let Ok(mut slot) = self.prepared.lock() {
            *slot = Some(Prepared {
                file: Some(file),
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Whether the recording started (its stream opened and is being
    /// written); false until the stream opens, and for a session that could
    /// not be recorded.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Starts recording a stream the API server switched to with
    /// `response` headers (`offered` is the client's `Upgrade` when the
    /// answer does not say): the readers of the client's and the server's
    /// bytes. `None` for a protocol it cannot read, or a file it cannot
    /// create (logged and counted; the session goes on unrecorded).
    pub(crate) fn start(self, response: &HeaderMap, offered: &str) -> Option<(Tap, Tap)> {
        let upgrade = response
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(offered)
            .trim()
            .to_ascii_lowercase();
        let readers = if upgrade.starts_with("spdy/") {
            Readers::Spdy {
                client: Box::new(SpdyParser::new(true)),
                server: Box::new(SpdyParser::new(false)),
                streams: HashMap::new(),
            }
        } else if upgrade == "websocket" {
            let protocol = response
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .trim();
            match (WsParser::new(protocol), WsParser::new(protocol)) {
                (Some(client), Some(server)) => Readers::WebSocket { client, server },
                _ => {
                    self.recorder
                        .counters
                        .failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%protocol, "a session to record speaks a protocol the recorder cannot read; it goes on unrecorded");
                    return None;
                }
            }
        } else {
            self.recorder
                .counters
                .failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%upgrade, "a session to record speaks a protocol the recorder cannot read; it goes on unrecorded");
            return None;
        };
        let counters = self.recorder.counters.clone();
        let prepared = self
            .prepared
            .lock()
            .ok()
            .and_then(|mut slot| slot.as_mut().and_then(|p| p.file.take()));
        let file = match prepared.map_or_else(|| cast::create(&self.path), Ok) {
            Ok(file) => file,
            Err(error) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(recording = %self.path.display(), %error, "cannot create the session recording; the session goes on unrecorded");
                return None;
            }
        };
        counters.sessions.fetch_add(1, Ordering::Relaxed);
        self.started.store(true, Ordering::Release);
        let dropped = Arc::new(AtomicU64::new(0));
        let queued = [Arc::new(AtomicUsize::new(0)), self.recorder.queued.clone()];
        let (send, receive) = mpsc::channel(QUEUE);
        let writer = cast::Writer {
            file,
            header: CastHeader {
                version: 2,
                width: 80,
                height: 24,
                timestamp: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                title: self.title,
            },
            max_bytes: self.recorder.max_bytes,
            dropped: dropped.clone(),
            queued: queued.clone(),
            counters: counters.clone(),
        };
        let name = self.path.display().to_string();
        tokio::spawn(writer.run(receive, name));
        let session = Arc::new(Mutex::new(Session {
            readers,
            started: Instant::now(),
            send,
            input: self.recorder.input,
            dropped,
            counters,
            resize: Vec::new(),
            queued,
            marked: false,
        }));
        Some((
            Tap {
                session: session.clone(),
                from_client: true,
            },
            Tap {
                session,
                from_client: false,
            },
        ))
    }
}

enum Readers {
    WebSocket {
        client: WsParser,
        server: WsParser,
    },
    Spdy {
        client: Box<SpdyParser>,
        server: Box<SpdyParser>,
        streams: HashMap<u32, StreamKind>,
    },
}

/// What one direction's bytes were, in the session's terms.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Channel {
    Stdin,
    Output,
    Resize,
    Other,
}

struct Session {
    readers: Readers,
    started: Instant,
    send: mpsc::Sender<(Duration, Happened)>,
    input: bool,
    dropped: Arc<AtomicU64>,
    counters: Arc<RecordingCounters>,
    /// Resize messages read so far and not yet whole.
    resize: Vec<u8>,
    /// Bytes waiting for the writer: this session's, every session's.
    queued: [Arc<AtomicUsize>; 2],
    /// Whether the recording says yet that part of the stream could not
    /// be read.
    marked: bool,
}

/// kube's `TerminalSize`, as the resize channel carries it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TerminalSize {
    width: u16,
    height: u16,
}

impl Session {
    fn read(&mut self, from_client: bool, bytes: &[u8]) {
        let mut found: Vec<(Channel, Vec<u8>)> = Vec::new();
        let mut note = |channel: Channel, data: &[u8]| match found.last_mut() {
            Some((last, gathered)) if *last == channel => gathered.extend_from_slice(data),
            _ => found.push((channel, data.to_vec())),
        };
        match &mut self.readers {
            Readers::WebSocket { client, server } => {
                let reader = if from_client { client } else { server };
                reader.feed(bytes, &mut |channel, data| {
                    note(
                        match channel {
                            0 => Channel::Stdin,
                            1 | 2 => Channel::Output,
                            4 => Channel::Resize,
                            _ => Channel::Other,
                        },
                        data,
                    )
                });
            }
            Readers::Spdy {
                client,
                server,
                streams,
            } => {
                let reader = if from_client { client } else { server };
                reader.feed(bytes, streams, &mut |kind, data| {
                    note(
                        match kind {
                            StreamKind::Stdin => Channel::Stdin,
                            StreamKind::Stdout | StreamKind::Stderr => Channel::Output,
                            StreamKind::Resize => Channel::Resize,
                            StreamKind::Other => Channel::Other,
                        },
                        data,
                    )
                });
            }
        }
        let at = self.started.elapsed();
        let unreadable = match &self.readers {
            Readers::WebSocket { client, server } => client.undecodable() || server.undecodable(),
            Readers::Spdy { client, server, .. } => client.lost() || server.lost(),
        };
        if unreadable && !self.marked {
            self.marked = true;
            self.counters.unreadable.fetch_add(1, Ordering::Relaxed);
            self.send(
                at,
                Happened::Marker(
                    "part of the stream could not be read from here on: the recording may miss some of it"
                        .into(),
                ),
            );
        }
        for (channel, data) in found {
            match channel {
                Channel::Output => self.send(at, Happened::Output(data)),
                Channel::Stdin if self.input => self.send(at, Happened::Input(data)),
                Channel::Resize => {
                    self.resize.extend_from_slice(&data);
                    for size in self.sizes() {
                        self.send(at, size);
                    }
                }
                Channel::Stdin | Channel::Other => {}
            }
        }
    }

    /// The whole `TerminalSize` values in the resize bytes read so far.
    fn sizes(&mut self) -> Vec<Happened> {
        let mut sizes = Vec::new();
        let mut values =
            serde_json::Deserializer::from_slice(&self.resize).into_iter::<TerminalSize>();
        let mut used = 0;
        while let Some(value) = values.next() {
            match value {
                Ok(size) => {
                    sizes.push(Happened::Resize {
                        width: size.width,
                        height: size.height,
                    });
                    used = values.byte_offset();
                }
                Err(error) if error.is_eof() => break,
                Err(_) => {
                    used = self.resize.len();
                    break;
                }
            }
        }
        self.resize.drain(..used);
        if self.resize.len() > 4096 {
            self.resize.clear();
        }
        sizes
    }

    /// Hands `happened` to the writer, never waiting: when this session's
    /// or every session's bytes in waiting would pass their bound, or the
    /// queue is full, it is left out and counted.
    fn send(&self, at: Duration, happened: Happened) {
        let size = happened.size();
        let [mine, all] = &self.queued;
        let fits = mine.load(Ordering::Relaxed) + size <= SESSION_QUEUE_BYTES
            && all.load(Ordering::Relaxed) + size <= ALL_QUEUE_BYTES;
        if fits {
            mine.fetch_add(size, Ordering::Relaxed);
            all.fetch_add(size, Ordering::Relaxed);
            match self.send.try_send((at, happened)) {
                Ok(()) => return,
                Err(_) => {
                    mine.fetch_sub(size, Ordering::Relaxed);
                    all.fetch_sub(size, Ordering::Relaxed);
                }
            }
        }
        self.dropped.fetch_add(size as u64, Ordering::Relaxed);
        self.counters
            .dropped_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// Reads one direction of a recorded session's stream as it passes.
pub(crate) struct Tap {
    session: Arc<Mutex<Session>>,
    from_client: bool,
}

impl crate::tap::ByteTap for Tap {
    fn read(&self, bytes: &[u8]) {
        if let Ok(mut session) = self.session.lock() {
            session.read(self.from_client, bytes);
        }
    }
}

impl crate::tap::UpgradeTap for SessionTap {
    fn start(&self, response: &HeaderMap, offered: &str) -> Option<crate::tap::Taps> {
        let (client, server) = self.clone().start(response, offered)?;
        Some((Box::new(client), Box::new(server)))
    }

    fn required(&self) -> bool {
        self.recorder.required
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(queue: usize, input: bool) -> (Session, mpsc::Receiver<(Duration, Happened)>) {
        let (send, receive) = mpsc::channel(queue);
        let session = Session {
            readers: Readers::WebSocket {
                client: WsParser::new("v5.channel.k8s.io").unwrap(),
                server: WsParser::new("v5.channel.k8s.io").unwrap(),
            },
            started: Instant::now(),
            send,
            input,
            dropped: Arc::default(),
            counters: Arc::default(),
            resize: Vec::new(),
            queued: [Arc::default(), Arc::default()],
            marked: false,
        };
        (session, receive)
    }

    /// An unmasked binary frame on `channel`.
    fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x82, (data.len() + 1) as u8, channel];
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn a_required_recording_narrows_the_offer_to_what_it_reads() {
        let headers = |upgrade: &str, protocols: &[&str]| {
            let mut h = HeaderMap::new();
            h.insert(header::UPGRADE, upgrade.parse().unwrap());
            for p in protocols {
                h.append(header::SEC_WEBSOCKET_PROTOCOL, p.parse().unwrap());
            }
            h
        };
        let mut h = headers(
            "websocket",
            &["v6.channel.k8s.io, v5.channel.k8s.io", "v4.channel.k8s.io"],
        );
        keep_readable_protocols(&mut h).unwrap();
        assert_eq!(
            h[header::SEC_WEBSOCKET_PROTOCOL],
            "v5.channel.k8s.io, v4.channel.k8s.io"
        );
        assert!(
            keep_readable_protocols(&mut headers("websocket", &["v6.channel.k8s.io"])).is_err()
        );
        assert!(keep_readable_protocols(&mut headers("h2c", &[])).is_err());
        assert!(keep_readable_protocols(&mut headers("SPDY/3.1", &[])).is_ok());
        assert!(keep_readable_protocols(&mut headers("websocket", &[])).is_ok());
    }

    #[test]
    fn a_writer_that_falls_behind_loses_recording_never_the_stream() {
        let (mut session, mut receive) = session(1, false);
        for _ in 0..3 {
            session.read(false, &frame(1, b"0123456789"));
        }
        // One event queued; the other two counted, not waited for.
        assert_eq!(session.dropped.load(Ordering::Relaxed), 20);
        assert_eq!(session.counters.dropped_bytes.load(Ordering::Relaxed), 20);
        assert!(matches!(receive.try_recv(), Ok((_, Happened::Output(b))) if b == b"0123456789"));
    }

    #[test]
    fn input_is_recorded_only_when_asked_and_resizes_when_whole() {
        let masked = |channel: u8, data: &[u8]| {
            let mut out = vec![0x82, 0x80 | (data.len() + 1) as u8, 0, 0, 0, 0, channel];
            out.extend_from_slice(data);
            out
        };
        for input in [false, true] {
            let (mut session, mut receive) = session(16, input);
            session.read(true, &masked(0, b"secret\n"));
            let resize = masked(4, br#"{"Width":120,"Height":40}"#);
            let (first, rest) = resize.split_at(12);
            session.read(true, first);
            session.read(true, rest);
            let mut seen = Vec::new();
            while let Ok((_, happened)) = receive.try_recv() {
                seen.push(happened);
            }
            let mut want = Vec::new();
            if input {
                want.push(Happened::Input(b"secret\n".to_vec()));
            }
            want.push(Happened::Resize {
                width: 120,
                height: 40,
            });
            assert_eq!(seen, want, "input: {input}");
        }
    }

    #[test]
    fn only_exec_and_attach_of_selected_callers_are_tapped() {
        let config: SessionRecordingConfig =
            serde_yaml_ng::from_str("{dir: /r, users: [alice], namespaces: [prod]}").unwrap();
        let recorder = SessionRecorder::new(&config, Path::new("/"));
        let alice = Identity::new(crate::authn::UserInfo {
            username: "alice".into(),
            ..Default::default()
        });
        let bob = Identity::new(crate::authn::UserInfo {
            username: "bob".into(),
            ..Default::default()
        });
        let tapped = |path: &str, who: &Identity| {
            let req = Request::get(path)
                .header(
                    crate::observe::AUDIT_ID,
                    "0b8a5e3c-1111-4222-8333-444455556666",
                )
                .body(())
                .unwrap();
            recorder
                .tap_for(&req, Some(who))
                .map(|t| t.path().to_owned())
        };
        assert_eq!(
            tapped(
                "/api/v1/namespaces/dev/pods/web/exec?container=app&command=sh",
                &alice
            ),
            Some(PathBuf::from(
                "/r/0b8a5e3c-1111-4222-8333-444455556666.cast"
            ))
        );
        assert!(tapped("/api/v1/namespaces/dev/pods/web/attach", &alice).is_some());
        assert!(tapped("/api/v1/namespaces/prod/pods/web/exec", &bob).is_some());
        assert!(tapped("/api/v1/namespaces/dev/pods/web/exec", &bob).is_none());
        assert!(tapped("/api/v1/namespaces/dev/pods/web/portforward", &alice).is_none());
        assert!(tapped("/api/v1/namespaces/dev/pods/web/log", &alice).is_none());
        // The same sessions through the kubelet's API behind nodes/proxy.
        assert!(tapped("/api/v1/nodes/n1/proxy/exec/dev/web/app?command=sh", &alice).is_some());
        assert!(tapped("/api/v1/nodes/n1/proxy/attach/prod/web/app", &bob).is_some());
        assert!(tapped("/api/v1/nodes/n1/proxy/exec/dev/web/app", &bob).is_none());
        assert!(tapped("/api/v1/nodes/n1/proxy/logs/", &alice).is_none());
        assert!(tapped("/api/v1/nodes/n1/proxy//exec/dev//web/app", &alice).is_some());
        assert!(tapped("/api/v1/nodes/n1/proxy/run/dev/web/app?cmd=ls", &alice).is_none());
        // The kubelet's container is the path's, not a query parameter.
        let req = Request::get("/api/v1/nodes/n1/proxy/exec/dev/web/app?container=other")
            .body(())
            .unwrap();
        let tap = recorder.tap_for(&req, Some(&alice)).unwrap();
        assert!(tap.title.ends_with("exec dev/web/app"), "{}", tap.title);
    }

    #[test]
    fn a_command_run_through_nodes_proxy_is_refused_when_recording_is_required() {
        let alice = Identity::new(crate::authn::UserInfo {
            username: "alice".into(),
            ..Default::default()
        });
        let run = Request::post("/api/v1/nodes/n1/proxy/run/dev/web/app?cmd=ls")
            .body(())
            .unwrap();
        let exec = Request::get("/api/v1/nodes/n1/proxy/exec/dev/web/app")
            .body(())
            .unwrap();
        let required: SessionRecordingConfig =
            serde_yaml_ng::from_str("{dir: /r, required: true, namespaces: [dev]}").unwrap();
        let recorder = SessionRecorder::new(&required, Path::new("/"));
        assert!(recorder.refuses_unrecordable(&run, Some(&alice)));
        assert!(!recorder.refuses_unrecordable(&exec, Some(&alice)));
        let elsewhere = Request::post("/api/v1/nodes/n1/proxy/run/prod/web/app")
            .body(())
            .unwrap();
        assert!(!recorder.refuses_unrecordable(&elsewhere, Some(&alice)));
        let optional: SessionRecordingConfig =
            serde_yaml_ng::from_str("{dir: /r, namespaces: [dev]}").unwrap();
        let recorder = SessionRecorder::new(&optional, Path::new("/"));
        assert!(!recorder.refuses_unrecordable(&run, Some(&alice)));
        // An audit ID that is no file name is not used as one.
        let req = Request::get("/api/v1/namespaces/dev/pods/web/exec")
            .header(crate::observe::AUDIT_ID, "../../etc/passwd")
            .body(())
            .unwrap();
        let path = recorder
            .tap_for(&req, Some(&alice))
            .unwrap()
            .path()
            .to_owned();
        assert_eq!(path.parent(), Some(Path::new("/r")));
        assert!(!path.to_string_lossy().contains("passwd"));
    }
}
