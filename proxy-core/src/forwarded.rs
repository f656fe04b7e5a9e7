//! Where the request came from, as the API server should record it.
//!
//! kube-apiserver fills an audit event's `sourceIPs` from `X-Forwarded-For`
//! (every entry, in order), then `X-Real-Ip`, then the connection's peer,
//! which behind this proxy is always the proxy itself. The first entry is
//! what kube's audit shows as the client, so it must not be the caller's to
//! choose: `X-Forwarded-For` is believed only from the [`TrustedProxies`] (load
//! balancers and ingresses the operator names); from anyone else it is
//! replaced by the address the proxy saw. Behind trusted proxies, the client
//! is the nearest address that is not one of them ([`Origin::client`]), and
//! that address is what per-address limits count.
//!
//! The caller's `X-Real-Ip` is always removed: kube would list it after the
//! forwarded addresses, where it would pass for the address the proxy saw.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::credential::ClientAddr;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Real-Ip`.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The addresses (CIDR blocks) whose `X-Forwarded-For` entries and PROXY
/// protocol headers are believed: the operator's load balancers and
/// ingresses. Empty by default: nobody's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
}

/// `ip` with an IPv4 address mapped into IPv6 written as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl TrustedProxies {
    /// Parses CIDR blocks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses;
    /// on failure, the index of the first bad entry and why.
    pub fn parse<S: AsRef<str>>(blocks: &[S]) -> Result<TrustedProxies, (usize, String)> {
        let mut nets = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.iter().enumerate() {
            let block = block.as_ref().trim();
            let (addr, bits) = match block.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (block, None),
            };
            let ip = canonical(
                addr.parse::<IpAddr>()
                    .map_err(|_| (i, format!("{block:?} is not an IP address or CIDR block")))?,
            );
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| (i, format!("{block:?}: prefix length must be 0 to {max}")))?,
            };
            nets.push((ip, bits));
        }
        Ok(TrustedProxies { nets })
    }

    /// Whether no address is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is in one of the blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }
}

/// Where a request came from, as its listener found it; put into the
/// request extensions beside [`ClientAddr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The hop that connected: the address a trusted balancer's PROXY
    /// protocol header named, else the socket's peer.
    pub peer: IpAddr,
    /// Whether `peer` is a trusted proxy, whose `X-Forwarded-For` is kept.
    pub peer_trusted: bool,
}

impl Origin {
    /// The origin of a request from `peer`.
    pub fn new(peer: IpAddr, trusted: &TrustedProxies) -> Origin {
        let peer = canonical(peer);
        Origin {
            peer,
            peer_trusted: trusted.contains(peer),
        }
    }

    /// The client's address: the peer, or behind trusted proxies the nearest
    /// `X-Forwarded-For` entry that is not one of them. `None` when only
    /// trusted proxies are known (or an entry is not an address): per-address
    /// limits then count nothing, rather than everyone behind a proxy as one.
    pub fn client(&self, headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
        if !self.peer_trusted {
            return Some(self.peer);
        }
        let mut entries: Vec<&[u8]> = Vec::new();
        for value in headers.get_all(X_FORWARDED_FOR) {
            entries.extend(value.as_bytes().split(|b| *b == b','));
        }
        for entry in entries.iter().rev() {
            let text = std::str::from_utf8(entry.trim_ascii()).ok()?;
            if text.is_empty() {
                continue;
            }
            let ip = canonical(text.parse::<IpAddr>().ok()?);
            if !trusted.contains(ip) {
                return Some(ip);
            }
        }
        None
    }
}

/// Sets `X-Forwarded-For` for the upstream and removes `X-Real-Ip`.
///
/// From a trusted proxy (`origin.peer_trusted`), the caller's entries are
/// kept (repeated headers merged into one comma-separated value, as RFC 9110
/// allows) and the peer appended; from anyone else the value is the peer
/// alone. Without an [`Origin`] (a listener that sets only [`ClientAddr`])
/// the client address is the value; without either, the header is removed.
/// Never fails: a caller's value that cannot be combined is replaced.
pub fn set_forwarded_for(
    headers: &mut HeaderMap,
    origin: Option<&Origin>,
    client: Option<&ClientAddr>,
) {
    headers.remove(X_REAL_IP);
    let (peer, keep_callers) = match (origin, client) {
        (Some(origin), _) => (origin.peer, origin.peer_trusted),
        (None, Some(ClientAddr(ip))) => (canonical(*ip), false),
        (None, None) => {
            headers.remove(X_FORWARDED_FOR);
            return;
        }
    };
    let peer = ip_text(peer);
    let value =
        HeaderValue::from_str(&peer).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    // One hash of the name for the lookup and the insert.
    let mut entry = match headers.entry(X_FORWARDED_FOR) {
        http::header::Entry::Vacant(vacant) => {
            // The common case: the caller sent none.
            vacant.insert(value);
            return;
        }
        http::header::Entry::Occupied(occupied) => occupied,
    };
    if !keep_callers {
        // Replaces every value the caller sent.
        entry.insert(value);
        return;
    }
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
    joined.extend_from_slice(peer.as_bytes());
    let value = HeaderValue::from_bytes(&joined).unwrap_or(value);
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

    fn trusted(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(blocks).unwrap()
    }

    fn origin(peer: &str, t: &TrustedProxies) -> Origin {
        Origin::new(peer.parse().unwrap(), t)
    }

    fn callers_entries() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.9.9.9"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, 5.6.7.8"),
        );
        h.insert(&X_REAL_IP, HeaderValue::from_static("8.8.8.8"));
        h
    }

    #[test]
    fn an_untrusted_callers_entries_are_replaced_by_its_address() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut h = callers_entries();
        let o = origin("192.0.2.50", &t);
        assert_eq!(o.client(&h, &t), Some("192.0.2.50".parse().unwrap()));
        set_forwarded_for(&mut h, Some(&o), None);
        let values: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(values, ["192.0.2.50"]);
        assert!(h.get(&X_REAL_IP).is_none());
        // A listener that knows only the client address: the same.
        let mut h = callers_entries();
        set_forwarded_for(&mut h, None, Some(&client("::ffff:192.0.2.7")));
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        let mut h = callers_entries();
        set_forwarded_for(&mut h, None, None);
        assert!(h.get(&X_FORWARDED_FOR).is_none());
        assert!(h.get(&X_REAL_IP).is_none());
    }

    #[test]
    fn a_trusted_proxys_entries_are_kept_and_name_the_client() {
        let t = trusted(&["10.0.0.0/8", "2001:db8:ff::/48"]);
        let mut h = callers_entries();
        let o = origin("10.1.2.3", &t);
        // 5.6.7.8 is the nearest entry that is not a trusted proxy.
        assert_eq!(o.client(&h, &t), Some("5.6.7.8".parse().unwrap()));
        set_forwarded_for(&mut h, Some(&o), None);
        let values: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(values, ["10.9.9.9, 1.2.3.4, 5.6.7.8, 10.1.2.3"]);
        // Trusted hops are skipped; a chain of only trusted hops names nobody.
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("203.0.113.9, 10.7.7.7"),
        );
        assert_eq!(o.client(&h, &t), Some("203.0.113.9".parse().unwrap()));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.7.7.7"));
        assert_eq!(o.client(&h, &t), None);
        assert_eq!(o.client(&HeaderMap::new(), &t), None);
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, not-an-ip"),
        );
        assert_eq!(o.client(&h, &t), None, "an entry that is no address");
        let o6 = origin("2001:db8:ff:1::2", &t);
        assert!(o6.peer_trusted);
        assert!(!origin("2001:db8:fe::2", &t).peer_trusted);
        assert!(origin("::ffff:10.0.0.1", &t).peer_trusted);
    }

    #[test]
    fn trusted_blocks_are_parsed_strictly() {
        let t = trusted(&["192.0.2.1", "0.0.0.0/0"]);
        assert!(t.contains("203.0.113.1".parse().unwrap()));
        assert!(!t.contains("2001:db8::1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "2001:db8::/129",
            "example.com",
            "10.0.0.0/x",
            "",
        ] {
            assert!(TrustedProxies::parse(&[bad]).is_err(), "{bad}");
        }
        assert_eq!(
            TrustedProxies::parse(&["10.0.0.0/8", "x"]).unwrap_err().0,
            1
        );
        assert!(TrustedProxies::default().is_empty());
    }

    proptest! {
        #[test]
        fn ipv4_text_is_the_standard_formatting(octets in any::<[u8; 4]>()) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(octets));
            prop_assert_eq!(ip_text(ip), ip.to_string());
        }

        #[test]
        fn the_last_entry_is_always_the_peer_and_the_first_never_the_callers_unless_trusted(
            callers in proptest::collection::vec("[ -~]{0,30}", 0..4),
            octet in 0u8..=255,
            peer_trusted in any::<bool>(),
        ) {
            let mut h = HeaderMap::new();
            for c in &callers {
                h.append(&X_FORWARDED_FOR, HeaderValue::from_str(c).unwrap());
            }
            let peer = format!("10.0.0.{octet}");
            let o = Origin { peer: peer.parse().unwrap(), peer_trusted };
            set_forwarded_for(&mut h, Some(&o), None);
            let values: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
            prop_assert_eq!(values.len(), 1);
            let text = values[0].to_str().unwrap();
            let last = text.rsplit(',').next().unwrap().trim();
            prop_assert_eq!(last, peer.as_str());
            if !peer_trusted {
                prop_assert_eq!(text, peer.as_str());
            }
        }
    }
}
