//! Distinguished names (RFC 4514) as far as group names need them: parsing
//! with escapes, and "is this DN under that base DN".
//!
//! A `memberOf`-style attribute lists group DNs from anywhere in the
//! directory; only those under the configured base DN are groups, and a
//! group's name is the value of its first RDN, unescaped
//! (`cn=dev\2c ops,ou=groups,…` is `dev, ops`).

/// One attribute type and value of an RDN, as written (value unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ava {
    attribute: String,
    value: String,
}

/// A parsed DN: its RDNs from the entry's own (first) to the root (last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dn(Vec<Vec<Ava>>);

/// Why a DN could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a distinguished name (RFC 4514)")]
pub struct InvalidDn(String);

impl Dn {
    /// Parses `text`; an empty text is the root DN.
    pub fn parse(text: &str) -> Result<Dn, InvalidDn> {
        let invalid = || InvalidDn(text.to_owned());
        let mut rdns = Vec::new();
        if text.trim().is_empty() {
            return Ok(Dn(rdns));
        }
        let mut rdn = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            let mut attribute = String::new();
            let mut equals = false;
            for c in chars.by_ref() {
                if c == '=' {
                    equals = true;
                    break;
                }
                attribute.push(c);
            }
            let attribute = attribute.trim().to_ascii_lowercase();
            if !equals
                || attribute.is_empty()
                || !attribute
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(invalid());
            }
            if chars.peek() == Some(&'#') {
                // BER-encoded values are not names a person reads.
                return Err(invalid());
            }
            let mut value: Vec<u8> = Vec::new();
            let mut trailing_spaces = 0;
            let mut end = None;
            while let Some(c) = chars.next() {
                match c {
                    ',' | ';' | '+' => {
                        end = Some(c);
                        break;
                    }
                    '\\' => {
                        trailing_spaces = 0;
                        let Some(next) = chars.next() else {
                            return Err(invalid());
                        };
                        if next.is_ascii_hexdigit() {
                            let low = chars.next().filter(char::is_ascii_hexdigit);
                            let (Some(high), Some(low)) = (next.to_digit(16), low) else {
                                return Err(invalid());
                            };
                            let low = low.to_digit(16).unwrap_or_default();
                            value.push((high * 16 + low) as u8);
                        } else {
                            let mut buf = [0u8; 4];
                            value.extend_from_slice(next.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                    ' ' if value.is_empty() => {}
                    c => {
                        trailing_spaces = if c == ' ' { trailing_spaces + 1 } else { 0 };
                        let mut buf = [0u8; 4];
                        value.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            value.truncate(value.len() - trailing_spaces);
            let value = String::from_utf8(value).map_err(|_| invalid())?;
            rdn.push(Ava { attribute, value });
            match end {
                Some('+') => {}
                Some(_) => rdns.push(std::mem::take(&mut rdn)),
                None => {
                    rdns.push(rdn);
                    return Ok(Dn(rdns));
                }
            }
        }
    }

    /// Whether `self` is strictly below `base` (attribute types and values
    /// compared without regard to case).
    pub fn is_under(&self, base: &Dn) -> bool {
        self.0.len() > base.0.len()
            && self.0[self.0.len() - base.0.len()..]
                .iter()
                .zip(&base.0)
                .all(|(a, b)| same_rdn(a, b))
    }

    /// The value of the first RDN (its first value, if it has several).
    pub fn first_value(&self) -> Option<&str> {
        self.0
            .first()
            .and_then(|rdn| rdn.first())
            .map(|ava| ava.value.as_str())
    }
}

fn same_rdn(a: &[Ava], b: &[Ava]) -> bool {
    let key = |ava: &Ava| (ava.attribute.clone(), fold(&ava.value));
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

fn fold(value: &str) -> String {
    value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The group name of `group_dn` if it lies under `base`.
pub fn group_name(group_dn: &str, base: &Dn) -> Option<String> {
    let dn = Dn::parse(group_dn).ok()?;
    if !dn.is_under(base) {
        return None;
    }
    dn.first_value()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Dn {
        Dn::parse("ou=groups,dc=example,dc=org").unwrap()
    }

    #[test]
    fn groups_are_named_only_under_the_base_dn() {
        assert_eq!(
            group_name("cn=devs,ou=groups,dc=example,dc=org", &base()).as_deref(),
            Some("devs")
        );
        assert_eq!(
            group_name("CN=Devs, OU=Groups, DC=Example, DC=Org", &base()).as_deref(),
            Some("Devs")
        );
        assert_eq!(
            group_name("cn=admins,ou=other,dc=example,dc=org", &base()),
            None
        );
        assert_eq!(
            group_name("uid=admins,ou=people,dc=example,dc=org", &base()),
            None
        );
        assert_eq!(group_name("ou=groups,dc=example,dc=org", &base()), None);
        assert_eq!(group_name("admins", &base()), None);
        assert_eq!(
            group_name("cn=ops,ou=groups,dc=example,dc=org,dc=evil", &base()),
            None
        );
    }

    #[test]
    fn escaped_separators_stay_in_the_name() {
        assert_eq!(
            group_name(r"cn=dev\, ops,ou=groups,dc=example,dc=org", &base()).as_deref(),
            Some("dev, ops")
        );
        assert_eq!(
            group_name(r"cn=a\2Cb\+c,ou=groups,dc=example,dc=org", &base()).as_deref(),
            Some("a,b+c")
        );
        // an escaped comma must not make a DN look like it is under the base
        assert_eq!(
            group_name(r"cn=x\,ou=groups\,dc=example\,dc=org,ou=elsewhere", &base()),
            None
        );
        assert_eq!(
            group_name("cn=devs+gidNumber=5,ou=groups,dc=example,dc=org", &base()).as_deref(),
            Some("devs")
        );
    }

    #[test]
    fn malformed_dns_are_refused() {
        for bad in [
            "=x,ou=groups",
            "cn=#0403616263,ou=groups,dc=example,dc=org",
            "cn=a\\",
            "cn=a\\4",
        ] {
            assert!(
                group_name(bad, &base()).is_none(),
                "{bad:?} should not name a group"
            );
        }
        assert!(Dn::parse("ou=groups,dc=example,dc=org").is_ok());
        assert!(Dn::parse("not a dn").is_err());
        assert!(Dn::parse("admins").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "\\PC{0,64}") {
            let _ = group_name(&text, &base());
        }

        #[test]
        fn an_escaped_name_under_the_base_comes_back_intact(name in "[^\\x00]{1,24}") {
            let escaped: String = name
                .chars()
                .map(|c| match c {
                    ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | '#' | ' ' => format!("\\{c}"),
                    c => c.to_string(),
                })
                .collect();
            let dn = format!("cn={escaped},ou=groups,dc=example,dc=org");
            proptest::prop_assert_eq!(group_name(&dn, &base()), Some(name));
        }
    }
}
