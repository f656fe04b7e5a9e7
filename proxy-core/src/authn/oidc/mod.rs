//! OIDC ID tokens, verified as kube-apiserver verifies them.
//!
//! A Bearer token whose (unverified) `iss` names this issuer is this
//! authenticator's; anything else is passed on. From there the token must:
//! use an allowed algorithm (never `none`, never HMAC), be signed by one of
//! the issuer's current keys, carry `iss` exactly, an `aud` containing a
//! configured audience, `exp`/`nbf`/`iat` read and checked as kube reads
//! and checks them (claims.rs), and every required claim with its value.
//! Claims then map to the user with kube's rules (username prefix,
//! `email_verified` when the username is `email`, groups as a string or an
//! array). No token appears in an error or a log.

#[cfg(feature = "cel")]
pub mod cel;
#[cfg(not(feature = "cel"))]
#[path = "cel_off.rs"]
pub mod cel;
#[cfg(test)]
#[cfg(feature = "cel")]
mod cel_cases;
#[cfg(feature = "cel")]
mod cel_kube;
mod claims;
pub mod config;
mod distributed;
mod keys;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, decode_header, Validation};
use serde_json::{Map, Value};

pub use config::{CelSettings, IssuerSettings, JwtAuthenticator, OidcFlags};
pub use keys::{parse_discovery, parse_jwks, shown_kid, Discovery, KeySet};

use claims::{
    check_standard_types, check_times, invalid, matched_audiences, string_claim, string_list,
};

use super::{Authenticator, AuthnError, AuthnFuture, Identity, Source, UserInfo, Verification};
use crate::credential::Credential;

/// One OIDC issuer's authenticator.
pub struct OidcAuthenticator {
    settings: IssuerSettings,
    keys: Arc<KeySet>,
    validation: Validation,
    name: String,
}

impl std::fmt::Debug for OidcAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuthenticator")
            .field("issuer", &self.settings.issuer_url)
            .finish()
    }
}

pub use super::peek_issuer;

impl OidcAuthenticator {
    /// Builds the authenticator and starts loading keys in the background
    /// (call within a tokio runtime). Not ready until keys are loaded.
    pub fn start(settings: IssuerSettings) -> Result<Arc<Self>, crate::tls::TlsError> {
        let keys = Arc::new(KeySet::new(&settings)?);
        keys.start(settings.refresh_interval);
        let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[&settings.issuer_url]);
        // aud, exp, nbf and iat are read and checked by `claims`, as kube
        // reads them: jsonwebtoken refuses an aud list holding a null, and
        // would compare times otherwise.
        validation.validate_aud = false;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["iss"]);
        Ok(Arc::new(OidcAuthenticator {
            name: format!("oidc:{}", settings.issuer_url),
            settings,
            keys,
            validation,
        }))
    }

    /// The issuer's key set (fetch counters, readiness).
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthnError> {
        let header = decode_header(token)
            .map_err(|_| invalid("JWT header is malformed or names an unsupported algorithm"))?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "signing algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let key = self.keys.key_for(header.kid.as_deref(), header.alg).await?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| invalid(format!("ID token rejected: {}", describe(&e))))?;
        let mut claims = data.claims;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        check_standard_types(&claims)?;
        let times = check_times(&claims, now, self.settings.clock_skew.as_secs_f64())?;
        let audiences = matched_audiences(&claims, &self.settings.audiences);
        if audiences.is_empty() {
            return Err(invalid("audience does not match"));
        }
        // Only for a token that is otherwise good: the source is fetched.
        if let Some((claim, _)) = &self.settings.groups {
            distributed::resolve(&mut claims, claim, &self.settings, &self.keys).await?;
        }
        let user = map_claims(&self.settings, &claims)?;
        Ok(Identity::verified(
            user,
            Verification {
                source: Source::Oidc,
                expires_at: Some(times.expires_at),
                audiences: Some(audiences),
            },
        ))
    }
}

fn describe(error: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind::*;
    match error.kind() {
        ExpiredSignature => "expired",
        ImmatureSignature => "not yet valid (nbf)",
        InvalidAudience => "audience does not match",
        InvalidIssuer => "issuer does not match",
        InvalidSignature => "bad signature",
        InvalidAlgorithm => "algorithm does not match the key",
        MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
        _ => "malformed",
    }
}

/// The extra key kube fills from `jti`.
pub const CREDENTIAL_ID_KEY: &str = "authentication.kubernetes.io/credential-id";

/// Maps verified claims to a user with kube-apiserver's rules: username,
/// groups, uid and extra (claims or CEL), `authentication.kubernetes.io/
/// credential-id` from a string `jti` (`JTI=<jti>`), required claims, then
/// CEL claim validation rules and user validation rules.
pub fn map_claims(
    settings: &IssuerSettings,
    claims: &Map<String, Value>,
) -> Result<UserInfo, AuthnError> {
    for (claim, required) in &settings.required_claims {
        if string_claim(claims, claim)? != Some(required.as_str()) {
            return Err(invalid(format!(
                "required claim {claim:?} does not have its required value"
            )));
        }
    }
    let cel_settings = &settings.cel;
    let claims_value = cel_settings
        .reads_claims()
        .then(|| cel::claims_to_cel(claims));
    let eval = |what: &str, expression: &cel::Expression| {
        let value = claims_value.as_ref().unwrap_or(&cel::Value::Null);
        expression
            .evaluate(value)
            .map_err(|e| invalid(format!("error evaluating {what} expression: {e}")))
    };
    // kube refuses a groups or extra list straight from split().
    let split_refused = |expression: &cel::Expression, result: cel::Value| {
        let value = claims_value.as_ref().unwrap_or(&cel::Value::Null);
        if expression.is_split_list(&result, value) {
            return Err(invalid(format!(
                "expression {:?} must return a string or a list of strings (a list straight from split() is not one, as kube reads it)",
                expression.source()
            )));
        }
        Ok(result)
    };
    let username = match &cel_settings.username {
        Some(expression) => {
            let username = cel::to_string(eval("username", expression)?)
                .map_err(|e| invalid(format!("username expression {e}")))?;
            if username.is_empty() {
                return Err(invalid("empty username via CEL expression is not allowed"));
            }
            username
        }
        None => {
            // null reads as "", as in kube; an absent claim is an error
            let username = string_claim(claims, &settings.username_claim)?.ok_or_else(|| {
                invalid(format!(
                    "username claim {:?} is missing",
                    settings.username_claim
                ))
            })?;
            if settings.username_claim == "email" {
                match claims.get("email_verified") {
                    None => {}
                    Some(Value::Bool(true)) => {}
                    Some(_) => return Err(invalid("email_verified is not true")),
                }
            }
            let username = format!("{}{username}", settings.username_prefix);
            // kube would go on with an empty user name; no request can be
            // made as that user through impersonation
            if username.is_empty() {
                return Err(invalid(format!(
                    "username claim {:?} is empty",
                    settings.username_claim
                )));
            }
            username
        }
    };
    let groups = match (&settings.groups, &cel_settings.groups) {
        (Some((claim, prefix)), _) => string_list(claims, claim)?
            .into_iter()
            .map(|g| format!("{prefix}{g}"))
            .collect(),
        (None, Some(expression)) => {
            cel::to_string_list(split_refused(expression, eval("groups", expression)?)?)
                .map_err(|e| invalid(format!("groups expression {e}")))?
        }
        (None, None) => Vec::new(),
    };
    let uid = match (&settings.uid_claim, &cel_settings.uid) {
        (Some(claim), _) => {
            let uid = string_claim(claims, claim)?
                .ok_or_else(|| invalid(format!("uid claim {claim:?} is missing")))?;
            Some(uid.to_owned()).filter(|uid| !uid.is_empty())
        }
        (None, Some(expression)) => Some(
            cel::to_string(eval("uid", expression)?)
                .map_err(|e| invalid(format!("uid expression {e}")))?,
        )
        .filter(|uid| !uid.is_empty()),
        (None, None) => None,
    };
    let mut extra = BTreeMap::new();
    if let Some(Value::String(jti)) = claims.get("jti") {
        if !jti.is_empty() {
            extra.insert(CREDENTIAL_ID_KEY.to_owned(), vec![format!("JTI={jti}")]);
        }
    }
    for (key, claim) in &settings.extra {
        let values = string_list(claims, claim)?;
        if !values.is_empty() {
            extra.insert(key.clone(), values);
        }
    }
    for (key, expression) in &cel_settings.extra {
        let values = cel::to_string_list(split_refused(expression, eval("extra", expression)?)?)
            .map_err(|e| invalid(format!("extra expression {:?} {e}", expression.source())))?;
        if !values.is_empty() {
            extra.insert(key.clone(), values);
        }
    }
    for (expression, message) in &cel_settings.claim_rules {
        let passed = cel::to_bool(eval("claim validation", expression)?)
            .map_err(|e| invalid(format!("error evaluating claim validation expression: {e}")))?;
        if !passed {
            return Err(invalid(format!(
                "validation expression '{}' failed: {message}",
                expression.source()
            )));
        }
    }
    let user = UserInfo {
        username,
        uid,
        groups,
        extra,
    };
    if !cel_settings.user_rules.is_empty() {
        let user_value = cel::user_to_cel(&user);
        for (expression, message) in &cel_settings.user_rules {
            let passed = expression
                .evaluate(&user_value)
                .map_err(|e| invalid(format!("error evaluating user info validation rule: {e}")))
                .and_then(|v| {
                    cel::to_bool(v).map_err(|e| {
                        invalid(format!("error evaluating user info validation rule: {e}"))
                    })
                })?;
            if !passed {
                return Err(invalid(format!(
                    "validation expression '{}' failed: {message}",
                    expression.source()
                )));
            }
        }
    }
    Ok(user)
}

impl Authenticator for OidcAuthenticator {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        Box::pin(async move {
            let Credential::Bearer(token) = credential else {
                return Ok(None);
            };
            let token = token.expose();
            match peek_issuer(token) {
                Some(iss) if iss == self.settings.issuer_url => self.verify(token).await.map(Some),
                _ => Ok(None),
            }
        })
    }

    fn counters(&self, found: &mut crate::counters::AuthnCounters) {
        found.key_fetches.push(self.keys.counters().clone());
    }

    fn is_ready(&self) -> bool {
        self.keys.is_loaded()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn settings() -> IssuerSettings {
        let jwt: JwtAuthenticator = serde_yaml_ng::from_str(
            "issuer: {url: 'https://idp.example', audiences: [kube]}\nclaimMappings:\n  username: {claim: email, prefix: ''}\n  groups: {claim: groups, prefix: 'oidc:'}\n  uid: {claim: sub}\n  extra: [{key: example.com/tenant, claim: tenant}]\nclaimValidationRules: [{claim: hd, requiredValue: example.com}]\n",
        )
        .unwrap();
        jwt.settings("jwt[0]").unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn claims_map_with_kube_rules() {
        let user = map_claims(&settings(), &claims(json!({"email": "a@x", "email_verified": true, "groups": ["devs", "ops"], "sub": "123", "hd": "example.com", "tenant": "t1"}))).unwrap();
        assert_eq!(user.username, "a@x");
        assert_eq!(user.groups, ["oidc:devs", "oidc:ops"]);
        assert_eq!(user.uid.as_deref(), Some("123"));
        assert_eq!(user.extra["example.com/tenant"], ["t1"]);
        let single = map_claims(
            &settings(),
            &claims(json!({"email": "a@x", "groups": "devs", "hd": "example.com", "sub": null})),
        )
        .unwrap();
        assert_eq!(single.groups, ["oidc:devs"]);
        assert_eq!(single.uid, None, "a null uid claim is an empty uid");
        let no_uid = map_claims(
            &settings(),
            &claims(json!({"email": "a@x", "hd": "example.com"})),
        );
        assert!(
            no_uid.is_err(),
            "kube refuses a token without its uid claim"
        );
        let empty = map_claims(
            &settings(),
            &claims(json!({"email": null, "hd": "example.com", "sub": "1"})),
        );
        assert!(
            empty.is_err(),
            "an empty user name cannot be impersonated: {empty:?}"
        );
    }

    #[test]
    fn unverified_email_and_missing_required_claim_are_refused() {
        assert!(map_claims(
            &settings(),
            &claims(json!({"email": "a@x", "email_verified": false, "hd": "example.com"}))
        )
        .is_err());
        assert!(map_claims(
            &settings(),
            &claims(json!({"email": "a@x", "hd": "other.com"}))
        )
        .is_err());
        assert!(map_claims(
            &settings(),
            &claims(json!({"email": 5, "hd": "example.com"}))
        )
        .is_err());
    }

    #[test]
    fn flags_follow_kube_prefix_defaults() {
        let flags = OidcFlags {
            issuer_url: Some("https://idp".into()),
            client_id: Some("kube".into()),
            ..Default::default()
        };
        let s = flags.to_jwt().unwrap().unwrap().settings("flags").unwrap();
        assert_eq!(
            (s.username_claim.as_str(), s.username_prefix.as_str()),
            ("sub", "https://idp#")
        );
        let email = OidcFlags {
            username_claim: Some("email".into()),
            ..flags.clone()
        };
        assert_eq!(
            email
                .to_jwt()
                .unwrap()
                .unwrap()
                .settings("f")
                .unwrap()
                .username_prefix,
            ""
        );
        let dash = OidcFlags {
            username_prefix: Some("-".into()),
            ..flags
        };
        assert_eq!(
            dash.to_jwt()
                .unwrap()
                .unwrap()
                .settings("f")
                .unwrap()
                .username_prefix,
            ""
        );
    }

    #[cfg(feature = "cel")]
    #[test]
    fn bad_cel_and_hmac_are_refused_with_the_field_named() {
        let jwt: JwtAuthenticator = serde_yaml_ng::from_str(
            "issuer: {url: 'https://idp', audiences: [k]}\nclaimMappings:\n  username: {expression: 'claims.'}\n  groups: {expression: 'sets.equivalent(claims.g, [])'}\n  uid: {claim: sub, expression: 'claims.sub'}\n  extra: [{key: a.io/b, valueExpression: 'user.uid'}]\nuserValidationRules: [{expression: 'claims.sub == \"\"'}]\nclaimValidationRules: [{expression: 'claims.a', requiredValue: x}]\nsigningAlgorithms: [HS256]\n",
        )
        .unwrap();
        let problems = jwt.settings("authentication.jwt[0]").unwrap_err();
        let f = |s: &str| format!("authentication.jwt[0].{s}");
        for (field, words) in [
            ("claimMappings.username.expression", "compilation failed"),
            (
                "claimMappings.groups.expression",
                "\"sets.equivalent\" is not supported",
            ),
            ("claimMappings.uid", "can't both be set"),
            (
                "claimMappings.extra[0].valueExpression",
                "undeclared reference to \"user\"",
            ),
            (
                "userValidationRules[0].expression",
                "undeclared reference to \"claims\"",
            ),
            (
                "claimValidationRules[0].requiredValue",
                "may not be specified",
            ),
            ("signingAlgorithms[0]", "HS256"),
        ] {
            assert!(has(&problems, &f(field), words), "{field}: {problems:?}");
        }
    }

    #[cfg(feature = "cel")]
    #[test]
    fn a_username_from_claims_email_needs_email_verified_somewhere() {
        let base = "issuer: {url: 'https://idp', audiences: [k]}\n";
        let refused = problems_of(&format!(
            "{base}claimMappings:\n  username: {{expression: 'claims.email'}}\n"
        ));
        assert!(
            has(
                &refused,
                "authentication.jwt[0].claimMappings.username.expression",
                "claims.email_verified must be used"
            ),
            "{refused:?}"
        );
        for fine in [
            "claimMappings:\n  username: {expression: 'claims.email_verified ? claims.email : \"\"'}\n",
            "claimMappings:\n  username: {expression: 'claims.email'}\nclaimValidationRules: [{expression: 'claims.?email_verified.orValue(true) == true'}]\n",
            "claimMappings:\n  username: {expression: 'claims.email'}\n  extra: [{key: a.io/v, valueExpression: 'string(claims.email_verified)'}]\n",
            "claimMappings:\n  username: {expression: 'claims.sub'}\n",
        ] {
            assert!(problems_of(&format!("{base}{fine}")).is_empty(), "{fine}");
        }
    }

    /// The examples of kube's "Authenticating" page (structured
    /// authentication configuration), loaded as written there (but for the
    /// groups expression, see the end), with the tokens and results the
    /// page gives.
    #[cfg(feature = "cel")]
    #[test]
    fn kube_documentation_examples_give_the_documented_users() {
        let mappings = "  claimMappings:\n    username:\n      expression: 'claims.username + \":external-user\"'\n    groups:\n      expression: 'claims.roles.split(\",\").map(r, r)'\n    uid:\n      expression: 'claims.sub'\n    extra:\n    - key: 'example.com/tenant'\n      valueExpression: 'claims.tenant'\n";
        let users = "  userValidationRules:\n  - expression: \"!user.username.startsWith('system:')\" # the expression will evaluate to true, so validation will succeed.\n    message: 'username cannot used reserved system: prefix'\n";
        let load = |yaml: String| {
            let kube: crate::config::KubeAuthenticationConfiguration =
                serde_yaml_ng::from_str(&yaml).unwrap();
            kube.jwt[0].settings("jwt[0]").unwrap()
        };
        let head = "apiVersion: apiserver.config.k8s.io/v1beta1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: https://example.com\n    audiences:\n    - my-app\n";
        let token = json!({"aud": "kubernetes", "exp": 1703232949, "iat": 1701107233,
            "iss": "https://example.com", "jti": "7c337942807e73caa2c30c868ac0ce910bce02ddcbfebe8c23b8b5f27ad62873",
            "nbf": 1701107233, "roles": "user,admin", "sub": "authentication",
            "tenant": "72f988bf-86f1-41af-91ab-2d7cd011db4a", "username": "foo"});
        let user = map_claims(
            &load(format!("{head}{mappings}{users}")),
            &claims(token.clone()),
        )
        .unwrap();
        assert_eq!(user.username, "foo:external-user");
        assert_eq!(user.uid.as_deref(), Some("authentication"));
        assert_eq!(user.groups, ["user", "admin"]);
        assert_eq!(
            user.extra["example.com/tenant"],
            ["72f988bf-86f1-41af-91ab-2d7cd011db4a"]
        );
        assert_eq!(
            user.extra[CREDENTIAL_ID_KEY],
            ["JTI=7c337942807e73caa2c30c868ac0ce910bce02ddcbfebe8c23b8b5f27ad62873"]
        );
        // Second example: the token has no hd claim, so validation fails.
        let rules = "  claimValidationRules:\n  - expression: 'claims.hd == \"example.com\"' # the token below does not have this claim, so validation will fail.\n    message: the hd claim must be set to example.com\n";
        let refused = map_claims(
            &load(format!("{head}{rules}{mappings}{users}")),
            &claims(token.clone()),
        );
        assert!(refused.is_err(), "{refused:?}");
        let with_hd =
            json!({"hd": "other.com", "username": "foo", "sub": "s", "roles": "r", "tenant": "t"});
        let message = map_claims(
            &load(format!("{head}{rules}{mappings}{users}")),
            &claims(with_hd),
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("the hd claim must be set to example.com"),
            "{message}"
        );
        // Third example: the username maps to system:foo, refused by the user rule.
        let plain = "  claimMappings:\n    username:\n      expression: 'claims.username'\n    groups:\n      expression: 'claims.roles.split(\",\").map(r, r)'\n    uid:\n      expression: 'claims.sub'\n    extra:\n    - key: 'example.com/tenant'\n      valueExpression: 'claims.tenant'\n";
        let mut system = token.clone();
        system["username"] = json!("system:foo");
        let message = map_claims(&load(format!("{head}{plain}{users}")), &claims(system))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("username cannot used reserved system: prefix"),
            "{message}"
        );
        // The page writes groups as `claims.roles.split(",")`; kube-apiserver
        // refuses a list straight from split() (jwt_oracle shows it), and so
        // does the proxy: the examples above map it (`.map(r, r)`).
        let literal = mappings.replace(".map(r, r)", "");
        let refused = map_claims(
            &load(format!("{head}{literal}{users}")),
            &claims(token.clone()),
        );
        assert!(refused.is_err_and(|e| e.to_string().contains("straight from split()")),);
    }

    #[cfg(feature = "cel")]
    #[test]
    fn cel_results_of_the_wrong_kind_refuse_the_token() {
        let settings = |mapping: &str| {
            let jwt: JwtAuthenticator = serde_yaml_ng::from_str(&format!(
                "issuer: {{url: 'https://idp', audiences: [k]}}\nclaimMappings:\n{mapping}"
            ))
            .unwrap();
            jwt.settings("j").unwrap()
        };
        let c = claims(json!({"sub": "s", "n": 5, "empty": "", "list": ["a", 1]}));
        for (mapping, words) in [
            (
                "  username: {expression: 'claims.empty'}\n",
                "empty username",
            ),
            (
                "  username: {expression: 'claims.n'}\n",
                "must return a string",
            ),
            (
                "  username: {expression: 'claims.missing'}\n",
                "no such key",
            ),
            (
                "  username: {expression: 'claims.sub'}\n  groups: {expression: 'claims.list'}\n",
                "string or a list of strings",
            ),
            (
                "  username: {expression: 'claims.sub'}\n  uid: {expression: 'claims.n'}\n",
                "must return a string",
            ),
        ] {
            let message = map_claims(&settings(mapping), &c).unwrap_err().to_string();
            assert!(message.contains(words), "{mapping}: {message}");
        }
        let rule = "  username: {expression: 'claims.sub'}\nclaimValidationRules: [{expression: 'claims.sub'}]\n";
        let message = map_claims(&settings(rule), &c).unwrap_err().to_string();
        assert!(message.contains("must return a boolean"), "{message}");
    }

    #[test]
    fn credential_id_comes_from_a_string_jti_as_kube_adds_it() {
        let s = settings();
        let base = json!({"email": "a@x", "hd": "example.com", "sub": "1"});
        let with = |jti: Value| {
            let mut c = base.clone();
            c["jti"] = jti;
            map_claims(&s, &claims(c))
                .unwrap()
                .extra
                .get(CREDENTIAL_ID_KEY)
                .cloned()
        };
        assert_eq!(with(json!("abc")), Some(vec!["JTI=abc".to_owned()]));
        assert_eq!(with(json!("")), None);
        assert_eq!(with(json!(5)), None);
        assert_eq!(
            map_claims(&s, &claims(base))
                .unwrap()
                .extra
                .get(CREDENTIAL_ID_KEY),
            None
        );
    }

    fn problems_of(yaml: &str) -> Vec<crate::problem::Problem> {
        let jwt: JwtAuthenticator = serde_yaml_ng::from_str(yaml).unwrap();
        jwt.settings("authentication.jwt[0]")
            .err()
            .unwrap_or_default()
    }

    fn has(problems: &[crate::problem::Problem], field: &str, words: &str) -> bool {
        problems
            .iter()
            .any(|p| p.field == field && p.message.contains(words))
    }

    #[test]
    fn groups_claim_without_prefix_is_refused_as_kube_does() {
        let problems = problems_of(
            "issuer: {url: 'https://idp', audiences: [k]}\nclaimMappings:\n  username: {claim: sub, prefix: ''}\n  groups: {claim: groups}\n",
        );
        assert!(
            has(
                &problems,
                "authentication.jwt[0].claimMappings.groups.prefix",
                "required when claim is set"
            ),
            "{problems:?}"
        );
        assert!(problems_of(
            "issuer: {url: 'https://idp', audiences: [k]}\nclaimMappings:\n  username: {claim: sub, prefix: ''}\n  groups: {claim: groups, prefix: ''}\n",
        )
        .is_empty());
    }

    #[test]
    fn extra_keys_must_be_lowercase_domain_prefixed_and_not_kubes() {
        let problems = problems_of(
            "issuer: {url: 'https://idp', audiences: [k]}\nclaimMappings:\n  username: {claim: sub, prefix: ''}\n  extra:\n  - {key: tenant, claim: t}\n  - {key: Acme.com/Tenant, claim: t}\n  - {key: authentication.kubernetes.io/x, claim: t}\n  - {key: k8s.io/y, claim: t}\n  - {key: acme.com/ok, claim: t}\n  - {key: acme.com/ok, claim: u}\n",
        );
        let f = |i: usize| format!("authentication.jwt[0].claimMappings.extra[{i}].key");
        assert!(has(&problems, &f(0), "domain-prefixed"), "{problems:?}");
        assert!(has(&problems, &f(1), "lowercase"), "{problems:?}");
        assert!(
            has(&problems, &f(2), "reserved for Kubernetes"),
            "{problems:?}"
        );
        assert!(
            has(&problems, &f(3), "reserved for Kubernetes"),
            "{problems:?}"
        );
        assert!(!problems.iter().any(|p| p.field == f(4)), "{problems:?}");
        assert!(has(&problems, &f(5), "duplicate"), "{problems:?}");
    }

    #[test]
    fn issuer_and_rules_follow_kubes_structural_checks() {
        let problems = problems_of(
            "issuer: {url: 'https://user@idp', discoveryURL: 'https://user@idp/', audiences: [k, k, '']}\nclaimValidationRules:\n- {claim: hd, requiredValue: a, message: m}\n- {claim: hd, requiredValue: b}\nclaimMappings:\n  username: {claim: sub, prefix: ''}\n",
        );
        let f = |s: &str| format!("authentication.jwt[0].{s}");
        assert!(
            has(&problems, &f("issuer.url"), "user name"),
            "{problems:?}"
        );
        assert!(
            has(&problems, &f("issuer.discoveryURL"), "different"),
            "{problems:?}"
        );
        assert!(
            has(&problems, &f("issuer.audiences[1]"), "duplicate"),
            "{problems:?}"
        );
        assert!(
            has(&problems, &f("issuer.audiences[2]"), "empty"),
            "{problems:?}"
        );
        assert!(
            has(&problems, &f("claimValidationRules[0].message"), "may not"),
            "{problems:?}"
        );
        assert!(
            has(&problems, &f("claimValidationRules[1].claim"), "duplicate"),
            "{problems:?}"
        );
        assert!(!problems_of(
            "issuer: {url: 'https://idp#frag', audiences: [k]}\nclaimMappings:\n  username: {claim: sub, prefix: ''}\n"
        )
        .is_empty());
    }

    #[test]
    fn system_names_are_refused_by_default_and_allowed_on_request() {
        let s = settings();
        assert!(!s.allow_system_names);
        let jwt: JwtAuthenticator = serde_yaml_ng::from_str(
            "issuer: {url: 'https://idp', audiences: [k]}\nallowSystemNames: true\n",
        )
        .unwrap();
        assert!(jwt.settings("j").unwrap().allow_system_names);
    }

    #[test]
    fn signing_algorithms_default_to_kubes() {
        use jsonwebtoken::Algorithm::*;
        let jwt: JwtAuthenticator =
            serde_yaml_ng::from_str("issuer: {url: 'https://idp', audiences: [k]}\n").unwrap();
        let algorithms = jwt.settings("j").unwrap().algorithms;
        assert_eq!(
            algorithms,
            [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384],
            "an AuthenticationConfiguration issuer: kube allows every asymmetric algorithm"
        );
        let flags = OidcFlags {
            issuer_url: Some("https://idp".into()),
            client_id: Some("k".into()),
            ..Default::default()
        };
        let from_flags = flags.to_jwt().unwrap().unwrap().settings("f").unwrap();
        assert_eq!(
            from_flags.algorithms,
            [RS256],
            "--oidc-signing-algs defaults to RS256"
        );
    }

    #[test]
    fn issuer_is_peeked_without_verification() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"iss":"https://idp"}"#);
        assert_eq!(
            peek_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://idp")
        );
        assert_eq!(peek_issuer("not-a-jwt"), None);
        assert_eq!(peek_issuer("a.b.c.d"), None);
    }

    #[tokio::test]
    async fn an_exp_beyond_the_clock_is_clamped_not_a_panic() {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "k1",
            "x": b64(&point[1..33]), "y": b64(&point[33..])}]});
        // Nothing listens at this issuer: the preloaded keys are the only ones.
        let jwt: JwtAuthenticator = serde_yaml_ng::from_str(
            "issuer: {url: 'https://127.0.0.1:9/idp', audiences: [kube]}\nclaimMappings: {username: {claim: sub, prefix: ''}}\nsigningAlgorithms: [ES256]\n",
        )
        .unwrap();
        let oidc = OidcAuthenticator::start(jwt.settings("jwt[0]").unwrap()).unwrap();
        oidc.keys()
            .preload(&serde_json::from_value(jwks).unwrap())
            .unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        let claims = json!({"iss": "https://127.0.0.1:9/idp", "aud": "kube", "sub": "alice",
            "exp": i64::MAX});
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        )
        .unwrap();
        let credential = Credential::Bearer(crate::credential::Secret::new(token));
        let identity = oidc.authenticate(&credential).await.unwrap().unwrap();
        assert_eq!(identity.user().username, "alice");
        let century = std::time::Duration::from_secs(100 * 365 * 86_400);
        assert!(
            identity
                .expires_at()
                .is_some_and(|at| at > std::time::SystemTime::now() + century),
            "{:?}",
            identity.expires_at()
        );
    }
}
