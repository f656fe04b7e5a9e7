//! Reading a verified token's claims exactly as kube-apiserver reads them.
//!
//! kube decodes the standard claims with go-oidc (`iss`, `sub`, `aud`,
//! `exp`, `iat`, `nbf`, `nonce`, `at_hash`, `_claim_names`,
//! `_claim_sources`) and the mapped ones with Go's `encoding/json`, and that
//! decoding decides what a token may hold:
//! - a NumericDate is a JSON number or a string holding one, its fraction
//!   dropped; `exp` and `iat` must be one when present, `nbf` may be null;
//! - `exp` has no leeway (a token is good until its `exp` second begins),
//!   `nbf` one minute, and `iat` is not compared with the clock at all;
//! - `sub`, `nonce` and `at_hash` must be strings (or null) even when no
//!   mapping reads them, and `aud` a string or a list of strings;
//! - a string claim that is null reads as `""`, and a null inside a list of
//!   strings as `""` too; an absent one is an error where kube needs it.
//!
//! The proxy's `clockSkew` adds tolerance to `exp` and `nbf` on top of
//! kube's; its default is none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::authn::AuthnError;

/// A token that is not valid, and why.
pub(super) fn invalid(message: impl Into<String>) -> AuthnError {
    AuthnError::Invalid(message.into())
}

/// Expiry times beyond this (year 2514) are treated as this.
const LATEST_EXP_SECS: i64 = 17_179_869_184;

/// go-oidc's leeway on `nbf`.
const NBF_LEEWAY_SECS: f64 = 60.0;

/// The validated times of a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct TokenTimes {
    /// When the token stops being good: its `exp`, fraction dropped.
    pub(super) expires_at: SystemTime,
}

/// A NumericDate as go-oidc reads it: a JSON number, or a string holding a
/// JSON number; an integer as is, anything else truncated toward zero (out
/// of range: the earliest time, as Go's conversion gives on the platforms
/// kube runs on). `Ok(None)` when absent, and for a null `nbf` (a pointer
/// in go-oidc); any other value is an error.
pub(super) fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<i64>, AuthnError> {
    let not_a_date = || invalid(format!("claim {name:?} is not a NumericDate"));
    let number = match claims.get(name) {
        None => return Ok(None),
        Some(Value::Null) if name == "nbf" => return Ok(None),
        Some(Value::Number(n)) => n.clone(),
        Some(Value::String(s)) if is_json_number(s) => {
            s.parse::<serde_json::Number>().map_err(|_| not_a_date())?
        }
        Some(_) => return Err(not_a_date()),
    };
    if let Some(i) = number.as_i64() {
        return Ok(Some(i));
    }
    let f = number.as_f64().ok_or_else(not_a_date)?;
    if f.is_finite() && f > i64::MIN as f64 && f < i64::MAX as f64 {
        Ok(Some(f.trunc() as i64))
    } else {
        Ok(Some(i64::MIN))
    }
}

/// JSON's number grammar (RFC 8259 section 6), as Go checks a string
/// decoded into a number.
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    i == b.len()
}

/// Checks `exp` (an absent one has long passed), `nbf` (one minute of
/// leeway) and that `iat` is a NumericDate, against `now`, with `skew`
/// seconds more on `exp` and `nbf`.
pub(super) fn check_times(
    claims: &Map<String, Value>,
    now: f64,
    skew: f64,
) -> Result<TokenTimes, AuthnError> {
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| invalid("claim \"exp\" is missing"))?;
    if (exp as f64) + skew < now {
        return Err(invalid("ID token expired (exp)"));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now + NBF_LEEWAY_SECS + skew < nbf as f64 {
            return Err(invalid("ID token not yet valid (nbf)"));
        }
    }
    numeric_date(claims, "iat")?;
    let end = exp.clamp(0, LATEST_EXP_SECS).unsigned_abs();
    Ok(TokenTimes {
        expires_at: UNIX_EPOCH + Duration::from_secs(end),
    })
}

/// Refuses a token whose standard claims go-oidc could not decode: `sub`,
/// `nonce` and `at_hash` not strings, `aud` neither a string nor a list of
/// strings (a null in the list reads as `""`), `_claim_names` not an object
/// of strings.
pub(super) fn check_standard_types(claims: &Map<String, Value>) -> Result<(), AuthnError> {
    for name in ["sub", "nonce", "at_hash"] {
        string_claim(claims, name)?;
    }
    match claims.get("aud") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(Value::Array(items)) if items.iter().all(|a| a.is_string() || a.is_null()) => {}
        Some(_) => {
            return Err(invalid(
                "claim \"aud\" is neither a string nor a list of strings",
            ))
        }
    }
    match claims.get("_claim_names") {
        None | Some(Value::Null) => {}
        Some(Value::Object(names)) if names.values().all(|v| v.is_string() || v.is_null()) => {}
        Some(_) => return Err(invalid("claim \"_claim_names\" is malformed")),
    }
    Ok(())
}

/// The configured audiences the token's `aud` (a string or a list) names,
/// in configuration order.
pub(super) fn matched_audiences(claims: &Map<String, Value>, configured: &[String]) -> Vec<String> {
    let named = |a: &str| match claims.get("aud") {
        Some(Value::String(aud)) => aud == a,
        Some(Value::Array(auds)) => auds.iter().any(|v| v.as_str() == Some(a)),
        _ => false,
    };
    configured.iter().filter(|a| named(a)).cloned().collect()
}

/// A string claim: `Ok(None)` when absent, `""` when null (as Go decodes
/// null into a string), an error for any other type.
pub(super) fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, AuthnError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some("")),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("claim {name:?} is not a string"))),
    }
}

/// A claim holding a string or a list of strings (kube's groups claim): a
/// null or absent claim is no value, a null inside the list is `""`.
pub(super) fn string_list(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Vec<String>, AuthnError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Null => Ok(String::new()),
                _ => Err(invalid(format!("claim {name:?} holds a non-string"))),
            })
            .collect(),
        Some(_) => Err(invalid(format!(
            "claim {name:?} is neither a string nor an array of strings"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn times_follow_go_oidc() {
        let now = 1_700_000_000.25;
        let times = |v: Value| check_times(&claims(v), now, 0.0);
        let ok = times(json!({"exp": now + 1.5, "nbf": now - 0.25, "iat": now - 0.75})).unwrap();
        assert_eq!(
            ok.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_700_000_001),
            "a fractional exp is truncated"
        );
        assert!(
            times(json!({"exp": now + 0.5})).is_err(),
            "the fraction is dropped before comparing"
        );
        assert!(times(json!({"exp": now - 0.3})).is_err(), "exp just passed");
        assert!(
            times(json!({"exp": now - 1.0})).is_err(),
            "no leeway on exp"
        );
        assert!(times(json!({"exp": now + 10.0, "nbf": now + 50.0})).is_ok());
        assert!(times(json!({"exp": now + 10.0, "nbf": now + 70.0})).is_err());
        assert!(
            times(json!({"exp": now + 10.0, "iat": now + 7200.0})).is_ok(),
            "iat is not compared with the clock"
        );
        assert!(
            times(json!({"exp": "1700000100"})).is_ok(),
            "a numeric string"
        );
        assert!(times(json!({"exp": now + 10.0, "nbf": null})).is_ok());
        assert!(times(json!({"exp": now + 10.0, "nbf": -5})).is_ok());
        for bad in [
            json!("soon"),
            json!(" 1"),
            json!(null),
            json!([1]),
            json!(true),
        ] {
            assert!(times(json!({"exp": bad.clone()})).is_err(), "exp {bad}");
            assert!(
                times(json!({"exp": now + 10.0, "iat": bad.clone()})).is_err(),
                "iat {bad}"
            );
        }
        assert!(times(json!({"exp": now + 10.0, "nbf": "soon"})).is_err());
        assert!(times(json!({})).is_err(), "exp is required");
        let skewed = check_times(&claims(json!({"exp": now - 20.5})), now, 30.0);
        assert!(skewed.is_ok(), "within the configured clock skew");
        assert!(
            times(json!({"exp": 1e300})).is_err(),
            "out of range reads as the earliest time, as in kube"
        );
        assert!(times(json!({"exp": u64::MAX})).is_err());
    }

    #[test]
    fn json_numbers_in_strings_follow_the_grammar() {
        for good in ["0", "-1", "1.5", "1e3", "1E+3", "-0.0e-1", "1700000000"] {
            assert!(is_json_number(good), "{good}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "+1", "1e", " 1", "1 ", "0x10", "NaN",
        ] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn standard_claims_must_have_go_oidcs_types() {
        let check = |v: Value| check_standard_types(&claims(v)).is_ok();
        assert!(check(
            json!({"sub": "a", "aud": ["k", null], "nonce": null})
        ));
        assert!(!check(json!({"sub": 5})));
        assert!(!check(json!({"at_hash": {}})));
        assert!(!check(json!({"aud": ["k", 5]})));
        assert!(!check(json!({"aud": 5})));
        assert!(!check(json!({"_claim_names": {"groups": 1}})));
    }

    #[test]
    fn matched_audiences_are_the_configured_ones_the_token_names() {
        let configured = vec!["kube".to_owned(), "other".to_owned()];
        let m = |v: Value| matched_audiences(&claims(v), &configured);
        assert_eq!(m(json!({"aud": "kube"})), ["kube"]);
        assert_eq!(m(json!({"aud": ["x", "other", "kube"]})), ["kube", "other"]);
        assert!(m(json!({"aud": ["x"]})).is_empty());
        assert!(m(json!({"aud": 5})).is_empty());
    }

    #[test]
    fn nulls_read_as_go_reads_them() {
        let c = claims(json!({"a": null, "l": ["x", null], "n": 1}));
        assert_eq!(string_claim(&c, "a").unwrap(), Some(""));
        assert_eq!(string_claim(&c, "missing").unwrap(), None);
        assert!(string_claim(&c, "n").is_err());
        assert_eq!(string_list(&c, "l").unwrap(), ["x", ""]);
        assert!(string_list(&c, "a").unwrap().is_empty());
    }
}
