//! OIDC settings in the two shapes kube-apiserver accepts: the `jwt:` list of
//! an `AuthenticationConfiguration` (apiserver.config.k8s.io/v1beta1 and v1)
//! and the `--oidc-*` flags. Both become [`IssuerSettings`].
//!
//! CEL fields (`expression`, `valueExpression`, `userValidationRules`) are
//! refused with an error naming the field: they are not supported yet, and a
//! rule silently ignored would let tokens in that the author meant to keep out.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::authn::policy::extra_key_problems;
use crate::config::Problem;

/// One `jwt:` entry of kube's `AuthenticationConfiguration`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtAuthenticator {
    /// Who issues the tokens and for whom.
    pub issuer: Issuer,
    /// Claims that must hold given values.
    #[serde(default)]
    pub claim_validation_rules: Vec<ClaimValidationRule>,
    /// How claims become the user.
    #[serde(default)]
    pub claim_mappings: ClaimMappings,
    /// CEL rules on the mapped user: not supported yet (refused when set).
    #[serde(default)]
    pub user_validation_rules: Option<serde_json::Value>,
    /// authproxy extension: allowed signing algorithms (default `[RS256]`).
    #[serde(default)]
    pub signing_algorithms: Option<Vec<String>>,
    /// authproxy extension: clock skew allowed on exp/nbf/iat (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub clock_skew: Option<Duration>,
    /// authproxy extension: least time between key refreshes caused by
    /// tokens with an unknown `kid` (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub key_refresh_min_interval: Option<Duration>,
    /// authproxy extension: time between scheduled key refreshes (default 5m).
    #[serde(default, with = "humantime_serde")]
    pub key_refresh_interval: Option<Duration>,
    /// authproxy extension: let user and group names starting with `system:`
    /// through (default false, see
    /// [`DEFAULT_ALLOW_SYSTEM_NAMES`](crate::authn::policy::DEFAULT_ALLOW_SYSTEM_NAMES)).
    #[serde(default)]
    pub allow_system_names: Option<bool>,
}

/// `issuer` of a `jwt:` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Issuer {
    /// Must equal the token's `iss` exactly.
    pub url: String,
    /// Where to fetch discovery instead of `<url>/.well-known/openid-configuration`.
    #[serde(rename = "discoveryURL")]
    pub discovery_url: Option<String>,
    /// PEM CA bundle for the issuer's TLS (inline, as kube has it).
    pub certificate_authority: Option<String>,
    /// The token's `aud` must contain one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Only `MatchAny` (kube's only policy).
    pub audience_match_policy: Option<String>,
}

/// `claimValidationRules[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimValidationRule {
    /// The claim.
    pub claim: Option<String>,
    /// Its required string value.
    pub required_value: Option<String>,
    /// CEL: not supported yet.
    pub expression: Option<String>,
    /// Message for CEL rules.
    pub message: Option<String>,
}

/// `claimMappings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimMappings {
    /// User name (default claim `sub`… see kube's rules on prefix).
    pub username: Option<PrefixedClaim>,
    /// Groups.
    pub groups: Option<PrefixedClaim>,
    /// UID.
    pub uid: Option<PlainClaim>,
    /// Extra attributes: kube has CEL `valueExpression` (refused); authproxy
    /// also accepts `claim`.
    #[serde(default)]
    pub extra: Vec<ExtraMapping>,
}

/// A claim with a prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixedClaim {
    /// The claim.
    pub claim: Option<String>,
    /// Prepended to each value; kube requires it to be set (may be empty).
    pub prefix: Option<String>,
    /// CEL: not supported yet.
    pub expression: Option<String>,
}

/// A claim without prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlainClaim {
    /// The claim.
    pub claim: Option<String>,
    /// CEL: not supported yet.
    pub expression: Option<String>,
}

/// One extra attribute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtraMapping {
    /// The extra key (lower-case, domain-prefixed in kube).
    pub key: String,
    /// authproxy extension: the claim holding the value(s).
    pub claim: Option<String>,
    /// CEL: not supported yet.
    pub value_expression: Option<String>,
}

/// Everything one issuer's authenticator needs, validated.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// Whether `system:` user and group names pass (`allowSystemNames`).
    pub allow_system_names: bool,
    /// Exact `iss`.
    pub issuer_url: String,
    /// Discovery document URL.
    pub discovery_url: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// PEM CA for the issuer (None: system bundle).
    pub ca_pem: Option<Vec<u8>>,
    /// Username claim and prefix.
    pub username_claim: String,
    /// Prefix applied to the user name.
    pub username_prefix: String,
    /// Groups claim and prefix.
    pub groups: Option<(String, String)>,
    /// UID claim.
    pub uid_claim: Option<String>,
    /// Extra key → claim.
    pub extra: Vec<(String, String)>,
    /// Claim → required value.
    pub required_claims: Vec<(String, String)>,
    /// Allowed algorithms (never `none`, never HMAC).
    pub algorithms: Vec<Algorithm>,
    /// Allowed clock skew.
    pub clock_skew: Duration,
    /// Minimum time between key refreshes caused by unknown `kid`s.
    pub min_refresh_interval: Duration,
    /// Time between periodic key refreshes.
    pub refresh_interval: Duration,
}

/// The algorithms that may be configured.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        "EdDSA" => Ok(Algorithm::EdDSA),
        "none" | "HS256" | "HS384" | "HS512" => Err(format!(
            "{name} is never accepted: unsigned and shared-secret tokens are refused"
        )),
        other => Err(format!("unknown signing algorithm {other:?}")),
    }
}

/// An `https://` URL with a host and no user name, query or fragment.
fn is_plain_https_url(url: &str) -> bool {
    // `http::Uri` drops a fragment silently: look for it first.
    if url.contains('#') {
        return false;
    }
    match url.parse::<http::Uri>() {
        Ok(u) => {
            u.scheme_str() == Some("https")
                && u.host().is_some()
                && u.query().is_none()
                && !u.authority().is_some_and(|a| a.as_str().contains('@'))
        }
        Err(_) => false,
    }
}

fn cel(problems: &mut Vec<Problem>, field: String, set: bool) {
    if set {
        problems.push(Problem {
            field,
            message: "CEL expressions are not supported yet; use claim/requiredValue".into(),
        });
    }
}

impl JwtAuthenticator {
    /// Validates and resolves the entry; `path` names it in problems
    /// (`authentication.jwt[0]`).
    pub fn settings(&self, path: &str) -> Result<IssuerSettings, Vec<Problem>> {
        let mut problems = Vec::new();
        let p = |field: &str, message: String| Problem {
            field: format!("{path}.{field}"),
            message,
        };
        let url = self.issuer.url.trim_end_matches(' ').to_owned();
        if !is_plain_https_url(&url) {
            problems.push(p(
                "issuer.url",
                format!("{url:?} must be an https:// URL without user name, query or fragment"),
            ));
        }
        if let Some(discovery) = &self.issuer.discovery_url {
            if discovery.trim_end_matches('/') == url.trim_end_matches('/') {
                problems.push(p(
                    "issuer.discoveryURL",
                    "must be different from issuer.url".into(),
                ));
            } else if !is_plain_https_url(discovery) {
                problems.push(p(
                    "issuer.discoveryURL",
                    format!(
                        "{discovery:?} must be an https:// URL without user name, query or fragment"
                    ),
                ));
            }
        }
        if self.issuer.audiences.is_empty() {
            problems.push(p(
                "issuer.audiences",
                "at least one audience is required".into(),
            ));
        }
        for (i, audience) in self.issuer.audiences.iter().enumerate() {
            if audience.is_empty() {
                problems.push(p(&format!("issuer.audiences[{i}]"), "is empty".into()));
            } else if self.issuer.audiences[..i].contains(audience) {
                problems.push(p(
                    &format!("issuer.audiences[{i}]"),
                    format!("duplicate audience {audience:?}"),
                ));
            }
        }
        if let Some(policy) = &self.issuer.audience_match_policy {
            if policy != "MatchAny" {
                problems.push(p(
                    "issuer.audienceMatchPolicy",
                    format!("{policy:?}: only MatchAny is supported"),
                ));
            }
        }
        for (i, rule) in self.claim_validation_rules.iter().enumerate() {
            cel(
                &mut problems,
                format!("{path}.claimValidationRules[{i}].expression"),
                rule.expression.is_some(),
            );
            if rule.expression.is_none() && (rule.claim.is_none() || rule.required_value.is_none())
            {
                problems.push(p(
                    &format!("claimValidationRules[{i}]"),
                    "claim and requiredValue are required".into(),
                ));
            }
            if rule.claim.is_some() && rule.expression.is_some() {
                problems.push(p(
                    &format!("claimValidationRules[{i}]"),
                    "claim and expression can't both be set".into(),
                ));
            }
            if rule.claim.is_some() && rule.message.is_some() {
                problems.push(p(
                    &format!("claimValidationRules[{i}].message"),
                    "may not be specified when claim is set".into(),
                ));
            }
            if let Some(claim) = &rule.claim {
                let earlier = &self.claim_validation_rules[..i];
                if earlier.iter().any(|r| r.claim.as_ref() == Some(claim)) {
                    problems.push(p(
                        &format!("claimValidationRules[{i}].claim"),
                        format!("duplicate claim {claim:?}"),
                    ));
                }
            }
        }
        cel(
            &mut problems,
            format!("{path}.userValidationRules"),
            self.user_validation_rules.is_some(),
        );
        let m = &self.claim_mappings;
        let (username_claim, username_prefix) = match &m.username {
            None => ("sub".to_owned(), format!("{url}#")),
            Some(u) => {
                cel(
                    &mut problems,
                    format!("{path}.claimMappings.username.expression"),
                    u.expression.is_some(),
                );
                let claim = u.claim.clone().unwrap_or_else(|| "sub".into());
                let prefix = match &u.prefix {
                    Some(prefix) => prefix.clone(),
                    None => {
                        problems.push(p(
                            "claimMappings.username.prefix",
                            "required when claim is set (it may be an empty string)".into(),
                        ));
                        String::new()
                    }
                };
                (claim, prefix)
            }
        };
        let groups = m.groups.as_ref().and_then(|g| {
            cel(
                &mut problems,
                format!("{path}.claimMappings.groups.expression"),
                g.expression.is_some(),
            );
            let claim = g.claim.clone()?;
            match &g.prefix {
                Some(prefix) => Some((claim, prefix.clone())),
                None => {
                    problems.push(p(
                        "claimMappings.groups.prefix",
                        "required when claim is set (it may be an empty string)".into(),
                    ));
                    None
                }
            }
        });
        let uid_claim = m.uid.as_ref().and_then(|u| {
            cel(
                &mut problems,
                format!("{path}.claimMappings.uid.expression"),
                u.expression.is_some(),
            );
            u.claim.clone()
        });
        let mut extra = Vec::new();
        for (i, e) in m.extra.iter().enumerate() {
            cel(
                &mut problems,
                format!("{path}.claimMappings.extra[{i}].valueExpression"),
                e.value_expression.is_some(),
            );
            for message in extra_key_problems(&e.key) {
                problems.push(p(&format!("claimMappings.extra[{i}].key"), message));
            }
            if m.extra[..i].iter().any(|earlier| earlier.key == e.key) {
                problems.push(p(
                    &format!("claimMappings.extra[{i}].key"),
                    format!("duplicate key {:?}", e.key),
                ));
            }
            match &e.claim {
                Some(claim) => extra.push((e.key.clone(), claim.clone())),
                None if e.value_expression.is_some() => {}
                None => problems.push(p(
                    &format!("claimMappings.extra[{i}].claim"),
                    "is required".into(),
                )),
            }
        }
        let mut algorithms = Vec::new();
        for (i, name) in self
            .signing_algorithms
            .clone()
            .unwrap_or_else(|| vec!["RS256".into()])
            .iter()
            .enumerate()
        {
            match parse_algorithm(name) {
                Ok(a) => algorithms.push(a),
                Err(message) => problems.push(p(&format!("signingAlgorithms[{i}]"), message)),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(IssuerSettings {
            allow_system_names: self
                .allow_system_names
                .unwrap_or(crate::authn::policy::DEFAULT_ALLOW_SYSTEM_NAMES),
            discovery_url: self.issuer.discovery_url.clone().unwrap_or_else(|| {
                format!(
                    "{}/.well-known/openid-configuration",
                    url.trim_end_matches('/')
                )
            }),
            issuer_url: url,
            audiences: self.issuer.audiences.clone(),
            ca_pem: self
                .issuer
                .certificate_authority
                .as_ref()
                .map(|c| c.as_bytes().to_vec()),
            username_claim,
            username_prefix,
            groups,
            uid_claim,
            extra,
            required_claims: self
                .claim_validation_rules
                .iter()
                .filter_map(|r| Some((r.claim.clone()?, r.required_value.clone()?)))
                .collect(),
            algorithms,
            clock_skew: self.clock_skew.unwrap_or(Duration::from_secs(30)),
            min_refresh_interval: self
                .key_refresh_min_interval
                .unwrap_or(Duration::from_secs(10)),
            refresh_interval: self
                .key_refresh_interval
                .unwrap_or(Duration::from_secs(300)),
        })
    }
}

/// The kube-apiserver `--oidc-*` flags, with the same names and meanings.
#[derive(Debug, Clone, Default)]
pub struct OidcFlags {
    /// `--oidc-issuer-url`.
    pub issuer_url: Option<String>,
    /// `--oidc-client-id` (the audience).
    pub client_id: Option<String>,
    /// `--oidc-ca-file` contents.
    pub ca_pem: Option<String>,
    /// `--oidc-username-claim` (default `sub`).
    pub username_claim: Option<String>,
    /// `--oidc-username-prefix`: unset → `<issuer>#` unless the claim is
    /// `email`; `-` → no prefix.
    pub username_prefix: Option<String>,
    /// `--oidc-groups-claim`.
    pub groups_claim: Option<String>,
    /// `--oidc-groups-prefix`.
    pub groups_prefix: Option<String>,
    /// `--oidc-required-claim key=value` (repeatable).
    pub required_claims: Vec<String>,
    /// `--oidc-signing-algs` (comma-separated, default RS256).
    pub signing_algs: Option<String>,
}

impl OidcFlags {
    /// The equivalent `jwt:` entry, or `None` when no issuer URL is set.
    pub fn to_jwt(&self) -> Result<Option<JwtAuthenticator>, Problem> {
        let Some(url) = &self.issuer_url else {
            return Ok(None);
        };
        let client_id = self.client_id.clone().ok_or_else(|| Problem {
            field: "--oidc-client-id".into(),
            message: "required with --oidc-issuer-url".into(),
        })?;
        let claim = self.username_claim.clone().unwrap_or_else(|| "sub".into());
        let prefix = match self.username_prefix.as_deref() {
            Some("-") => String::new(),
            Some(p) => p.to_owned(),
            None if claim == "email" => String::new(),
            None => format!("{url}#"),
        };
        let mut rules = Vec::new();
        for rc in &self.required_claims {
            let (k, v) = rc.split_once('=').ok_or_else(|| Problem {
                field: "--oidc-required-claim".into(),
                message: format!("{rc:?} is not key=value"),
            })?;
            rules.push(ClaimValidationRule {
                claim: Some(k.into()),
                required_value: Some(v.into()),
                expression: None,
                message: None,
            });
        }
        Ok(Some(JwtAuthenticator {
            issuer: Issuer {
                url: url.clone(),
                discovery_url: None,
                certificate_authority: self.ca_pem.clone(),
                audiences: vec![client_id],
                audience_match_policy: None,
            },
            claim_validation_rules: rules,
            claim_mappings: ClaimMappings {
                username: Some(PrefixedClaim {
                    claim: Some(claim),
                    prefix: Some(prefix),
                    expression: None,
                }),
                groups: self.groups_claim.clone().map(|c| PrefixedClaim {
                    claim: Some(c),
                    prefix: Some(self.groups_prefix.clone().unwrap_or_default()),
                    expression: None,
                }),
                uid: None,
                extra: Vec::new(),
            },
            user_validation_rules: None,
            signing_algorithms: self
                .signing_algs
                .as_ref()
                .map(|s| s.split(',').map(|a| a.trim().to_owned()).collect()),
            clock_skew: None,
            key_refresh_min_interval: None,
            key_refresh_interval: None,
            allow_system_names: None,
        }))
    }
}
