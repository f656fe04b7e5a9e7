//! Table keys for secrets (bearer tokens): SipHash-1-3 with a 128-bit output
//! under a key drawn at random once per process.
//!
//! The token caches, the LDAP login cache and the static-token table are
//! looked up by this key,
//! never by the token itself, so a lookup's timing says nothing about the
//! tokens held, and no token sits in a table as its key. Because the key is
//! secret, nobody can search offline for a token that collides with another
//! one; an online search would need about 2^128 tries. It hashes a JWT of
//! 850 bytes in about a third of the time SHA-256 takes.

use std::hash::Hasher as _;
use std::sync::OnceLock;

use siphasher::sip128::{Hasher128 as _, SipHasher13};

/// The key of `secret` in a table.
pub fn key(secret: &[u8]) -> u128 {
    let (k0, k1) = *process_key();
    let mut hasher = SipHasher13::new_with_keys(k0, k1);
    hasher.write(secret);
    hasher.finish128().as_u128()
}

/// The key of several values taken together (a user name and a password,
/// say); each is length-prefixed, so no two different lists share an input.
pub fn key_of_parts(parts: &[&[u8]]) -> u128 {
    let (k0, k1) = *process_key();
    let mut hasher = SipHasher13::new_with_keys(k0, k1);
    for part in parts {
        hasher.write(&(part.len() as u64).to_le_bytes());
        hasher.write(part);
    }
    hasher.finish128().as_u128()
}

/// The per-process random key.
fn process_key() -> &'static (u64, u64) {
    static KEY: OnceLock<(u64, u64)> = OnceLock::new();
    KEY.get_or_init(|| {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 16];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            // The standard library's hash keys come from the OS as well.
            use std::hash::BuildHasher as _;
            let state = std::collections::hash_map::RandomState::new();
            bytes[..8].copy_from_slice(&state.hash_one(0u8).to_le_bytes());
            bytes[8..].copy_from_slice(&state.hash_one(1u8).to_le_bytes());
        }
        let (a, b) = bytes.split_at(8);
        (
            u64::from_le_bytes(a.try_into().unwrap_or_default()),
            u64::from_le_bytes(b.try_into().unwrap_or_default()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_secrets_have_equal_keys_and_different_ones_differ() {
        assert_eq!(key(b"token-a"), key(b"token-a"));
        assert_ne!(key(b"token-a"), key(b"token-b"));
        assert_ne!(key(b""), key(b"\0"));
    }

    #[test]
    fn parts_are_kept_apart() {
        assert_eq!(
            key_of_parts(&[b"alice", b"pw"]),
            key_of_parts(&[b"alice", b"pw"])
        );
        assert_ne!(
            key_of_parts(&[b"alice", b"pw"]),
            key_of_parts(&[b"alic", b"epw"])
        );
        assert_ne!(key_of_parts(&[b"a\0", b"b"]), key_of_parts(&[b"a", b"\0b"]));
    }

    #[test]
    fn the_key_is_not_the_unkeyed_hash() {
        let mut unkeyed = SipHasher13::new_with_keys(0, 0);
        unkeyed.write(b"token-a");
        assert_ne!(key(b"token-a"), unkeyed.finish128().as_u128());
    }
}
