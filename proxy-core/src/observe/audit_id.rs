//! The audit ID every request gets (sent upstream as `Audit-ID`): a leaf the
//! layer, the audit log and session recording all name, and which knows none
//! of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::{HeaderName, HeaderValue};

/// The header carrying the audit ID, as kube-apiserver names it.
pub const AUDIT_ID: HeaderName = HeaderName::from_static("audit-id");

/// A request's audit ID: UUID-shaped, unique in the process and across
/// restarts (a random per-process part), cheap to make.
#[derive(Clone, Copy)]
pub struct AuditId([u8; 36]);

impl AuditId {
    /// The next ID: a random-looking (version 4, RFC 4122 variant) UUID,
    /// as kube-apiserver's are. Each is a keyed hash (SipHash-1-3, 128 bits,
    /// a random key per process) of a counter: unique with overwhelming
    /// likelihood, spread over all 122 bits, and one ID tells nothing of the
    /// next to whoever lacks the key.
    pub fn next() -> AuditId {
        use siphasher::sip128::{Hasher128 as _, SipHasher13};
        use std::hash::Hasher as _;
        static KEY: OnceLock<(u64, u64)> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let (k0, k1) = *KEY.get_or_init(|| {
            let mut bytes = [0u8; 16];
            let rng = ring::rand::SystemRandom::new();
            if ring::rand::SecureRandom::fill(&rng, &mut bytes).is_err() {
                // Without randomness the IDs stay unique within the
                // process (the counter), though predictable.
                bytes = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
                    .to_le_bytes();
            }
            let (a, b) = bytes.split_at(8);
            let word = |part: &[u8]| {
                let mut w = [0u8; 8];
                w.copy_from_slice(part);
                u64::from_le_bytes(w)
            };
            (word(a), word(b))
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut hasher = SipHasher13::new_with_keys(k0, k1);
        hasher.write_u64(n);
        let mut raw = hasher.finish128().as_bytes();
        raw[6] = (raw[6] & 0x0f) | 0x40; // version 4
        raw[8] = (raw[8] & 0x3f) | 0x80; // RFC 4122 variant
        let mut out = [0u8; 36];
        let hex = b"0123456789abcdef";
        let mut i = 0;
        for (n, byte) in raw.iter().enumerate() {
            if matches!(n, 4 | 6 | 8 | 10) {
                out[i] = b'-';
                i += 1;
            }
            out[i] = hex[usize::from(byte >> 4)];
            out[i + 1] = hex[usize::from(byte & 0x0f)];
            i += 2;
        }
        AuditId(out)
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and dashes are written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The ID as a header value, marked sensitive: it differs on every
    /// request, so HTTP/2 sends it as a literal instead of adding it to the
    /// connection's HPACK table (where each request would evict another entry).
    pub(super) fn header_value(&self) -> HeaderValue {
        let mut value =
            HeaderValue::from_bytes(&self.0).unwrap_or(HeaderValue::from_static("invalid"));
        value.set_sensitive(true);
        value
    }
}

impl std::fmt::Display for AuditId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for AuditId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
