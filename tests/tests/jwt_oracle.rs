//! JWT authentication with kube-apiserver as the oracle: one
//! `AuthenticationConfiguration` file, loaded by kube-apiserver
//! (`--authentication-config`) and by authproxy (`authenticationConfigFile`),
//! several `jwt` entries in it (one per configuration variant, each its own
//! issuer URL on the test's loopback issuer), and a corpus of tokens made
//! from a fixed seed with claims present, absent, null and of the wrong
//! type; and a `jwt` entry for the real OpenID provider, whose ID tokens
//! (distributed claims included) come from sign-ins. Each token's `SelfSubjectReview` is asked of kube-apiserver
//! directly and through authproxy: the user kube derives must be the user
//! authproxy impersonates (username, uid, groups, extra), or both must
//! refuse the token. Every divergence is printed; those that are kube
//! behaviour authproxy does not have on purpose are listed in
//! [`expected_difference`] with the reason.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use authproxy_tests::jwt_issuer::{IssuerKey, JwtIssuer};
use authproxy_tests::kube::{kube_with, KubeEnv as Env};
use authproxy_tests::oidc::{generate_key, OidcProvider};
use authproxy_tests::self_review::{Review, ReviewClient};
use authproxy_tests::TestPki;
use futures_util::StreamExt as _;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

/// Tokens in the corpus.
const TOKENS: usize = 3200;
/// The corpus's seed: the same tokens on every run.
const SEED: u64 = 0x6a77_745f_6f72_6163;
/// Reviews in flight at once, on each side.
const CONCURRENCY: usize = 16;
/// What every accepted token names in `aud`, unless the variant says more.
const AUDIENCE: &str = "oracle";

/// A configuration variant: one `jwt` entry of the shared file.
struct Variant {
    /// The last segment of its issuer URL.
    name: &'static str,
    /// The entry without `issuer.url` and `issuer.certificateAuthority`.
    entry: Value,
    /// The claims its mappings read, with the kind of value a well-formed
    /// token carries there.
    claims: &'static [(&'static str, Kind)],
    /// The audiences a well-formed token names.
    audiences: &'static [&'static str],
}

/// The kind of value a claim holds in a well-formed token.
#[derive(Clone, Copy)]
enum Kind {
    /// A user or group-like name.
    Name,
    /// An e-mail address.
    Email,
    /// A bool.
    Bool,
    /// A list of names.
    Names,
    /// A comma-separated list of names.
    Csv,
    /// A path (`a/b/c`).
    Path,
    /// A number: an integer or a fraction, sometimes negative.
    Number,
    /// Text that string functions find hard: padding, non-ASCII letters,
    /// commas, digits that convert.
    Text,
    /// `{"tenant": name, "id": name, "roles": [name], "teams": [{"name": name}]}`.
    Org,
}

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "claims",
            entry: json!({
                "issuer": {"audiences": [AUDIENCE]},
                "claimValidationRules": [{"claim": "tier", "requiredValue": "gold"}],
                "claimMappings": {
                    "username": {"claim": "sub", "prefix": "c:"},
                    "groups": {"claim": "groups", "prefix": "g:"},
                    "uid": {"claim": "uid"},
                },
            }),
            claims: &[
                ("sub", Kind::Name),
                ("groups", Kind::Names),
                ("uid", Kind::Name),
                ("tier", Kind::Name),
            ],
            audiences: &[AUDIENCE],
        },
        Variant {
            name: "email",
            entry: json!({
                "issuer": {"audiences": [AUDIENCE]},
                "claimMappings": {
                    "username": {"claim": "email", "prefix": ""},
                    "groups": {"claim": "roles", "prefix": ""},
                },
            }),
            claims: &[
                ("sub", Kind::Name),
                ("email", Kind::Email),
                ("email_verified", Kind::Bool),
                ("roles", Kind::Names),
            ],
            audiences: &[AUDIENCE],
        },
        Variant {
            name: "cel",
            entry: json!({
                "issuer": {"audiences": [AUDIENCE]},
                "claimValidationRules": [{
                    "expression": "!has(claims.blocked) || claims.blocked != true",
                    "message": "blocked",
                }],
                "claimMappings": {
                    "username": {"expression": r#"has(claims.nick) ? "nick:" + claims.nick : "sub:" + claims.sub"#},
                    "groups": {"expression": r#"claims.?org.roles.orValue([]).map(g, "cel:" + g)"#},
                    "uid": {"expression": r#"claims.?uid.orValue("")"#},
                    "extra": [
                        {"key": "example.com/tenant", "valueExpression": r#"claims.?org.tenant.orValue("")"#},
                        {"key": "example.com/roles", "valueExpression": r#"claims.?org.roles.orValue([]).filter(r, r.startsWith("x"))"#},
                        {"key": "example.com/groups", "valueExpression": r#"claims.?groups.orValue([])"#},
                    ],
                },
                "userValidationRules": [
                    {"expression": r#"!user.username.contains("evil")"#, "message": "no evil"},
                    {"expression": "user.groups.all(g, size(g) < 16)", "message": "short groups"},
                ],
            }),
            claims: &[
                ("sub", Kind::Name),
                ("nick", Kind::Name),
                ("groups", Kind::Names),
                ("uid", Kind::Name),
                ("org", Kind::Org),
                ("blocked", Kind::Bool),
            ],
            audiences: &[AUDIENCE],
        },
        Variant {
            name: "strings",
            entry: json!({
                "issuer": {"audiences": [AUDIENCE]},
                "claimValidationRules": [{
                    "expression": r#"!claims.?org.roles.orValue([]).exists(t, t == "banned")"#,
                    "message": "banned",
                }],
                "claimMappings": {
                    "username": {"expression": r#"claims.?email_verified.orValue(false) == true ? claims.email.lowerAscii() : "anon:" + claims.sub"#},
                    "groups": {"expression": r#"claims.?dept.orValue("").split(",").map(d, d.trim())"#},
                    "extra": [
                        {"key": "example.com/upper", "valueExpression": "claims.sub.upperAscii()"},
                        {"key": "example.com/joined", "valueExpression": r#"claims.?teams.orValue([]).join("+")"#},
                        {"key": "example.com/path", "valueExpression": r#"claims.?path.orValue("").replace("/", ":")"#},
                        {"key": "example.com/short", "valueExpression": "size(claims.sub) > 3 ? claims.sub.substring(0, 3) : claims.sub"},
                    ],
                },
                "userValidationRules": [
                    {"expression": r#"user.username != "anon:root""#, "message": "no anonymous root"},
                ],
            }),
            claims: &[
                ("sub", Kind::Name),
                ("email", Kind::Email),
                ("email_verified", Kind::Bool),
                ("dept", Kind::Csv),
                ("teams", Kind::Names),
                ("path", Kind::Path),
                ("org", Kind::Org),
            ],
            audiences: &[AUDIENCE],
        },
        Variant {
            name: "audiences",
            entry: json!({
                "issuer": {"audiences": ["oracle-a", "oracle-b"], "audienceMatchPolicy": "MatchAny"},
                "claimMappings": {
                    "username": {"claim": "sub", "prefix": ""},
                    "groups": {"expression": "claims.?org.teams.orValue([]).map(t, t.name)"},
                    "uid": {"expression": r#"claims.?org.id.orValue("")"#},
                    "extra": [
                        {"key": "example.com/teams", "valueExpression": "string(size(claims.?org.teams.orValue([])))"},
                        {"key": "example.com/admin", "valueExpression": r#"claims.?org.teams.orValue([]).exists(t, t.name == "admins") ? "yes" : """#},
                    ],
                },
            }),
            claims: &[("sub", Kind::Name), ("org", Kind::Org)],
            audiences: &["oracle-a", "oracle-b"],
        },
        Variant {
            name: "numbers",
            entry: json!({
                "issuer": {"audiences": [AUDIENCE]},
                "claimValidationRules": [
                    {"expression": "claims.?level.orValue(0) != 13", "message": "unlucky"},
                    {"expression": "claims.exp - claims.iat <= 86400", "message": "lifetime over a day"},
                ],
                "claimMappings": {
                    "username": {"expression": r#""n:" + claims.sub"#},
                    "groups": {"expression": r#"claims.?level.orValue(0) > 2 ? ["senior"] : ["junior"]"#},
                    "uid": {"expression": "string(claims.?level.orValue(0))"},
                    "extra": [
                        {"key": "example.com/level", "valueExpression": "string(int(claims.?level.orValue(0)))"},
                        {"key": "example.com/ratio", "valueExpression": "string(claims.?ratio.orValue(0.5) * 2.0)"},
                        {"key": "example.com/tags", "valueExpression": "string(size(claims.?tags.orValue([])))"},
                        {"key": "example.com/first", "valueExpression": r#"size(claims.?tags.orValue([])) > 0 ? claims.tags[0] : """#},
                    ],
                },
            }),
            claims: &[
                ("sub", Kind::Name),
                ("level", Kind::Number),
                ("ratio", Kind::Number),
                ("tags", Kind::Names),
            ],
            audiences: &[AUDIENCE],
        },
        Variant {
            name: "text",
            entry: json!({
                "issuer": {"audiences": [AUDIENCE]},
                "claimValidationRules": [
                    {"expression": r#"claims.?text.orValue("").size() < 60"#, "message": "text too long"},
                ],
                "claimMappings": {
                    "username": {"expression": r#""t:" + claims.sub"#},
                    "groups": {"expression": r#"claims.?text.orValue("").split(",").map(g, g)"#},
                    "uid": {"expression": r#"string(claims.?text.orValue("").size())"#},
                    "extra": [
                        {"key": "example.com/trim", "valueExpression": r#"claims.?text.orValue("").trim()"#},
                        {"key": "example.com/upper", "valueExpression": r#"claims.?text.orValue("").upperAscii()"#},
                        {"key": "example.com/sub", "valueExpression": r#"claims.?text.orValue("").size() >= 3 ? claims.text.substring(1, 3) : "short""#},
                        {"key": "example.com/char", "valueExpression": r#"claims.?text.orValue("").size() > 0 ? claims.text.charAt(0) : "none""#},
                        {"key": "example.com/index", "valueExpression": r#"string(claims.?text.orValue("").indexOf("本")) + ":" + string(claims.?text.orValue("").lastIndexOf(","))"#},
                        {"key": "example.com/int", "valueExpression": r#"claims.?text.orValue("").matches("^-?[0-9]+$") ? string(int(claims.text) * 2) : "nan""#},
                        {"key": "example.com/double", "valueExpression": r#"claims.?text.orValue("").matches("^-?[0-9.e]+$") ? string(double(claims.text)) : "nan""#},
                        {"key": "example.com/bool", "valueExpression": r#"claims.?text.orValue("") in ["true", "false"] ? string(bool(claims.text)) : "nb""#},
                        {"key": "example.com/replace", "valueExpression": r#"claims.?text.orValue("").replace(",", ";", 1)"#},
                        {"key": "example.com/split", "valueExpression": r#"claims.?text.orValue("").split(",", 2).map(p, p)"#},
                        // kube refuses a list straight from split(), and so does the proxy
                        {"key": "example.com/pair", "valueExpression": r#"claims.?text.orValue("") == "x,y" ? claims.text.split(",") : []"#},
                        {"key": "example.com/join", "valueExpression": r#"claims.?text.orValue("").split(",").join("|")"#},
                    ],
                },
            }),
            claims: &[("sub", Kind::Name), ("text", Kind::Text)],
            audiences: &[AUDIENCE],
        },
        Variant {
            name: "rules",
            entry: json!({
                "issuer": {"audiences": [AUDIENCE]},
                "claimValidationRules": [
                    {"expression": "claims.?org.roles.orValue([]).all(r, size(r) < 20)", "message": "short roles"},
                    {"expression": "!has(claims.banned)", "message": "banned"},
                ],
                "claimMappings": {
                    "username": {"claim": "sub", "prefix": "r:"},
                    "groups": {"claim": "groups", "prefix": ""},
                    "extra": [
                        {"key": "example.com/in", "valueExpression": r#""admins" in claims.?org.roles.orValue([]) ? "admin" : "user""#},
                        {"key": "example.com/one", "valueExpression": r#"claims.?org.roles.orValue([]).exists_one(r, r == "x-ops") ? "one" : """#},
                        {"key": "example.com/match", "valueExpression": r#"claims.sub.matches("^[a-z]+$") ? "plain" : "fancy""#},
                        {"key": "example.com/index", "valueExpression": r#"string(claims.sub.indexOf("e")) + "/" + string(claims.sub.lastIndexOf("e"))"#},
                        {"key": "example.com/lower", "valueExpression": "claims.sub.lowerAscii() + claims.sub.charAt(0)"},
                        {"key": "example.com/tenant", "valueExpression": r#"claims.?org.tenant.orValue("") == null ? "null" : claims.?org.tenant.orValue("")"#},
                    ],
                },
                "userValidationRules": [
                    {"expression": r#"!("banned" in user.groups)"#, "message": "banned group"},
                    {"expression": r#"user.extra.?example__dot__com__slash__match.orValue([]) != ["fancy"] || user.username.size() < 8"#, "message": "fancy and long"},
                ],
            }),
            claims: &[
                ("sub", Kind::Name),
                ("groups", Kind::Names),
                ("org", Kind::Org),
            ],
            audiences: &[AUDIENCE],
        },
    ]
}

/// The client the real OpenID provider issues ID tokens to.
const PROVIDER_CLIENT: &str = "kubernetes";

/// Who signs in at the real OpenID provider: its accounts give groups in the
/// ID token, none, or (`dist-*`) as a distributed claim kube fetches from the
/// provider, signed by a stranger's key for `dist-bad-*`.
const PROVIDER_LOGINS: &[&str] = &[
    "alice",
    "bob",
    "carol",
    "dave",
    "dist-dave",
    "dist-erin",
    "dist-bad-eve",
    "dist-bad-frank",
    "Mallory",
    "system-ish",
    "x-ops",
    "root",
];

/// The `jwt` entry of the real OpenID provider at `url`.
fn provider_entry(url: &str) -> Value {
    json!({
        "issuer": {"url": url, "audiences": [PROVIDER_CLIENT]},
        "claimValidationRules": [
            {"expression": r#"claims.sub != "root""#, "message": "no root"},
        ],
        "claimMappings": {
            "username": {"claim": "email", "prefix": ""},
            "groups": {"claim": "groups", "prefix": "oidc:"},
            "uid": {"claim": "sub"},
            "extra": [
                {"key": "example.com/nonce", "valueExpression": r#"claims.?nonce.orValue("")"#},
            ],
        },
    })
}

/// kube's `AuthenticationConfiguration` with every variant, issued by
/// `issuer`, and the real provider at `provider_url`, all trusted through
/// `ca_pem`.
fn authentication_configuration(issuer: &JwtIssuer, provider_url: &str, ca_pem: &str) -> Value {
    let jwt: Vec<Value> = variants()
        .into_iter()
        .map(|v| {
            let mut entry = v.entry;
            entry["issuer"]["url"] = json!(issuer.issuer(v.name));
            entry
        })
        .chain([provider_entry(provider_url)])
        .map(|mut entry| {
            entry["issuer"]["certificateAuthority"] = json!(ca_pem);
            entry
        })
        .collect();
    json!({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AuthenticationConfiguration",
        "jwt": jwt,
    })
}

/// splitmix64: a small, fixed pseudo-random sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with `percent` per cent.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    "alice",
    "Bob",
    "carol.d",
    "dave-1",
    "x-ops",
    "xray",
    "ünïcode",
    "e v e",
    "evil-eve",
    "admins",
    "banned",
    "root",
    "a-rather-long-group-name",
    "system:nodes",
];

/// A value for a claim: well-formed for its kind unless `broken`, and then
/// absent (`None`), null, empty or of another type.
fn claim_value(rng: &mut Rng, kind: Kind, broken: bool) -> Option<Value> {
    if broken {
        return match rng.below(9) {
            0 => None,
            1 => Some(Value::Null),
            2 => Some(json!("")),
            3 => Some(json!(rng.below(1000))),
            4 => Some(json!(rng.chance(50))),
            5 => Some(json!({"name": rng.pick(NAMES)})),
            6 => Some(json!([rng.pick(NAMES), 7])),
            7 => Some(json!([rng.pick(NAMES), null])),
            _ => Some(json!([rng.pick(NAMES), ""])),
        };
    }
    let name = |rng: &mut Rng| json!(rng.pick(NAMES));
    Some(match kind {
        Kind::Name => name(rng),
        Kind::Email => json!(format!("{}@Example.com", rng.pick(NAMES))),
        Kind::Bool => json!(rng.chance(70)),
        Kind::Names => match rng.below(6) {
            0 => json!([]),
            1 => name(rng),
            _ => Value::Array((0..1 + rng.below(3)).map(|_| name(rng)).collect()),
        },
        Kind::Csv => json!((0..rng.below(4))
            .map(|_| format!(" {} ", rng.pick(NAMES)))
            .collect::<Vec<_>>()
            .join(",")),
        Kind::Number => {
            const NUMBERS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 2.5, 7.0, -1.0, 1000.0, 13.0, 0.1, 1e21];
            let n = rng.pick(NUMBERS);
            if n.fract() == 0.0 && n.abs() < 1e15 {
                json!(n as i64)
            } else {
                json!(n)
            }
        }
        Kind::Text => json!(rng.pick(&[
            "  padded  ",
            "\u{a0}nbsp\u{a0}",
            "tab\tend",
            "ÄÖÜ-ß",
            "日本語,テキスト",
            "a,b,,c",
            "x,y",
            "a-rather-long-text-that-goes-on-and-on-and-on-and-on-and-on-past-sixty",
            "12",
            "-3",
            "1.5",
            "1e3",
            ".",
            "true",
            "false",
            "ünï,cödé",
        ])),
        Kind::Path => json!(format!(
            "{}/{}/{}",
            rng.pick(NAMES),
            rng.pick(NAMES),
            rng.below(9)
        )),
        Kind::Org => {
            let teams: Vec<Value> = (0..rng.below(4))
                .map(|_| json!({"name": rng.pick(NAMES)}))
                .collect();
            let mut org = json!({"tenant": rng.pick(NAMES), "id": format!("id-{}", rng.below(99))});
            if rng.chance(80) {
                org["teams"] = json!(teams);
            }
            if rng.chance(80) {
                let roles: Vec<Value> = (0..rng.below(4)).map(|_| json!(rng.pick(NAMES))).collect();
                org["roles"] = json!(roles);
            }
            org
        }
    })
}

/// A time claim as an offset from the signing time: `Ok(seconds)`, or
/// `Err(value)` for a value that is not a plain offset.
type TimeClaim = Result<f64, Value>;

/// `exp`, `nbf` and `iat` of a token; `None` is absent. Offsets stay at
/// least 10 s away from every boundary either side uses (kube: `exp` with
/// no leeway, `nbf` with 60 s), so the run's own time does not decide.
fn times(rng: &mut Rng, broken: bool) -> [Option<TimeClaim>; 3] {
    let mut exp = Some(Ok(600.0));
    let mut nbf = None;
    let mut iat = Some(Ok(0.0));
    if !broken {
        if rng.chance(20) {
            exp = Some(Ok(600.75));
        }
        if rng.chance(20) {
            nbf = Some(Ok(-30.5));
        }
        if rng.chance(10) {
            iat = Some(Ok(-0.5));
        }
        return [exp, nbf, iat];
    }
    match rng.below(17) {
        0 => exp = None,
        1 => exp = Some(Err(Value::Null)),
        2 => exp = Some(Ok(-20.0)),
        3 => exp = Some(Ok(-45.0)),
        4 => exp = Some(Ok(-400.0)),
        5 => exp = Some(Err(json!("4102444800"))),
        6 => nbf = Some(Ok(20.0)),
        7 => nbf = Some(Ok(45.0)),
        8 => nbf = Some(Ok(120.0)),
        9 => nbf = Some(Err(json!("soon"))),
        10 => iat = Some(Ok(45.0)),
        11 => iat = Some(Ok(7200.0)),
        12 => iat = Some(Err(json!("yesterday"))),
        13 => iat = Some(Err(Value::Null)),
        14 => nbf = Some(Err(Value::Null)),
        15 => nbf = Some(Err(json!(-5))),
        _ => iat = Some(Err(json!(-5))),
    }
    [exp, nbf, iat]
}

/// One token of the corpus, its claims with times still relative.
struct Case {
    variant: &'static str,
    claims: Value,
    times: [Option<TimeClaim>; 3],
    /// The key and algorithm it is signed with.
    signing: (IssuerKey, Algorithm),
}

/// How tokens are signed: mostly RS256, and sometimes another algorithm of
/// an RSA key (whose JWK names RS256, or no `alg`) or ES256.
fn signing(rng: &mut Rng) -> (IssuerKey, Algorithm) {
    match rng.below(20) {
        0 => (IssuerKey::RsaWithoutAlg, Algorithm::PS256),
        1 => (IssuerKey::RsaWithoutAlg, Algorithm::RS512),
        2 => (IssuerKey::P256, Algorithm::ES256),
        3 => (IssuerKey::Rsa, Algorithm::PS384),
        4 => (IssuerKey::RsaWithoutAlg, Algorithm::RS256),
        _ => (IssuerKey::Rsa, Algorithm::RS256),
    }
}

impl Case {
    /// A stand-in for the tokens of the real provider.
    fn provider() -> Case {
        Case {
            variant: "provider",
            claims: Value::Null,
            times: [None, None, None],
            signing: (IssuerKey::Rsa, Algorithm::RS256),
        }
    }

    /// The claims with times made absolute from `now`.
    fn claims_at(&self, now: f64) -> Value {
        let mut claims = self.claims.clone();
        for (name, time) in ["exp", "nbf", "iat"].iter().zip(&self.times) {
            match time {
                None => {}
                Some(Ok(offset)) => {
                    let t = now.floor() + offset;
                    claims[*name] = if t.fract() == 0.0 {
                        json!(t as i64)
                    } else {
                        json!(t)
                    };
                }
                Some(Err(value)) => claims[*name] = value.clone(),
            }
        }
        claims
    }
}

/// The corpus: `count` tokens over the variants, from `seed`. About half
/// are well-formed; the others break one or two things.
fn corpus(issuer: &JwtIssuer, seed: u64, count: usize) -> Vec<Case> {
    let variants = variants();
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let v = &variants[i % variants.len()];
            let breaks = match rng.below(10) {
                0..=4 => 0,
                5..=8 => 1,
                _ => 2,
            };
            // what is broken: one of the variant's claims, `aud`, `jti` or a time
            let broken: Vec<usize> = (0..breaks).map(|_| rng.below(v.claims.len() + 3)).collect();
            let mut claims = json!({"iss": issuer.issuer(v.name)});
            for (n, (name, kind)) in v.claims.iter().enumerate() {
                if let Some(value) = claim_value(&mut rng, *kind, broken.contains(&n)) {
                    claims[*name] = value;
                }
            }
            let aud_broken = broken.contains(&v.claims.len());
            claims["aud"] = if aud_broken {
                match rng.below(7) {
                    0 => json!("someone-else"),
                    1 => json!([]),
                    2 => json!(["someone-else", "another"]),
                    3 => json!(42),
                    4 => json!([rng.pick(v.audiences), 5]),
                    5 => json!([rng.pick(v.audiences), null]),
                    _ => Value::Null,
                }
            } else {
                match rng.below(3) {
                    0 => json!(rng.pick(v.audiences)),
                    1 => json!([rng.pick(v.audiences), "someone-else"]),
                    _ => json!(v.audiences),
                }
            };
            if rng.chance(5) && !aud_broken {
                claims.as_object_mut().map(|c| c.remove("aud"));
            }
            let jti_broken = broken.contains(&(v.claims.len() + 1));
            if jti_broken {
                claims["jti"] = match rng.below(3) {
                    0 => json!(""),
                    1 => json!(12345),
                    _ => Value::Null,
                };
            } else if rng.chance(40) {
                claims["jti"] = json!(format!("jti-{i}"));
            }
            Case {
                variant: v.name,
                claims,
                times: times(&mut rng, broken.contains(&(v.claims.len() + 2))),
                signing: signing(&mut rng),
            }
        })
        .collect()
}

/// Whether the two sides agree: the same user, or both refuse with the
/// same status (kube answers 401; so does the proxy, refusing the token
/// itself).
fn agree(kube: &Review, proxy: &Review) -> bool {
    match (kube, proxy) {
        (Review::Refused(k, _), Review::Refused(p, _)) => k == p,
        _ => kube == proxy,
    }
}

/// The reason a divergence is kube behaviour authproxy does not have on
/// purpose (the README's "Differences from kube-apiserver" lists them), or
/// `None` for a divergence that fails the test.
fn expected_difference(_case: &Case, kube: &Review, proxy: &Review) -> Option<&'static str> {
    let Review::User {
        username,
        uid,
        groups,
        extra,
    } = kube
    else {
        return None;
    };
    if proxy.accepted() {
        return None;
    }
    let unsendable = |v: &String| {
        v.starts_with([' ', '\t']) || v.ends_with([' ', '\t']) || v.chars().any(char::is_control)
    };
    let values = std::iter::once(username)
        .chain(std::iter::once(uid))
        .chain(groups)
        .chain(extra.values().flatten());
    if values.into_iter().any(unsendable) {
        return Some(
            "kube keeps identity values with a control character or edge spaces; Impersonate-* headers cannot carry them intact, so the proxy refuses the token",
        );
    }
    if username.is_empty() {
        return Some(
            "kube authenticates an empty user name; no request can be made as an empty user through impersonation, so the proxy refuses the token",
        );
    }
    let system = |name: &String| name.starts_with("system:") && name != "system:authenticated";
    if system(username) || groups.iter().any(system) {
        return Some(
            "kube lets system: names come from a token; the proxy refuses them unless its own jwt entry sets allowSystemNames, which kube's file cannot carry",
        );
    }
    if groups.iter().any(String::is_empty) {
        return Some(
            "kube keeps an empty group name; constrained impersonation refuses one and the proxy drops no group silently, so it refuses the token",
        );
    }
    None
}

fn seconds_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Both sides accept a well-formed token of every variant: kube has loaded
/// the issuer's keys, and so has the proxy.
async fn wait_until_both_accept(
    issuer: &JwtIssuer,
    kube: &ReviewClient,
    proxy: &ReviewClient,
) -> anyhow::Result<()> {
    for v in variants() {
        let claims = json!({
            "iss": issuer.issuer(v.name), "aud": v.audiences[0], "sub": "ready",
            "email": "ready@example.com", "email_verified": true, "tier": "gold", "uid": "r-1",
            "groups": ["ready"],
            "iat": seconds_now() as i64, "exp": seconds_now() as i64 + 600,
        });
        let token = issuer.sign(&claims)?;
        authproxy_tests::wait_for(Duration::from_secs(60), v.name, || async {
            let k = kube
                .review(&token)
                .await
                .map_err(|e| format!("kube: {e:?}"))?;
            let p = proxy
                .review(&token)
                .await
                .map_err(|e| format!("proxy: {e:?}"))?;
            if k.accepted() && p.accepted() {
                Ok(Some(()))
            } else {
                Err(format!("kube: {k}; proxy: {p}"))
            }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_and_the_proxy_derive_the_same_user_from_every_token() -> anyhow::Result<()> {
    let started = Instant::now();
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let issuer = JwtIssuer::start(&pki, dir.path()).await?;
    let provider_key = generate_key(dir.path(), "rsa", "provider-1").await?;
    let provider = OidcProvider::start(&pki, std::slice::from_ref(&provider_key)).await?;
    let file = dir.path().join("authentication-config.json");
    let config = authentication_configuration(&issuer, &provider.issuer(), pki.ca_pem());
    std::fs::write(&file, serde_json::to_string_pretty(&config)?)?;
    let flag = format!("--authentication-config={}", file.display());
    tokio::task::spawn_blocking(move || kube_with(&[&flag]).map(|_| ()).map_err(|e| e.to_string()))
        .await?
        .map_err(anyhow::Error::msg)?;
    let env = Env::start_with(
        pki,
        &format!("  authenticationConfigFile: {}", file.display()),
    )
    .await?;
    env.wait_ready().await?;
    let kube_addr = env.kube.url().trim_start_matches("https://").parse()?;
    let kube = ReviewClient::new(kube_addr, env.kube.pki().ca_pem(), 4)?;
    let proxy_addr = env.proxy.as_ref().context("proxy running")?.addr();
    let proxy = ReviewClient::new(proxy_addr, env.pki.ca_pem(), 4)?;
    wait_until_both_accept(&issuer, &kube, &proxy).await?;
    let ready = started.elapsed();

    let cases = corpus(&issuer, SEED, TOKENS);
    let results: Vec<(usize, Review, Review)> =
        futures_util::stream::iter(cases.iter().enumerate())
            .map(|(i, case)| {
                let (issuer, kube, proxy) = (&issuer, &kube, &proxy);
                async move {
                    let (key, alg) = case.signing;
                    let token = issuer.sign_with(&case.claims_at(seconds_now()), key, alg)?;
                    let (k, p) = tokio::join!(kube.review(&token), proxy.review(&token));
                    anyhow::Ok((
                        i,
                        k.context("review at kube")?,
                        p.context("review through the proxy")?,
                    ))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
    let tokens_done = started.elapsed() - ready;

    // ID tokens of the real provider, each from a sign-in (a few requests).
    // kube sets up its verifier of distributed claim sources on first use,
    // refusing the tokens that come before it is ready: one goes first.
    let warm = provider.id_token(PROVIDER_CLIENT, "dist-warm").await?;
    authproxy_tests::wait_for(
        Duration::from_secs(30),
        "kube resolving distributed claims",
        || async {
            match kube.review(&warm).await {
                Ok(review) if review.accepted() => Ok(Some(())),
                Ok(review) => Err(review.to_string()),
                Err(e) => Err(format!("{e:#}")),
            }
        },
    )
    .await?;
    let mut from_provider = Vec::new();
    for login in PROVIDER_LOGINS {
        let token = provider.id_token(PROVIDER_CLIENT, login).await?;
        let (k, p) = tokio::join!(kube.review(&token), proxy.review(&token));
        from_provider.push((*login, k?, p?));
    }

    let mut unexpected = Vec::new();
    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut kube_accepted, mut proxy_accepted) = (0, 0);
    for (i, k, p) in &results {
        kube_accepted += usize::from(k.accepted());
        proxy_accepted += usize::from(p.accepted());
        if agree(k, p) {
            continue;
        }
        let case = &cases[*i];
        match expected_difference(case, k, p) {
            Some(reason) => *expected.entry(reason).or_default() += 1,
            None => unexpected.push(format!(
                "#{i} [{}] {:?} claims {}\n    kube:  {k}\n    proxy: {p}",
                case.variant,
                case.signing,
                case.claims_at(0.0)
            )),
        }
    }
    for (login, k, p) in &from_provider {
        kube_accepted += usize::from(k.accepted());
        proxy_accepted += usize::from(p.accepted());
        if !agree(k, p) && expected_difference(&Case::provider(), k, p).is_none() {
            unexpected.push(format!(
                "[provider] login {login}\n    kube:  {k}\n    proxy: {p}"
            ));
        }
    }
    let provider_accepted = from_provider
        .iter()
        .filter(|(_, k, _)| k.accepted())
        .count();
    let compared = results.len() + from_provider.len();
    println!(
        "jwt oracle: {compared} tokens compared ({} generated in {tokens_done:?}, {} from the OpenID provider, {provider_accepted} of them accepted by kube; set-up {ready:?}); kube accepted {kube_accepted}, refused {}; the proxy accepted {proxy_accepted}, refused {}; expected differences {expected:?}; unexpected divergences {}",
        results.len(),
        from_provider.len(),
        compared - kube_accepted,
        compared - proxy_accepted,
        unexpected.len()
    );
    for line in &unexpected {
        println!("{line}");
    }
    assert!(compared >= 2000, "only {compared} tokens compared");
    for (side, accepted) in [("kube", kube_accepted), ("the proxy", proxy_accepted)] {
        assert!(
            accepted >= compared / 5 && compared - accepted >= compared / 5,
            "{side} accepted {accepted} of {compared}: the corpus must hold both outcomes in strength"
        );
    }
    assert!(
        unexpected.is_empty(),
        "{} tokens where kube and the proxy disagree (listed above)",
        unexpected.len()
    );
    Ok(())
}
