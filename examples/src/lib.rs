//! Small programs that embed `proxy-core`; they live in `examples/examples/`:
//!
//! - `embed_in_hyper`: the whole proxy stack served by a hyper server;
//! - `embed_in_axum`: the proxy as an axum router's fallback, beside routes of its own;
//! - `custom_authenticator`: an `Authenticator` of your own in a `Chain`.
//!
//! Run one with `cargo run -p authproxy-examples --example NAME`.
