//! Distributed claims (OpenID Connect Core 1.0 section 5.6.2) for the
//! groups claim, resolved as kube-apiserver resolves them: when the ID token
//! has no groups claim but `_claim_names` names a source for it in
//! `_claim_sources`, the source's `endpoint` (HTTPS, reached with the
//! issuer's CA, the source's `access_token` as the bearer credential when it
//! has one) answers with a JWT; kube verifies that JWT as it verifies an ID
//! token, so it must be signed by one of the issuer's keys with an allowed
//! algorithm, name the issuer as `iss` and a configured audience in `aud`,
//! and be within its times; its groups claim is then taken as the token's.
//! Anything else refuses the token: a claim the proxy cannot confirm is
//! never guessed. (kube also verifies a source JWT from another issuer, by
//! that issuer's discovery; the proxy accepts only the token's own issuer.)

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, decode_header, Validation};
use serde_json::{Map, Value};

use super::claims::{check_standard_types, check_times, matched_audiences};
use super::config::IssuerSettings;
use super::keys::KeySet;
use crate::authn::AuthnError;

fn refused(message: impl Into<String>) -> AuthnError {
    AuthnError::Invalid(format!("distributed claim: {}", message.into()))
}

/// Fills `claim` in `claims` from its distributed source, if the token has
/// one and not the claim itself.
pub(crate) async fn resolve(
    claims: &mut Map<String, Value>,
    claim: &str,
    settings: &IssuerSettings,
    keys: &KeySet,
) -> Result<(), AuthnError> {
    if claims.contains_key(claim) {
        return Ok(());
    }
    let Some(source_name) = claims
        .get("_claim_names")
        .and_then(|names| names.get(claim))
        .and_then(Value::as_str)
    else {
        return Ok(());
    };
    let source = claims
        .get("_claim_sources")
        .and_then(|sources| sources.get(source_name))
        .and_then(Value::as_object)
        .ok_or_else(|| refused(format!("source {source_name:?} is missing")))?;
    // Aggregated claims (a `JWT` member) are not resolved, as kube does not.
    let endpoint = source
        .get("endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| refused(format!("source {source_name:?} has no endpoint")))?;
    let bearer = source.get("access_token").and_then(Value::as_str);
    let body = keys
        .get_with(endpoint, "application/jwt", bearer)
        .await
        .map_err(|e| refused(format!("fetching the source failed: {e}")))?;
    let jwt = std::str::from_utf8(&body)
        .map_err(|_| refused("the source did not answer with a JWT"))?
        .trim();
    let header = decode_header(jwt).map_err(|_| refused("the source did not answer with a JWT"))?;
    if !settings.algorithms.contains(&header.alg) {
        return Err(refused(format!(
            "the source's JWT is signed with {:?}, which is not allowed",
            header.alg
        )));
    }
    let key = keys.key_for(header.kid.as_deref(), header.alg).await?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&settings.issuer_url]);
    // aud and the times are checked below, as kube checks an ID token's
    validation.validate_aud = false;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_required_spec_claims(&["iss"]);
    let data = decode::<Map<String, Value>>(jwt, &key, &validation)
        .map_err(|e| refused(format!("the source's JWT does not verify: {e}")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    check_standard_types(&data.claims).map_err(|e| refused(e.to_string()))?;
    check_times(&data.claims, now, settings.clock_skew.as_secs_f64())
        .map_err(|e| refused(format!("the source's JWT: {e}")))?;
    if matched_audiences(&data.claims, &settings.audiences).is_empty() {
        return Err(refused(
            "the source's JWT does not name a configured audience",
        ));
    }
    let value = data
        .claims
        .get(claim)
        .cloned()
        .ok_or_else(|| refused(format!("the source's JWT has no {claim:?} claim")))?;
    claims.insert(claim.to_owned(), value);
    Ok(())
}
