//! OIDC settings in the two shapes kube-apiserver accepts: the `jwt:` list of
//! an `AuthenticationConfiguration` (apiserver.config.k8s.io/v1beta1 and v1)
//! and the `--oidc-*` flags. Both become [`IssuerSettings`].
//!
//! CEL fields (`expression`, `valueExpression`, `userValidationRules`) are
//! compiled here, once, by [`super::cel`]; an expression that fails to
//! compile, or needs something the evaluator lacks, is refused with its field
//! path: a rule silently ignored would let tokens in that the author meant to
//! keep out.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::cel::{self, Expression, Variable};
use crate::authn::policy::extra_key_problems;
use crate::problem::Problem;

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
    /// CEL rules on the mapped user.
    #[serde(default)]
    pub user_validation_rules: Vec<UserValidationRule>,
    /// authproxy extension: allowed signing algorithms (default
    /// [`KUBE_CONFIG_ALGORITHMS`], what kube-apiserver allows for an
    /// `AuthenticationConfiguration`; `[RS256]` for the `--oidc-*` flags).
    #[serde(default)]
    pub signing_algorithms: Option<Vec<String>>,
    /// authproxy extension: tolerance added to kube's on `exp` (none) and
    /// `nbf` (a minute); default none, so tokens live exactly as long as
    /// kube-apiserver lets them.
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
    /// CEL on `claims`, must yield a bool (exclusive with claim).
    pub expression: Option<String>,
    /// Message for CEL rules.
    pub message: Option<String>,
}

/// `userValidationRules[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserValidationRule {
    /// CEL on `user`, must yield a bool.
    pub expression: String,
    /// Said when the rule refuses a token.
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
    /// Extra attributes: kube's CEL `valueExpression`; authproxy also accepts
    /// `claim`.
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
    /// CEL on `claims` (exclusive with claim and prefix).
    pub expression: Option<String>,
}

/// A claim without prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlainClaim {
    /// The claim.
    pub claim: Option<String>,
    /// CEL on `claims` (exclusive with claim).
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
    /// CEL on `claims`: a string or a list of strings.
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
    /// CEL mappings and rules (all empty without CEL).
    pub cel: CelSettings,
    /// Allowed algorithms (never `none`, never HMAC).
    pub algorithms: Vec<Algorithm>,
    /// Tolerance added to kube's on `exp` and `nbf`.
    pub clock_skew: Duration,
    /// Minimum time between key refreshes caused by unknown `kid`s.
    pub min_refresh_interval: Duration,
    /// Time between periodic key refreshes.
    pub refresh_interval: Duration,
}

/// The compiled CEL of one issuer.
#[derive(Debug, Clone, Default)]
pub struct CelSettings {
    /// `claimMappings.username.expression` (no prefix is applied).
    pub username: Option<Expression>,
    /// `claimMappings.groups.expression`.
    pub groups: Option<Expression>,
    /// `claimMappings.uid.expression`.
    pub uid: Option<Expression>,
    /// `claimMappings.extra[].valueExpression`, by key.
    pub extra: Vec<(String, Expression)>,
    /// `claimValidationRules[].expression` with their messages.
    pub claim_rules: Vec<(Expression, String)>,
    /// `userValidationRules[]` with their messages.
    pub user_rules: Vec<(Expression, String)>,
}

impl CelSettings {
    /// Whether any expression reads `claims`.
    pub fn reads_claims(&self) -> bool {
        self.username.is_some()
            || self.groups.is_some()
            || self.uid.is_some()
            || !self.extra.is_empty()
            || !self.claim_rules.is_empty()
    }
}

/// The signing algorithms kube-apiserver allows for the issuers of an
/// `AuthenticationConfiguration` ("any alg is fine as long it matches a
/// public key"), less ES512, which authproxy cannot verify.
pub const KUBE_CONFIG_ALGORITHMS: [&str; 8] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
];

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

fn compile(
    problems: &mut Vec<Problem>,
    field: String,
    source: &str,
    variable: Variable,
) -> Option<Expression> {
    match cel::compile(source, variable) {
        Ok(expression) => Some(expression),
        Err(message) => {
            problems.push(Problem { field, message });
            None
        }
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
        let mut compiled = CelSettings::default();
        for (i, rule) in self.claim_validation_rules.iter().enumerate() {
            let field = |f: &str| format!("claimValidationRules[{i}]{f}");
            match (&rule.claim, &rule.expression) {
                (Some(_), Some(_)) => problems.push(p(
                    &field(""),
                    "claim and expression can't both be set".into(),
                )),
                (None, None) => {
                    problems.push(p(&field(""), "claim or expression is required".into()))
                }
                (Some(claim), None) => {
                    if rule.required_value.is_none() {
                        problems.push(p(&field(".requiredValue"), "is required".into()));
                    }
                    if rule.message.is_some() {
                        problems.push(p(
                            &field(".message"),
                            "may not be specified when claim is set".into(),
                        ));
                    }
                    let earlier = &self.claim_validation_rules[..i];
                    if earlier.iter().any(|r| r.claim.as_ref() == Some(claim)) {
                        problems.push(p(&field(".claim"), format!("duplicate claim {claim:?}")));
                    }
                }
                (None, Some(source)) => {
                    if rule.required_value.is_some() {
                        problems.push(p(
                            &field(".requiredValue"),
                            "may not be specified when expression is set".into(),
                        ));
                    }
                    let earlier = &self.claim_validation_rules[..i];
                    if earlier
                        .iter()
                        .any(|r| r.expression.as_ref() == Some(source))
                    {
                        problems.push(p(
                            &field(".expression"),
                            format!("duplicate expression {source:?}"),
                        ));
                    } else if let Some(e) = compile(
                        &mut problems,
                        format!("{path}.{}", field(".expression")),
                        source,
                        Variable::Claims,
                    ) {
                        compiled
                            .claim_rules
                            .push((e, rule.message.clone().unwrap_or_default()));
                    }
                }
            }
        }
        for (i, rule) in self.user_validation_rules.iter().enumerate() {
            let field = format!("userValidationRules[{i}].expression");
            if self.user_validation_rules[..i]
                .iter()
                .any(|r| r.expression == rule.expression)
            {
                problems.push(p(
                    &field,
                    format!("duplicate expression {:?}", rule.expression),
                ));
            } else if let Some(e) = compile(
                &mut problems,
                format!("{path}.{field}"),
                &rule.expression,
                Variable::User,
            ) {
                compiled
                    .user_rules
                    .push((e, rule.message.clone().unwrap_or_default()));
            }
        }
        let m = &self.claim_mappings;
        let mut claim_or_expression =
            |name: &str,
             claim: &Option<String>,
             prefix: Option<&Option<String>>,
             expression: &Option<String>| {
                match (claim, expression) {
                    (Some(_), Some(_)) => {
                        problems.push(p(
                            &format!("claimMappings.{name}"),
                            "claim and expression can't both be set".into(),
                        ));
                        None
                    }
                    (None, Some(source)) => {
                        if let Some(Some(_)) = prefix {
                            problems.push(p(
                                &format!("claimMappings.{name}.prefix"),
                                "may not be specified when expression is set".into(),
                            ));
                        }
                        compile(
                            &mut problems,
                            format!("{path}.claimMappings.{name}.expression"),
                            source,
                            Variable::Claims,
                        )
                    }
                    _ => None,
                }
            };
        if let Some(u) = &m.username {
            compiled.username =
                claim_or_expression("username", &u.claim, Some(&u.prefix), &u.expression);
        }
        if let Some(g) = &m.groups {
            compiled.groups =
                claim_or_expression("groups", &g.claim, Some(&g.prefix), &g.expression);
        }
        if let Some(u) = &m.uid {
            compiled.uid = claim_or_expression("uid", &u.claim, None, &u.expression);
        }
        let (username_claim, username_prefix) = match &m.username {
            None => ("sub".to_owned(), format!("{url}#")),
            Some(u) if u.expression.is_some() => (String::new(), String::new()),
            Some(u) => {
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
        let uid_claim = m.uid.as_ref().and_then(|u| u.claim.clone());
        let mut extra = Vec::new();
        for (i, e) in m.extra.iter().enumerate() {
            for message in extra_key_problems(&e.key) {
                problems.push(p(&format!("claimMappings.extra[{i}].key"), message));
            }
            if m.extra[..i].iter().any(|earlier| earlier.key == e.key) {
                problems.push(p(
                    &format!("claimMappings.extra[{i}].key"),
                    format!("duplicate key {:?}", e.key),
                ));
            }
            match (&e.claim, &e.value_expression) {
                (Some(_), Some(_)) => problems.push(p(
                    &format!("claimMappings.extra[{i}]"),
                    "claim and valueExpression can't both be set".into(),
                )),
                (Some(claim), None) => extra.push((e.key.clone(), claim.clone())),
                (None, Some(source)) => {
                    if let Some(compiled_extra) = compile(
                        &mut problems,
                        format!("{path}.claimMappings.extra[{i}].valueExpression"),
                        source,
                        Variable::Claims,
                    ) {
                        compiled.extra.push((e.key.clone(), compiled_extra));
                    }
                }
                (None, None) => problems.push(p(
                    &format!("claimMappings.extra[{i}].valueExpression"),
                    "is required (or claim)".into(),
                )),
            }
        }
        // kube's rule: a username read from claims.email by CEL must come
        // with a check of claims.email_verified somewhere in the mappings
        // or claim rules.
        if compiled
            .username
            .as_ref()
            .is_some_and(|u| u.reads_claim("email"))
        {
            let verified = compiled
                .username
                .iter()
                .chain(compiled.extra.iter().map(|(_, e)| e))
                .chain(compiled.claim_rules.iter().map(|(e, _)| e))
                .any(|e| e.reads_claim("email_verified"));
            if !verified {
                problems.push(p(
                    "claimMappings.username.expression",
                    "claims.email_verified must be used in claimMappings.username.expression or claimMappings.extra[*].valueExpression or claimValidationRules[*].expression when claims.email is used in claimMappings.username.expression".into(),
                ));
            }
        }
        let mut algorithms = Vec::new();
        for (i, name) in self
            .signing_algorithms
            .clone()
            .unwrap_or_else(|| KUBE_CONFIG_ALGORITHMS.map(str::to_owned).to_vec())
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
            cel: compiled,
            algorithms,
            clock_skew: self.clock_skew.unwrap_or(Duration::ZERO),
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
            user_validation_rules: Vec::new(),
            // kube's --oidc-signing-algs default
            signing_algorithms: Some(
                self.signing_algs
                    .as_ref()
                    .map(|s| s.split(',').map(|a| a.trim().to_owned()).collect())
                    .unwrap_or_else(|| vec!["RS256".to_owned()]),
            ),
            clock_skew: None,
            key_refresh_min_interval: None,
            key_refresh_interval: None,
            allow_system_names: None,
        }))
    }
}
