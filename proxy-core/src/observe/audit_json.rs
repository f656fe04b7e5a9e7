//! An audit [`Event`] written as one line of JSON by the writer thread.
//!
//! The output is byte for byte what `serde_json::to_writer` makes of the
//! event's `Serialize` implementation (a test holds the two together), but
//! the fixed keys go out as they are, and each string is first checked for
//! characters that need escaping eight bytes at a time, as one word: almost
//! none has one.
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
        if let Some(identity) = &self.impersonated_user {
            out.extend_from_slice(br#","impersonatedUser":"#);
            user_info(out, identity.user(), None);
        }
        out.extend_from_slice(br#","sourceIPs":"#);
        strings(out, self.request.source_ips().iter().map(String::as_str));
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
            if let Some(object) = super::super::request_info::object_ref(uri, self.request.routed) {
                out.extend_from_slice(br#","objectRef":"#);
                let fields = [
                    ("resource", &object.resource),
                    ("namespace", &object.namespace),
                    ("name", &object.name),
                    ("apiGroup", &object.api_group),
                    ("apiVersion", &object.api_version),
                    ("subresource", &object.subresource),
                ];
                string_map(out, fields.into_iter().filter(|(_, v)| !v.is_empty()));
            }
        }
        out.extend_from_slice(br#","responseStatus":"#);
        response_status(out, &self.response_status);
        out.extend_from_slice(br#","requestReceivedTimestamp":"#);
        timestamp(out, self.received);
        out.extend_from_slice(br#","stageTimestamp":"#);
        timestamp(out, self.stage_reached);
        if !self.annotations.is_empty() {
            out.extend_from_slice(br#","annotations":"#);
            string_map(out, self.annotations.iter().map(|(k, v)| (*k, v)));
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
    user_info(out, identity.user(), Some(authenticator));
}

/// A `UserInfo`; with `label`, the authenticator's label joins `extra`.
fn user_info(out: &mut Vec<u8>, user: &crate::authn::UserInfo, label: Option<&str>) {
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
    let Some(authenticator) = label else {
        if !user.extra.is_empty() {
            out.extend_from_slice(br#","extra":{"#);
            let mut first = true;
            for (key, values) in &user.extra {
                entry_key(out, &mut first, key);
                strings(out, values.iter().map(String::as_str));
            }
            out.push(b'}');
        }
        out.push(b'}');
        return;
    };
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
            strings(out, [authenticator]);
            label_written = true;
        }
        entry_key(out, &mut first, key);
        strings(out, values.iter().map(String::as_str));
    }
    if !label_written {
        entry_key(out, &mut first, AUTHENTICATOR_KEY);
        strings(out, [authenticator]);
    }
    out.extend_from_slice(b"}}");
}

fn response_status(out: &mut Vec<u8>, status: &ResponseStatus) {
    out.extend_from_slice(br#"{"metadata":"#);
    string_map(out, status.metadata.iter().map(|(k, v)| (k.as_str(), v)));
    if let Some(text) = status.status {
        out.extend_from_slice(br#","status":"#);
        string(out, text);
    }
    if let Some(reason) = &status.reason {
        out.extend_from_slice(br#","reason":"#);
        // A unit variant's name: rare (answers the proxy made itself).
        let _ = serde_json::to_writer(&mut *out, reason);
    }
    out.extend_from_slice(br#","code":"#);
    integer(out, status.code);
    out.push(b'}');
}

/// Writes `value` in decimal, as `Display` does, without the formatting
/// machinery.
fn integer(out: &mut Vec<u8>, mut value: u16) {
    let mut digits = [0u8; 5];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Writes `time` as `"YYYY-MM-DDTHH:MM:SS.uuuuuuZ"`, as
/// `humantime::format_rfc3339_micros` does (a test holds the two together),
/// without the formatting machinery.
fn timestamp(out: &mut Vec<u8>, time: Timestamp) {
    let since = time
        .0
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_date(seconds / 86_400);
    let of_day = seconds % 86_400;
    if year > 9999 {
        // Past four digits (a clock gone wrong): the year in full.
        let _ = write!(
            out,
            "\"{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z\"",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60,
            since.subsec_micros()
        );
        return;
    }
    let mut text = *b"\"0000-00-00T00:00:00.000000Z\"";
    let mut put = |at: usize, digits: usize, mut value: u64| {
        for i in (at..at + digits).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(1, 4, year);
    put(6, 2, month);
    put(9, 2, day);
    put(12, 2, of_day / 3600);
    put(15, 2, of_day / 60 % 60);
    put(18, 2, of_day % 60);
    put(21, 6, u64::from(since.subsec_micros()));
    out.extend_from_slice(&text);
}

/// The proleptic Gregorian (year, month, day) of a count of days since
/// 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes a JSON object of string values.
fn string_map<'a>(out: &mut Vec<u8>, entries: impl IntoIterator<Item = (&'a str, &'a String)>) {
    out.push(b'{');
    let mut first = true;
    for (key, value) in entries {
        entry_key(out, &mut first, key);
        string(out, value);
    }
    out.push(b'}');
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
/// below 0x20. Eight bytes are checked at a time, as one `u64`: a byte
/// below 0x20 borrows in `v - 0x20…20` where it was clear in `v`, and a byte
/// equal to `c` is a zero byte of `v ^ c…c`.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let control = v.wrapping_sub(ONES * 0x20) & !v & HIGH;
        let quote = zero_byte(v ^ (ONES * u64::from(b'"')));
        let backslash = zero_byte(v ^ (ONES * u64::from(b'\\')));
        if control | quote | backslash != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::super::{Event, EventUser, RequestFacts, ResponseStatus};
    use crate::authn::{Identity, UserInfo};
    use crate::status::Reason;

    #[test]
    fn integers_are_written_as_display_writes_them() {
        for value in (0..=u16::MAX).step_by(7).chain([0, 9, 10, 99, 100, 65_535]) {
            let mut out = Vec::new();
            super::integer(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
        }
    }

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
                routed: true,
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
        let mut acting_as = event(
            "/api/v1/namespaces/default/pods",
            authenticated(alice.clone()),
            ResponseStatus::new(200, None),
        );
        acting_as.impersonated_user = Some(Identity::new(UserInfo {
            username: "carol".into(),
            ..alice.clone()
        }));
        let mut acting_as_bare = acting_as.clone();
        acting_as_bare.impersonated_user = Some(Identity::new(UserInfo {
            username: "dave".into(),
            ..UserInfo::default()
        }));
        for event in [
            event(
                "/api/v1/namespaces/default/pods",
                authenticated(alice),
                ResponseStatus::new(200, None),
            ),
            acting_as,
            acting_as_bare,
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

    proptest! {
        /// Any time from 1970 to 9999, microseconds included.
        #[test]
        fn timestamps_are_written_as_humantime_writes_them(
            micros in 0u64..253_402_300_800_000_000,
        ) {
            let time = SystemTime::UNIX_EPOCH + Duration::from_micros(micros);
            let mut fast = Vec::new();
            super::timestamp(&mut fast, super::Timestamp(time));
            let expected = format!("\"{}\"", humantime::format_rfc3339_micros(time));
            prop_assert_eq!(String::from_utf8_lossy(&fast), expected);
        }
    }

    #[test]
    fn leap_days_and_year_ends_are_dated_as_humantime_dates_them() {
        for date in [
            "1970-01-01T00:00:00.000000Z",
            "2000-02-29T23:59:59.999999Z",
            "2024-02-29T12:00:00.000001Z",
            "2100-03-01T00:00:00.000000Z",
            "2026-12-31T23:59:59.500000Z",
            "9999-12-31T23:59:59.999999Z",
        ] {
            let time = humantime::parse_rfc3339(date).unwrap();
            let mut fast = Vec::new();
            super::timestamp(&mut fast, super::Timestamp(time));
            assert_eq!(String::from_utf8_lossy(&fast), format!("\"{date}\""));
        }
        // Past 9999, which humantime cannot write: the year in full.
        let time = humantime::parse_rfc3339("9999-12-31T23:59:59.5Z").unwrap()
            + Duration::from_secs(86_400);
        let mut fast = Vec::new();
        super::timestamp(&mut fast, super::Timestamp(time));
        assert_eq!(
            String::from_utf8_lossy(&fast),
            "\"10000-01-01T23:59:59.500000Z\""
        );
    }

    #[test]
    fn escaping_is_found_anywhere_in_a_string() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\', b'\n', 0x1f, 0] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    assert!(super::needs_escape(&bytes), "{len} {at} {special}");
                }
            }
            assert!(!super::needs_escape(&vec![b'a'; len]));
        }
        assert!(!super::needs_escape("é日本 \u{7f}".as_bytes()));
        // Every byte value alone, and next to its neighbours in a word.
        for b in 0..=255u8 {
            let special = b < 0x20 || b == b'"' || b == b'\\';
            let word = [b' ', b, b' ', b' ', 0x7f, 0x80, 0xff, b'~', b];
            assert_eq!(super::needs_escape(&[b]), special, "{b}");
            assert_eq!(super::needs_escape(&word), special, "{b}");
        }
    }
}
