//! Benchmarks of authproxy; the programs are under `benches/`:
//!
//! - `cargo bench -p authproxy-benches --bench hot_path`: the per-request cost of
//!   the proxy's own work (credential parsing, authentication on a cache hit,
//!   header rewrite), with criterion;
//! - `cargo bench -p authproxy-benches --bench load`: requests per second and
//!   latency of one upstream reached directly, through a bare pass-through
//!   proxy, and through authproxy, with the ratio authproxy / pass-through.
//!
//! [`process`] holds what the benches that run the `authproxy` binary as a
//! child (`watch_memory`, `soak`) share.

pub mod process;
