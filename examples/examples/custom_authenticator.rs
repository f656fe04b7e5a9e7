//! A custom `Authenticator` in a `Chain` ahead of static tokens.
//!
//! The toy authenticator accepts Bearer tokens of the form `demo:<name>` for a
//! fixed set of names and maps them to a user in group `demo-users`; every
//! other token passes on (`Ok(None)`) to the static tokens behind it. Runs
//! without a network:
//!
//! `cargo run -p authproxy-examples --example custom_authenticator`
//!
//! proxy-core features: none (a custom authenticator, static tokens and the layers are always
//! built: `default-features = false` is enough).

use std::sync::Arc;

use proxy_core::authn::{AuthnFuture, StaticTokens};
use proxy_core::credential::Secret;
use proxy_core::{Authenticator, AuthnError, Chain, Credential, Identity, UserInfo};

/// Accepts `demo:<name>` for known names.
struct DemoTokens {
    known: Vec<&'static str>,
}

impl Authenticator for DemoTokens {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        Box::pin(async move {
            let Credential::Bearer(token) = credential else {
                return Ok(None); // not our kind of credential
            };
            let Some(name) = token.expose().strip_prefix("demo:") else {
                return Ok(None); // not our token format: let the next one try
            };
            if !self.known.contains(&name) {
                // Ours, and bad: the chain stops here with a 401.
                return Err(AuthnError::Invalid(format!("unknown demo user {name:?}")));
            }
            Ok(Some(Identity::new(UserInfo {
                username: format!("demo:{name}"),
                uid: None,
                groups: vec!["demo-users".into()],
                extra: Default::default(),
            })))
        })
    }

    fn name(&self) -> &str {
        "demo-tokens"
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let statics = StaticTokens::from_csv("s3cret,alice,1001,\"devs\"\n", "inline")?;
    let chain = Chain::new(vec![
        Arc::new(DemoTokens {
            known: vec!["carol", "dave"],
        }),
        Arc::new(statics),
    ]);
    for token in ["demo:carol", "demo:mallory", "s3cret", "nobody-knows-me"] {
        let credential = Credential::Bearer(Secret::new(token));
        let outcome = match chain.authenticate(&credential).await {
            Ok(Some(identity)) => {
                let user = identity.user();
                format!("user {} in groups {:?}", user.username, user.groups)
            }
            Ok(None) => "nobody claimed it (401)".to_string(),
            Err(error) => format!("refused: {error} (status {})", error.to_status().code),
        };
        // The token is printed here only because it is a made-up example.
        println!("{token:>16} -> {outcome}");
    }
    Ok(())
}
