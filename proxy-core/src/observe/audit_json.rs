//! An audit [`Event`] written as one line of JSON by the writer thread.
//!
//! The output is byte for byte what `serde_json::to_writer` makes of the
//! event's `Serialize` implementation (a test holds the two together), but
//! the fixed keys go out as they are, and each string is first checked for
//! characters that need escaping in blocks of 16 bytes: almost none has one.
//! serde_json looks every byte up in a table instead, which cost more than
//! the rest of writing an event.

use std::io::Write as _;

use super::{Event, EventUser, ResponseStatus, Timestamp, AUTHENTICATOR_KEY};

impl Event {
    /// Appends the event as compact JSON (no trailing newline) to `out`.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"#,
        );
        string(out, self.audit_id.as_str());
        out.extend_from_slice(if self.long_running {
            br#","stage":"ResponseStarted","requestURI":"#
        } else {
            br#","stage":"ResponseComplete","requestURI":"#
        });
        let uri = &self.request.uri;
        string(
            out,
            uri.path_and_query().map_or(uri.path(), |pq| pq.as_str()),
        );
        out.extend_from_slice(br#","verb":"#);
        string(out, self.verb);
        out.extend_from_slice(br#","user":"#);
        user(out, &self.user);
        out.extend_from_slice(br#","sourceIPs":["#);
        for (i, ip) in self.request.source_ips().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, ip);
        }
        out.push(b']');
        if let Some(agent) = self
            .request
            .user_agent
            .as_ref()
            .and_then(|v| v.to_str().ok())
        {
            out.extend_from_slice(br#","userAgent":"#);
            string(out, agent);
        }
        if self.request.resource {
            if let Some(object) = super::super::request_info::object_ref(uri) {
                out.extend_from_slice(br#","objectRef":{"#);
                let mut first = true;
                for (key, value) in [
                    ("resource", &object.resource),
                    ("namespace", &object.namespace),
                    ("name", &object.name),
                    ("apiGroup", &object.api_group),
                    ("apiVersion", &object.api_version),
                    ("subresource", &object.subresource),
                ] {
                    if !value.is_empty() {
                        entry_key(out, &mut first, key);
                        string(out, value);
                    }
                }
                out.push(b'}');
            }
        }
        out.extend_from_slice(br#","responseStatus":"#);
        response_status(out, &self.response_status);
        out.extend_from_slice(br#","requestReceivedTimestamp":"#);
        timestamp(out, self.received);
        out.extend_from_slice(br#","stageTimestamp":"#);
        timestamp(out, self.stage_reached);
        if !self.annotations.is_empty() {
            out.extend_from_slice(br#","annotations":{"#);
            let mut first = true;
            for (key, value) in &self.annotations {
                entry_key(out, &mut first, key);
                string(out, value);
            }
            out.push(b'}');
        }
        out.push(b'}');
    }
}

fn user(out: &mut Vec<u8>, user: &EventUser) {
    let EventUser::Authenticated {
        identity,
        authenticator,
    } = user
    else {
        out.extend_from_slice(b"{}");
        return;
    };
    let user = identity.user();
    out.extend_from_slice(br#"{"username":"#);
    string(out, &user.username);
    if let Some(uid) = &user.uid {
        out.extend_from_slice(br#","uid":"#);
        string(out, uid);
    }
    if !user.groups.is_empty() {
        out.extend_from_slice(br#","groups":"#);
        strings(out, user.groups.iter().map(String::as_str));
    }
    // The user's attributes and the authenticator's label, in key order
    // (the label replaces an attribute of the same name).
    out.extend_from_slice(br#","extra":{"#);
    let mut first = true;
    let mut label_written = false;
    for (key, values) in &user.extra {
        if key.as_str() == AUTHENTICATOR_KEY {
            continue;
        }
        if !label_written && key.as_str() > AUTHENTICATOR_KEY {
            entry_key(out, &mut first, AUTHENTICATOR_KEY);
            strings(out, [authenticator.as_ref()]);
            label_written = true;
        }
        entry_key(out, &mut first, key);
        strings(out, values.iter().map(String::as_str));
    }
    if !label_written {
        entry_key(out, &mut first, AUTHENTICATOR_KEY);
        strings(out, [authenticator.as_ref()]);
    }
    out.extend_from_slice(b"}}");
}

fn response_status(out: &mut Vec<u8>, status: &ResponseStatus) {
    out.extend_from_slice(br#"{"metadata":{"#);
    let mut first = true;
    for (key, value) in &status.metadata {
        entry_key(out, &mut first, key);
        string(out, value);
    }
    out.push(b'}');
    if let Some(text) = status.status {
        out.extend_from_slice(br#","status":"#);
        string(out, text);
    }
    if let Some(reason) = &status.reason {
        out.extend_from_slice(br#","reason":"#);
        // A unit variant's name: rare (answers the proxy made itself).
        let _ = serde_json::to_writer(&mut *out, reason);
    }
    let _ = write!(out, r#","code":{}}}"#, status.code);
}

fn timestamp(out: &mut Vec<u8>, time: Timestamp) {
    // RFC 3339 text has nothing to escape.
    let _ = write!(out, "\"{}\"", humantime::format_rfc3339_micros(time.0));
}

/// Writes `,` unless this is the first entry, then `"key":`.
fn entry_key(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    string(out, key);
    out.push(b':');
}

fn strings<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a str>) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, item);
    }
    out.push(b']');
}

/// Writes `text` as a JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, text: &str) {
    if needs_escape(text.as_bytes()) {
        let _ = serde_json::to_writer(&mut *out, text);
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// True when `bytes` holds a quote, a backslash or a control character
/// below 0x20. Checked 16 bytes at a time without an early exit, which the
/// compiler turns into vector compares.
fn needs_escape(bytes: &[u8]) -> bool {
    let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| special(b))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::super::{Event, EventUser, RequestFacts, ResponseStatus};
    use crate::authn::{Identity, UserInfo};
    use crate::status::Reason;

    fn event(uri: &str, user: EventUser, status: ResponseStatus) -> Event {
        let mut event = Event::new(
            crate::observe::AuditId::next(),
            false,
            "list",
            RequestFacts {
                uri: uri.parse().unwrap(),
                user_agent: Some(http::HeaderValue::from_static("kubectl/v1.37.2")),
                source_ip: Some([192, 0, 2, 7].into()),
                forwarded_for: Some(http::HeaderValue::from_static("10.0.0.1, bad, 10.0.0.2")),
                resource: true,
            },
            status,
            SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456),
        );
        event.user = user;
        event
    }

    fn authenticated(user: UserInfo) -> EventUser {
        EventUser::Authenticated {
            identity: Identity::new(user),
            authenticator: "oidc:corp".into(),
        }
    }

    fn assert_same_as_serde(event: &Event) {
        let mut fast = Vec::new();
        event.write_json(&mut fast);
        let serde = serde_json::to_vec(event).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&serde)
        );
    }

    #[test]
    fn events_are_written_exactly_as_serde_writes_them() {
        let alice = UserInfo {
            username: "alice".into(),
            uid: Some("1001".into()),
            groups: vec!["devs".into(), "system:authenticated".into()],
            extra: BTreeMap::from([
                ("a.example/first".into(), vec!["1".into()]),
                ("authproxy.io/authenticator".into(), vec!["forged".into()]),
                ("z.example/last".into(), vec!["x".into(), "y".into()]),
            ]),
        };
        let mut failed = event(
            "/api/v1/namespaces/default/pods/web-0/log?follow=true",
            EventUser::Unauthenticated,
            ResponseStatus::new(401, Some(Reason::Unauthorized)),
        );
        failed
            .annotations
            .insert("authentication.k8s.io/reason", "token \"expired\"\n".into());
        let mut started = event(
            "/apis/apps/v1/namespaces/team/deployments?watch=1",
            authenticated(UserInfo::default()),
            ResponseStatus::new(200, None),
        );
        started.long_running = true;
        for event in [
            event(
                "/api/v1/namespaces/default/pods",
                authenticated(alice),
                ResponseStatus::new(200, None),
            ),
            failed,
            started,
            event(
                "/version",
                EventUser::Unauthenticated,
                ResponseStatus::new(403, Some(Reason::Forbidden)),
            ),
        ] {
            assert_same_as_serde(&event);
        }
    }

    proptest! {
        /// Any user, attribute and agent text, quotes, backslashes,
        /// control characters and non-ASCII included.
        #[test]
        fn any_text_is_written_exactly_as_serde_writes_it(
            username in any::<String>(),
            groups in proptest::collection::vec(any::<String>(), 0..3),
            extra in proptest::collection::btree_map(
                "[a-z./]{0,30}",
                proptest::collection::vec(any::<String>(), 0..3),
                0..4,
            ),
            agent in "[ -~]{0,40}",
            path in "[a-z0-9/%._-]{0,40}",
        ) {
            let user = UserInfo { username, uid: None, groups, extra };
            let mut event = event(
                &format!("/api/v1/namespaces/x/{path}"),
                authenticated(user),
                ResponseStatus::new(200, None),
            );
            event.request.user_agent = http::HeaderValue::from_str(&agent).ok();
            assert_same_as_serde(&event);
        }
    }

    #[test]
    fn escaping_is_found_anywhere_in_a_string() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\', b'\n', 0x1f] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    assert!(super::needs_escape(&bytes), "{len} {at} {special}");
                }
            }
            assert!(!super::needs_escape(&vec![b'a'; len]));
        }
        assert!(!super::needs_escape("é日本 \u{7f}".as_bytes()));
    }
}
