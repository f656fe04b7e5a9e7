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

/// A value that needs every RFC 4515 escape, used to check templates.
const PROBE: &str = "p*(r)o\\be\0";

/// The filter's tree without the values at its leaves.
fn shape(tag: &ldap3::asn1::StructureTag) -> String {
    use ldap3::asn1::PL;
    match &tag.payload {
        PL::C(children) => {
            let inner: Vec<String> = children.iter().map(shape).collect();
            format!("{}({})", tag.id, inner.join(","))
        }
        PL::P(_) => tag.id.to_string(),
    }
}

/// Checks a configured filter template with placeholders `names`: it must
/// be a valid LDAP filter, and every placeholder must stand where a value
/// goes (`(uid={username})`), so that no value can change the filter's
/// structure or break it: the template filled with a plain value and with
/// one that needs every escape must parse to the same tree.
pub fn check_template(template: &str, names: &[&str]) -> Result<(), String> {
    use ldap3::asn1::ASNTag as _;
    let with = |value: &str| {
        let values: Vec<(&str, &str)> = names.iter().map(|n| (*n, value)).collect();
        fill(template, &values)
    };
    let plain = ldap3::parse_filter(with("x"))
        .map_err(|_| "not a valid LDAP search filter".to_owned())?
        .into_structure();
    let probed = ldap3::parse_filter(with(PROBE))
        .map(|f| f.into_structure())
        .ok()
        .filter(|probed| shape(probed) == shape(&plain));
    match probed {
        Some(_) => Ok(()),
        None => Err(format!(
            "a placeholder ({}) must stand where an attribute value goes, as in (uid={{username}})",
            names
                .iter()
                .map(|n| format!("{{{n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked_where_their_placeholders_stand() {
        for good in [
            "(uid={username})",
            "(&(objectClass=person)(|(uid={username})(mail={username})))",
            "(member:1.2.840.113556.1.4.1941:={dn})",
            "(|(memberUid={username})(uniqueMember={dn}))",
            "(cn=*{username}*)",
        ] {
            assert_eq!(check_template(good, &["username", "dn"]), Ok(()), "{good}");
        }
        for bad in [
            "(uid{username}=x)",
            "(member:{dn}:=x)",
            "(&(objs=i)(|(uidz{username}=s)))",
            "(uid={username}",
        ] {
            assert!(check_template(bad, &["username", "dn"]).is_err(), "{bad}");
        }
    }

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
