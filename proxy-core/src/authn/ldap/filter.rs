//! Search filters built from configured templates and values the caller or
//! the directory controls.
//!
//! Every placeholder is replaced in one pass, each value escaped per RFC 4515
//! (`*`, `(`, `)`, `\` and NUL become `\2a`, `\28`, `\29`, `\5c`, `\00`), so a
//! value can neither change the filter's structure nor be read as another
//! placeholder: a DN that contains the text `{username}` stays that text.

use ldap3::ldap_escape;

/// Fills `template`'s `{name}` placeholders from `values`, escaping each
/// value. A `{...}` that names no value is kept as written.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut filter = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        filter.push_str(&rest[..open]);
        let after = &rest[open..];
        let placeholder = values.iter().find_map(|(name, value)| {
            let tail = after.strip_prefix('{')?.strip_prefix(*name)?;
            tail.strip_prefix('}').map(|tail| (value, tail))
        });
        match placeholder {
            Some((value, tail)) => {
                filter.push_str(&ldap_escape(*value));
                rest = tail;
            }
            None => {
                filter.push('{');
                rest = &after[1..];
            }
        }
    }
    filter.push_str(rest);
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_never_read_as_placeholders() {
        let filter = fill(
            "(&(member={dn})(cn={username}))",
            &[("dn", "cn={username},ou=x"), ("username", "*)(uid=*")],
        );
        assert_eq!(
            filter,
            "(&(member=cn={username},ou=x)(cn=\\2a\\29\\28uid=\\2a))"
        );
        assert!(ldap3::parse_filter(&filter).is_ok(), "{filter}");
    }

    #[test]
    fn unknown_and_unclosed_braces_are_kept() {
        assert_eq!(
            fill("(cn={other}{user", &[("username", "a")]),
            "(cn={other}{user"
        );
        assert_eq!(fill("(uid={username})", &[("username", "é{")]), "(uid=é{)");
    }
}
