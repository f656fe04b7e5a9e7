//! An authenticator whose chain is replaced whole while the proxy runs (the
//! authentication config was edited): requests that already started finish
//! with the chain they began with, later ones use the new one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Authenticator, AuthnFuture, CacheStats, Chain};
use crate::credential::Credential;

/// A [`Chain`] that can be swapped for another. Put it in the proxy's chain
/// once; [`SwappableChain::swap`] replaces what it asks.
pub struct SwappableChain {
    current: ArcSwap<Chain>,
}

impl std::fmt::Debug for SwappableChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SwappableChain")
            .field(&*self.current.load())
            .finish()
    }
}

impl SwappableChain {
    /// Starts with `chain`.
    pub fn new(chain: Chain) -> Arc<Self> {
        Arc::new(SwappableChain {
            current: ArcSwap::from_pointee(chain),
        })
    }

    /// The chain in force.
    pub fn current(&self) -> Arc<Chain> {
        self.current.load_full()
    }

    /// Puts `chain` in force for every request that starts from now on.
    pub fn swap(&self, chain: Chain) {
        self.current.store(Arc::new(chain));
    }
}

impl Authenticator for SwappableChain {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        // Owned, so a swap during this request leaves it on its chain.
        let chain = self.current.load_full();
        Box::pin(async move { chain.authenticate(credential).await })
    }

    fn is_ready(&self) -> bool {
        self.current.load().is_ready()
    }

    fn name(&self) -> &str {
        "authentication"
    }

    fn cache_stats(&self) -> CacheStats {
        self.current.load().cache_stats()
    }

    fn counters(&self, found: &mut crate::counters::AuthnCounters) {
        Authenticator::counters(&**self.current.load(), found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::StaticTokens;
    use crate::credential::Secret;

    fn tokens(csv: &str) -> Chain {
        Chain::new(vec![Arc::new(
            StaticTokens::from_csv(csv, "inline").unwrap(),
        )])
    }

    #[tokio::test]
    async fn a_swapped_chain_answers_from_then_on() {
        let swappable = SwappableChain::new(tokens("one,alice,1,\"\"\n"));
        let ask = |token: &'static str| {
            let swappable = swappable.clone();
            async move {
                swappable
                    .authenticate(&Credential::Bearer(Secret::new(token)))
                    .await
                    .unwrap()
                    .map(|id| id.user().username.clone())
            }
        };
        assert_eq!(ask("one").await.as_deref(), Some("alice"));
        swappable.swap(tokens("two,bob,2,\"\"\n"));
        assert_eq!(ask("one").await, None);
        assert_eq!(ask("two").await.as_deref(), Some("bob"));
    }
}
