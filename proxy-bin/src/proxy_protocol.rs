//! The PROXY protocol header (versions 1 and 2) that an L4 load balancer
//! sends before the client's bytes, so the client's address survives the
//! hop: it then feeds per-address limits, `X-Forwarded-For` and the audit.
//!
//! Only parsing lives here; the listener decides whom to believe (headers
//! are read only from the addresses of `trustedProxies`, see
//! [`proxy_core::forwarded::TrustedProxies`]). The parser never reads past the
//! header, so the bytes after it (the TLS handshake) stay untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest version 2 address block (with TLVs) accepted.
pub const V2_MAX_PAYLOAD: usize = 1024;
/// The most bytes a header can take: enough to hold any accepted one.
pub const MAX_HEADER: usize = 16 + V2_MAX_PAYLOAD;

/// What a complete header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: what to consume before the client's bytes.
    pub len: usize,
    /// The client's address, or `None` when the balancer speaks for itself
    /// (a v2 `LOCAL` health check, v1 `UNKNOWN`, or an address family that
    /// is not IP).
    pub source: Option<SocketAddr>,
}

/// Why bytes are not a PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Neither signature: the peer did not send a header.
    #[error("no PROXY protocol header")]
    Missing,
    /// A header that breaks the format.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Parses the header at the start of `bytes`: `Ok(None)` while more bytes
/// are needed, `Ok(Some(header))` once it is complete.
pub fn parse(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let signature_seen = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..signature_seen] == V2_SIGNATURE[..signature_seen] && !bytes.is_empty() {
        return parse_v2(bytes);
    }
    let v1_seen = bytes.len().min(6);
    if bytes[..v1_seen] == b"PROXY "[..v1_seen] && !bytes.is_empty() {
        return parse_v1(bytes);
    }
    Err(HeaderError::Missing)
}

fn parse_v1(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Err(HeaderError::Malformed("v1 header longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&bytes[6..end])
        .map_err(|_| HeaderError::Malformed("v1 header is not ASCII"))?;
    let len = end + 2;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        return Ok(Some(Header { len, source: None }));
    }
    let parts: Vec<&str> = fields.collect();
    let [source, _destination, source_port, destination_port] = parts[..] else {
        return Err(HeaderError::Malformed("v1 header needs four fields"));
    };
    let ip: IpAddr = match family {
        "TCP4" => source
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| HeaderError::Malformed("v1 TCP4 source is not an IPv4 address"))?,
        "TCP6" => source
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| HeaderError::Malformed("v1 TCP6 source is not an IPv6 address"))?,
        _ => {
            return Err(HeaderError::Malformed(
                "v1 family is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let port = parse_port(source_port)?;
    parse_port(destination_port)?;
    Ok(Some(Header {
        len,
        source: Some(SocketAddr::new(ip, port)),
    }))
}

/// A v1 port: decimal, no sign, no leading zero, at most 65535.
fn parse_port(text: &str) -> Result<u16, HeaderError> {
    let valid = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    valid
        .then(|| text.parse::<u16>().ok())
        .flatten()
        .ok_or(HeaderError::Malformed(
            "v1 port is not a number from 0 to 65535",
        ))
}

fn parse_v2(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    if bytes.len() < 16 {
        return Ok(None);
    }
    let version_command = bytes[12];
    if version_command >> 4 != 2 {
        return Err(HeaderError::Malformed("v2 version is not 2"));
    }
    let command = version_command & 0x0f;
    if command > 1 {
        return Err(HeaderError::Malformed(
            "v2 command is neither LOCAL nor PROXY",
        ));
    }
    let family = bytes[13] >> 4;
    let payload = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(HeaderError::Malformed("v2 address block too long"));
    }
    let len = 16 + payload;
    if bytes.len() < len {
        return Ok(None);
    }
    let block = &bytes[16..len];
    if command == 0 {
        // LOCAL: the balancer's own connection (a health check).
        return Ok(Some(Header { len, source: None }));
    }
    let source = match family {
        1 => {
            let Some(a) = block.get(..12) else {
                return Err(HeaderError::Malformed("v2 IPv4 address block too short"));
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        2 => {
            let Some(a) = block.get(..36) else {
                return Err(HeaderError::Malformed("v2 IPv6 address block too short"));
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC or a unix socket: no IP address to use.
        0 | 3 => None,
        _ => return Err(HeaderError::Malformed("v2 address family is unknown")),
    };
    Ok(Some(Header { len, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_headers_name_the_client() {
        let text = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8443\r\n\x16\x03\x01";
        let header = parse(text).unwrap().unwrap();
        assert_eq!(header.len, text.len() - 3);
        assert_eq!(header.source, Some("203.0.113.7:51000".parse().unwrap()));
        let text = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 8443\r\n";
        let header = parse(text).unwrap().unwrap();
        assert_eq!(header.source, Some("[2001:db8::7]:51000".parse().unwrap()));
        let header = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!((header.len, header.source), (15, None));
    }

    #[test]
    fn partial_headers_ask_for_more_and_bad_ones_are_refused() {
        let full = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8443\r\n";
        for cut in 1..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "{cut}");
        }
        for bad in [
            &b"PROXY TCP4 203.0.113.777 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 01 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 1\r\n",
            b"PROXY TCP5 203.0.113.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            &[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)[..],
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Err(HeaderError::Missing));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Missing));
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family << 4 | 1);
        bytes.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(block);
        bytes
    }

    #[test]
    fn v2_headers_name_the_client_or_the_balancer_itself() {
        let mut block = vec![198, 51, 100, 9, 10, 0, 0, 1];
        block.extend_from_slice(&4242u16.to_be_bytes());
        block.extend_from_slice(&8443u16.to_be_bytes());
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV, skipped
        let bytes = v2(1, 1, &block);
        let header = parse(&bytes).unwrap().unwrap();
        assert_eq!(header.len, bytes.len());
        assert_eq!(header.source, Some("198.51.100.9:4242".parse().unwrap()));
        for cut in 1..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "{cut}");
        }
        let mut block6 = vec![0u8; 36];
        block6[..16].copy_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        block6[32..34].copy_from_slice(&7u16.to_be_bytes());
        let header = parse(&v2(1, 2, &block6)).unwrap().unwrap();
        assert_eq!(header.source, Some("[2001:db8::9]:7".parse().unwrap()));
        let header = parse(&v2(0, 0, &[])).unwrap().unwrap();
        assert_eq!((header.len, header.source), (16, None));
        assert!(parse(&v2(1, 1, &block[..8])).is_err(), "short IPv4 block");
        assert!(parse(&v2(1, 2, &block)).is_err(), "short IPv6 block");
        assert!(parse(&v2(2, 1, &block)).is_err(), "unknown command");
        let mut too_long = v2(1, 1, &block);
        too_long[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(parse(&too_long).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panicking_and_never_past_their_end(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)
        ) {
            if let Ok(Some(header)) = parse(&bytes) {
                proptest::prop_assert!(header.len <= bytes.len());
            }
        }
    }
}
