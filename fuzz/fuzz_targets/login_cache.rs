//! The `authproxy login` cache files (an ExecCredential for `login ldap`, an
//! ID token and refresh token for `login oidc`): whatever is on disk, reading
//! it never panics, and a token is only used while it is valid.
#![no_main]

use std::time::SystemTime;

use authproxy::login::{is_fresh_exec_credential, usable_cached_id_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = SystemTime::now();
    let _ = is_fresh_exec_credential(text, now);
    if let Some((_, expires)) = usable_cached_id_token(text, now) {
        assert!(expires > now);
    }
});
