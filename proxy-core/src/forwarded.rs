//! Where the request came from, as the API server should record it.
//!
//! kube-apiserver fills an audit event's `sourceIPs` from `X-Forwarded-For`
//! (every entry, in order), then `X-Real-Ip`, then the connection's peer,
//! which behind this proxy is always the proxy itself. So the proxy appends
//! the address of the client it accepted the connection from (the
//! [`ClientAddr`] a listener puts into the request extensions) to whatever
//! `X-Forwarded-For` the caller sent: the entries the caller made up stay
//! visible as claims, and the last one before the proxy is the truth.
//!
//! The caller's `X-Real-Ip` is removed: kube would list it after the
//! forwarded addresses, where it would pass for the address the proxy saw.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::credential::ClientAddr;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Real-Ip`.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Appends `client` to `X-Forwarded-For` (merging repeated headers into one
/// comma-separated value, as RFC 9110 allows) and removes `X-Real-Ip`.
///
/// Without a client address (a listener that does not set [`ClientAddr`])
/// only `X-Real-Ip` is removed. Never fails: a caller's value that cannot
/// be combined is replaced by the client address alone.
pub fn append_client(headers: &mut HeaderMap, client: Option<&ClientAddr>) {
    headers.remove(X_REAL_IP);
    let Some(ClientAddr(ip)) = client else {
        return;
    };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*ip, IpAddr::V4),
        IpAddr::V4(_) => *ip,
    };
    let client = ip_text(ip);
    // One hash of the name for the lookup and the insert.
    let mut entry = match headers.entry(X_FORWARDED_FOR) {
        http::header::Entry::Vacant(vacant) => {
            // The common case: the caller is the client.
            let value = HeaderValue::from_str(&client)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            vacant.insert(value);
            return;
        }
        http::header::Entry::Occupied(occupied) => occupied,
    };
    let mut joined: Vec<u8> = Vec::new();
    for value in entry.iter() {
        let value = value.as_bytes().trim_ascii();
        if value.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(value);
    }
    if !joined.is_empty() {
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(client.as_bytes());
    let value = HeaderValue::from_bytes(&joined)
        .or_else(|_| HeaderValue::from_str(&client))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    // Replaces every value the caller sent with the one joined.
    entry.insert(value);
}

/// `ip` as text; IPv4 without the formatting machinery (once per request).
pub(crate) fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client(ip: &str) -> ClientAddr {
        ClientAddr(ip.parse().unwrap())
    }

    #[test]
    fn client_address_is_appended_after_the_callers_entries() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.9.9.9"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, 5.6.7.8"),
        );
        h.insert(&X_REAL_IP, HeaderValue::from_static("8.8.8.8"));
        append_client(&mut h, Some(&client("127.0.0.1")));
        let values: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(values, ["10.9.9.9, 1.2.3.4, 5.6.7.8, 127.0.0.1"]);
        assert!(h.get(&X_REAL_IP).is_none());
    }

    #[test]
    fn without_a_caller_value_the_client_address_is_the_value() {
        let mut h = HeaderMap::new();
        append_client(&mut h, Some(&client("::ffff:192.0.2.7")));
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        let mut h = HeaderMap::new();
        append_client(&mut h, Some(&client("2001:db8::1")));
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8::1");
    }

    #[test]
    fn unknown_client_leaves_forwarded_for_but_drops_real_ip() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(&X_REAL_IP, HeaderValue::from_static("8.8.8.8"));
        append_client(&mut h, None);
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4");
        assert!(h.get(&X_REAL_IP).is_none());
    }

    proptest! {
        #[test]
        fn ipv4_text_is_the_standard_formatting(octets in any::<[u8; 4]>()) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(octets));
            prop_assert_eq!(ip_text(ip), ip.to_string());
        }

        #[test]
        fn the_last_entry_is_always_the_client(
            callers in proptest::collection::vec("[ -~]{0,30}", 0..4),
            octet in 0u8..=255,
        ) {
            let mut h = HeaderMap::new();
            for c in &callers {
                h.append(&X_FORWARDED_FOR, HeaderValue::from_str(c).unwrap());
            }
            append_client(&mut h, Some(&client(&format!("10.0.0.{octet}"))));
            let values: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
            prop_assert_eq!(values.len(), 1);
            let text = values[0].to_str().unwrap();
            let last = text.rsplit(',').next().unwrap().trim();
            prop_assert_eq!(last, format!("10.0.0.{octet}"));
        }
    }
}
