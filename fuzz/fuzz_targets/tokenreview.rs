//! TokenReview request bodies, as kube-apiserver's webhook client sends them:
//! parsing and reviewing never panic, and a refused token gets no user and
//! no audiences.
#![no_main]

use std::sync::{Arc, OnceLock};

use authproxy_fuzz::block_on;
use libfuzzer_sys::fuzz_target;
use proxy_core::authn::{Chain, StaticTokens};
use proxy_core::tokenreview::{parse, review};

fn chain() -> &'static Chain {
    static CHAIN: OnceLock<Chain> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let tokens = StaticTokens::from_csv("s3cret-token,alice,1001,\"devs,ops\"\n", "fuzz")
            .expect("fixture tokens");
        Chain::new(vec![Arc::new(tokens)])
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse(data) else { return };
    let answer = block_on(review(chain(), &[], request));
    if !answer.status.authenticated {
        assert!(answer.status.user.is_none());
        assert!(answer.status.audiences.is_empty());
    }
    serde_json::to_vec(&answer).expect("a TokenReview answer serializes");
});
