//! What 10,000 revocations cost a process: the memory of the set held, the
//! time a token's check takes (revoked or not), and the time to take in one
//! shard from a watch event.
//!
//! Run: `cargo bench -p authproxy-benches --bench revocations`. Target: the
//! check stays a hash lookup (well under a microsecond) at 10,000 entries.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use proxy_core::authn::revocation::{Entry, Revocations, Revoked, SHARDS};

const ENTRIES: usize = 10_000;
/// One in ten revocations is a user's, the others a session's.
const USERS_EVERY: usize = 10;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn session(i: usize) -> String {
    format!("sess{i:018}")
}

/// The shards' data as the store holds it.
fn shards() -> Vec<BTreeMap<String, String>> {
    let mut shards = vec![BTreeMap::new(); SHARDS];
    for i in 0..ENTRIES {
        let revoked = if i % USERS_EVERY == 0 {
            Revoked::User {
                user: format!("user{i}"),
                before: now(),
            }
        } else {
            Revoked::Session {
                session: session(i),
            }
        };
        let entry = Entry {
            revoked,
            at_ms: 0,
            expires: now() + 8 * 3600,
            by: "admin".into(),
        };
        shards[entry.shard()].insert(entry.key(), serde_json::to_string(&entry).expect("json"));
    }
    shards
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn bench(c: &mut Criterion) {
    let data = shards();
    let before = rss_bytes();
    let set = Revocations::new(true, false);
    set.store_reached();
    for (i, shard) in data.iter().enumerate() {
        set.replace_shard(i, shard);
    }
    let after = rss_bytes();
    assert_eq!(set.len(), ENTRIES);
    eprintln!(
        "revocations: {ENTRIES} entries held in {} KiB of RSS ({} bytes each)",
        after.saturating_sub(before) / 1024,
        after.saturating_sub(before) / ENTRIES as u64
    );
    let empty = Revocations::new(true, false);
    empty.store_reached();
    let issued = now() + 1;
    c.bench_function("check/empty-set", |b| {
        b.iter(|| black_box(&empty).check(Some(black_box("sess-not-revoked-000")), "alice", issued))
    });
    c.bench_function("check/10k-not-revoked", |b| {
        b.iter(|| black_box(&set).check(Some(black_box("sess-not-revoked-000")), "alice", issued))
    });
    let revoked = session(1);
    c.bench_function("check/10k-revoked-session", |b| {
        b.iter(|| black_box(&set).check(Some(black_box(revoked.as_str())), "alice", issued))
    });
    c.bench_function("watch-event/replace-one-shard-of-625", |b| {
        b.iter(|| set.replace_shard(3, black_box(&data[3])))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
