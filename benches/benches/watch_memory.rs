//! Memory of the `authproxy` binary holding many watches: its resident set
//! (VmRSS) idle, with every watch held open, and after they closed.
//!
//! The API-server double (kube's 100 streams per HTTP/2 connection, watches
//! that send one event and stay open) runs in this process; authproxy runs
//! as a child process with static tokens for 100 users (the default per-user
//! cap is 100 long-running requests) and default limits. The watches travel
//! as HTTP/2 streams, 100 per client connection, so neither process needs
//! more than a few hundred file descriptors (no `ulimit -n` change needed;
//! with `WATCH_CONNECTIONS=N` set high, raise it with `ulimit -n` first).
//!
//! Run:
//! ```text
//! cargo build --release -p proxy-bin                      # system allocator
//! cargo bench -p authproxy-benches --bench watch_memory
//! ```
//! `WATCH_COUNT=N` sets the number of watches (default 10000);
//! `WATCH_AUTHPROXY=a,b,c` compares several builds of the binary (e.g. copies
//! built with `--features mimalloc` and `--features jemalloc`), each run in
//! turn; by default `target/release/authproxy` is used.
//! `WATCH_SETTLE_SECS` is how long after the last watch closed the "after
//! close" figure is taken (default 15, past jemalloc's 10 s decay); past 135
//! the upstream pool's idle connections (90 s idle timeout) are closed too.
//!
//! # Figures (10,000 watches, 2 loaded cores, debug builds of authproxy)
//!
//! | allocator | idle | peak | after close (15 s) | after close (150 s) |
//! | --- | --- | --- | --- | --- |
//! | glibc (system) | 21.5 MiB | 90.4 MiB | 90.4 MiB | 90.7 MiB (100 s) |
//! | mimalloc | 31.6 MiB | 122.4 MiB | 119.8 MiB | |
//! | jemalloc, no background thread | 25.1 MiB | 101.0 MiB | 85.0 MiB | |
//! | jemalloc, background threads (default build) | 25.2 MiB | 101.4 MiB | 61.9 MiB | 34.8 MiB |
//! | same, `_RJEM_MALLOC_CONF=dirty_decay_ms:1000` | 25.1 MiB | 79.6 MiB | 57.2 MiB (100 s) | 34.4 MiB |
//!
//! Release build, default features (jemalloc, background threads), quiet
//! machine: idle 12.6 MiB, peak 118.9 MiB (10.9 KiB per watch), 47.0 MiB 15 s
//! after close; with `WATCH_SETTLE_SECS=150`: 12.7 / 110.9 / 24.1 MiB. What
//! stayed was the upstream connections the watches needed (about 230 KiB
//! each) until their 90 s idle timeout. Since idle connections beyond
//! `upstream.maxIdleConnections` (2) close a second after their last stream
//! ended: idle 12.8 MiB, peak 107.4 MiB, 22.9 MiB 15 s after close (1.8×
//! idle).
//!
//! Every allocator stays far under 256 MiB at the peak (about 7 KiB per
//! held watch). Only jemalloc with background threads gives the memory back:
//! the default build of `authproxy` uses it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use authproxy_benches::process::{env_or, memory_kib, open_fds, release_binary};
use authproxy_tests::double::{self, DoubleConfig, UserInfo};
use authproxy_tests::pki::{self, TestPki};
use authproxy_tests::watchers::{open_watch, H2Clients};
use futures_util::future::join_all;

const PROXY_TOKEN: &str = "watch-bench-proxy-token";
const USERS: usize = 100;
const STREAMS_PER_CLIENT_CONNECTION: usize = 100;

struct Figures {
    idle: u64,
    peak: u64,
    high_water: u64,
    after_close: u64,
    open_seconds: f64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn run_one(binary: &Path, watches: usize, settle: Duration) -> anyhow::Result<Figures> {
    if !binary.is_file() {
        bail!(
            "{} is missing: run `cargo build --release -p proxy-bin` first",
            binary.display()
        );
    }
    let pki = TestPki::new()?;
    let server_cert = pki.issue_server("apiserver")?;
    let tls = pki::server_config(&server_cert, &[b"h2", b"http/1.1"])?;
    let mut config = DoubleConfig::new(tls).with_token(
        PROXY_TOKEN,
        UserInfo {
            username: authproxy_tests::PROXY_USER.into(),
            uid: String::new(),
            groups: vec!["system:serviceaccounts".into()],
            extra: Default::default(),
        },
    );
    config.watch_events = 2;
    config.watch_interval = Duration::from_secs(24 * 3600);
    let upstream = double::start(config).await?;

    let dir = tempfile::tempdir()?;
    let proxy_cert = pki.issue_server("proxy")?;
    let mut csv = String::new();
    for i in 0..USERS {
        csv.push_str(&format!("user-{i}-token,user-{i},{},\"devs\"\n", 3000 + i));
    }
    std::fs::write(dir.path().join("tokens.csv"), csv)?;
    std::fs::write(dir.path().join("proxy-token"), PROXY_TOKEN)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let yaml = format!(
        "listen: 127.0.0.1:{port}\n\
         tls: {{certFile: {cert}, keyFile: {key}}}\n\
         upstream: {{url: '{url}', caFile: {ca}, tokenFile: proxy-token}}\n\
         authentication:\n  staticTokens: {{file: tokens.csv}}\n\
         logging: {{level: warn}}\n",
        cert = proxy_cert.cert_path.display(),
        key = proxy_cert.key_path.display(),
        ca = pki.ca_path().display(),
        url = upstream.url(),
    );
    let config_path = dir.path().join("authproxy.yaml");
    std::fs::write(&config_path, yaml)?;
    let log = std::fs::File::create(dir.path().join("authproxy.log"))?;
    let mut child = tokio::process::Command::new(binary)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("authproxy exited at once")?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;

    let clients =
        authproxy_tests::wait_for(Duration::from_secs(20), "authproxy listening", || async {
            match H2Clients::connect_to(addr, pki.ca_pem(), 1).await {
                Ok(c) => Ok(Some(c)),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?;
    // One request so the upstream connection and the token cache exist.
    drop(open_watch(&clients, "user-0-token", Duration::from_secs(10)).await?);
    drop(clients);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, _) = memory_kib(pid)?;

    let connections = watches.div_ceil(STREAMS_PER_CLIENT_CONNECTION).max(1);
    let clients = H2Clients::connect_to(addr, pki.ca_pem(), connections).await?;
    let start = Instant::now();
    let opened = join_all((0..watches).map(|i| {
        let clients = clients.clone();
        async move {
            open_watch(
                &clients,
                &format!("user-{}-token", i % USERS),
                Duration::from_secs(300),
            )
            .await
        }
    }))
    .await;
    let open_seconds = start.elapsed().as_secs_f64();
    let mut held = Vec::with_capacity(watches);
    for (i, watch) in opened.into_iter().enumerate() {
        held.push(watch.with_context(|| format!("watch {i} of {watches}"))?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (peak, _) = memory_kib(pid)?;
    let peak_fds = open_fds(pid).unwrap_or(0);

    drop(held);
    drop(clients);
    // Every client connection closed (the upstream pool's connections stay
    // open until their idle timeout).
    authproxy_tests::wait_for(
        Duration::from_secs(60),
        "client connections closed",
        || async {
            let fds = open_fds(pid).unwrap_or(0);
            if fds + connections <= peak_fds {
                Ok(Some(()))
            } else {
                Err(format!("{fds} open file descriptors"))
            }
        },
    )
    .await?;
    tokio::time::sleep(settle).await;
    let (after_close, high_water) = memory_kib(pid)?;
    let _ = child.kill().await;
    Ok(Figures {
        idle,
        peak,
        high_water,
        after_close,
        open_seconds,
    })
}

fn main() -> anyhow::Result<()> {
    let watches = env_or("WATCH_COUNT", 10_000);
    let settle = Duration::from_secs(env_or("WATCH_SETTLE_SECS", 15) as u64);
    let binaries: Vec<PathBuf> = match std::env::var("WATCH_AUTHPROXY") {
        Ok(list) => list.split(',').map(PathBuf::from).collect(),
        Err(_) => vec![release_binary()?],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{watches} watches held through authproxy; RSS in MiB (after close: {}s after the last closed)",
        settle.as_secs()
    );
    println!(
        "{:<40} {:>8} {:>8} {:>8} {:>12} {:>10} {:>9}",
        "binary", "idle", "peak", "VmHWM", "after close", "KiB/watch", "open (s)"
    );
    for binary in binaries {
        let f = runtime.block_on(run_one(&binary, watches, settle))?;
        println!(
            "{:<40} {:>8.1} {:>8.1} {:>8.1} {:>12.1} {:>10.1} {:>9.1}",
            binary.display(),
            mib(f.idle),
            mib(f.peak),
            mib(f.high_water),
            mib(f.after_close),
            f.peak.saturating_sub(f.idle) as f64 / watches.max(1) as f64,
            f.open_seconds,
        );
    }
    Ok(())
}
