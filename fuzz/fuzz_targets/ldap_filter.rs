//! LDAP search filters built from a template and values a caller (user name)
//! or the directory (DN) controls: for every template the configuration
//! accepts (`check_template`), a value never changes the filter's structure
//! nor breaks it. An input `template ␞ values` fuzzes the template too;
//! values are `username ␟ dn`.
#![no_main]

use ldap3::asn1::{ASNTag, StructureTag, PL};
use libfuzzer_sys::fuzz_target;
use proxy_core::authn::ldap::filter::{check_template, fill};

const TEMPLATES: [&str; 3] = [
    "(&(objectClass=person)(uid={username}))",
    "(&(objectClass=groupOfNames)(member={dn}))",
    "(|(memberUid={username})(uniqueMember={dn}))",
];

/// The filter's tree without the values at its leaves.
fn shape(tag: &StructureTag) -> String {
    match &tag.payload {
        PL::C(children) => {
            let inner: Vec<String> = children.iter().map(shape).collect();
            format!("{}({})", tag.id, inner.join(","))
        }
        PL::P(_) => tag.id.to_string(),
    }
}

fn check(template: &str, username: &str, dn: &str) {
    // A template the configuration refuses is never used, and an empty value
    // is never filled in: the authenticator refuses an empty user name before
    // any search, and a DN is never empty.
    if check_template(template, &["username", "dn"]).is_err() || username.is_empty() || dn.is_empty()
    {
        return;
    }
    let plain = fill(template, &[("username", "x"), ("dn", "x")]);
    let Ok(expected) = ldap3::parse_filter(&plain) else {
        return;
    };
    let expected = expected.into_structure();
    let filled = fill(template, &[("username", username), ("dn", dn)]);
    let parsed = ldap3::parse_filter(&filled)
        .unwrap_or_else(|_| {
            panic!("{template:?} filled with escaped values does not parse: {filled:?}")
        })
        .into_structure();
    assert_eq!(shape(&parsed), shape(&expected), "{filled:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, values) = match text.split_once('\u{1e}') {
        Some((template, values)) => (Some(template), values),
        None => (None, text),
    };
    let (username, dn) = values.split_once('\u{1f}').unwrap_or((values, values));
    match template {
        Some(template) => check(template, username, dn),
        None => TEMPLATES.iter().for_each(|t| check(t, username, dn)),
    }
});
