//! The `authproxy` binary as a child process of a bench: where it is, and
//! its memory and open files read from /proc.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context as _;

/// The value of environment variable `name`, or `default` when unset or
/// not a `T`.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `authproxy` in the bench's own target folder (`target/release` for
/// `cargo bench`): build it first with `cargo build --release -p proxy-bin`.
pub fn release_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("bench binary has no target folder")?;
    Ok(dir.join("authproxy"))
}

/// The benches' fixtures (`benches/fixtures/`) in the checkout being run,
/// found when a bench runs, not when it was built: cargo runs a bench in its
/// package's folder and names that folder in `CARGO_MANIFEST_DIR`, while
/// `env!("CARGO_MANIFEST_DIR")` names the checkout it was built in, which
/// a build folder kept across checkouts may no longer hold.
pub fn fixtures_dir() -> anyhow::Result<PathBuf> {
    let package = match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_dir()?,
    };
    let fixtures = package.join("fixtures");
    anyhow::ensure!(
        fixtures.join("jwks.json").is_file(),
        "{} holds no jwks.json: run the benches with cargo bench, or from benches/",
        fixtures.display()
    );
    Ok(fixtures)
}

/// The resident set size of `pid` and its peak (VmRSS, VmHWM), in KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{name} missing from /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// How many file descriptors `pid` has open.
pub fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}
