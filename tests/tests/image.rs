//! What the container image relies on (docker is not needed to check it):
//! the binary loads only the shared libraries the distroless `cc` runtime
//! provides, the builder compiles on the runtime's Debian release, and the
//! image runs the binary as a non-root user with the CA bundle where the
//! binary reads it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _};
use authproxy_tests::{authproxy_binary, output_text};

/// Libraries of distroless `cc-debian12`: glibc (libc6: libc, libm and the
/// compatibility stubs libpthread, libdl, librt), libgcc_s, and the loader.
const RUNTIME_LIBRARIES: &[&str] = &[
    "linux-vdso.so.1",
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libgcc_s.so.1",
];

fn root() -> PathBuf {
    authproxy_tests::package_dir().join("..")
}

/// The shared libraries `binary` needs, by name, from `ldd`.
fn needed_libraries(binary: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (Debian package libc-bin)")?;
    ensure!(
        out.status.success(),
        "ldd {}: {}",
        binary.display(),
        output_text(&out)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn is_runtime_library(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    RUNTIME_LIBRARIES.contains(&file) || file.starts_with("ld-linux")
}

#[test]
fn binary_needs_only_libraries_the_runtime_image_provides() -> anyhow::Result<()> {
    // The debug binary of this build links the same libraries as the dist
    // binary the image ships; release, dist and PGO binaries, when built,
    // are checked too.
    let mut binaries: Vec<PathBuf> = vec![authproxy_binary()?];
    for built in [
        "target/release/authproxy",
        "target/dist/authproxy",
        "target/pgo/authproxy",
    ] {
        let built = root().join(built);
        if built.is_file() {
            binaries.push(built);
        }
    }
    for binary in binaries {
        let needed = needed_libraries(&binary)?;
        ensure!(
            needed.iter().any(|l| l == "libc.so.6"),
            "ldd of {} lists no libc: {needed:?}",
            binary.display()
        );
        let foreign: Vec<&String> = needed.iter().filter(|l| !is_runtime_library(l)).collect();
        if !foreign.is_empty() {
            bail!(
                "{} needs {foreign:?}, which gcr.io/distroless/cc-debian12 does not have: the image could not start it",
                binary.display()
            );
        }
    }
    Ok(())
}

#[test]
fn the_library_check_refuses_what_the_runtime_lacks() -> anyhow::Result<()> {
    // curl links libcurl, OpenSSL and zlib: none of them is in the runtime image
    authproxy_tests::require_tool("curl")?;
    let curl = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("curl"))
        .find(|path| path.is_file())
        .context("curl on PATH")?;
    let foreign: Vec<String> = needed_libraries(&curl)?
        .into_iter()
        .filter(|l| !is_runtime_library(l))
        .collect();
    ensure!(
        foreign.iter().any(|l| l.starts_with("libcurl")),
        "{foreign:?}"
    );
    for foreign in [
        "libssl.so.3",
        "libcrypto.so.3",
        "libz.so.1",
        "libldap-2.5.so.0",
    ] {
        ensure!(!is_runtime_library(foreign), "{foreign}");
    }
    ensure!(is_runtime_library("/lib64/ld-linux-x86-64.so.2"));
    Ok(())
}

/// The `FROM` lines of the Dockerfile, in order.
fn stages(dockerfile: &str) -> Vec<&str> {
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("FROM "))
        .collect()
}

#[test]
fn image_builds_on_the_runtime_release_and_runs_non_root() -> anyhow::Result<()> {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile"))?;
    let stages = stages(&dockerfile);
    ensure!(
        stages.len() == 2,
        "want a builder and a runtime stage: {stages:?}"
    );
    // glibc of the builder must not be newer than the runtime's: both Debian 12
    ensure!(
        stages[0].contains("rust:")
            && stages[0].contains("-bookworm")
            && stages[0].ends_with(" AS builder"),
        "builder: {}",
        stages[0]
    );
    ensure!(
        stages[1].starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "runtime: {}",
        stages[1]
    );
    ensure!(
        dockerfile.contains("cargo build --profile dist --locked"),
        "the builder must use Cargo.lock's versions"
    );
    // The profile-guided build, the default, too: every cargo command in it.
    ensure!(
        dockerfile.contains("scripts/pgo-build.sh"),
        "the builder makes the profile-guided binary by default"
    );
    let pgo = std::fs::read_to_string(root().join("scripts/pgo-build.sh"))?;
    for command in pgo
        .lines()
        .filter(|l| l.contains("cargo build") || l.contains("cargo bench"))
    {
        ensure!(
            command.contains("--locked"),
            "scripts/pgo-build.sh must use Cargo.lock's versions: {command}"
        );
    }
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    ensure!(lines.contains(&"USER 65532:65532"), "numeric non-root user");
    ensure!(
        lines.contains(&r#"ENTRYPOINT ["/usr/local/bin/authproxy"]"#),
        "exec-form entrypoint (there is no shell)"
    );
    // distroless ships Debian's CA bundle where the binary reads it
    assert_eq!(
        proxy_core::tls::SYSTEM_CA_BUNDLE,
        "/etc/ssl/certs/ca-certificates.crt"
    );
    let ignore = std::fs::read_to_string(root().join(".dockerignore"))?;
    for excluded in ["target/", ".git/", "**/node_modules/"] {
        ensure!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore must leave out {excluded}"
        );
    }
    Ok(())
}

/// The settings of `[profile.<name>]` in the workspace's Cargo.toml, as
/// `key = value` text.
fn profile(name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let header = format!("[profile.{name}]");
    let mut lines = manifest.lines().skip_while(|l| l.trim() != header);
    ensure!(lines.next().is_some(), "Cargo.toml has no {header}");
    Ok(lines
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// The largest shipped binary allowed: every node pulling the image pays
/// for code, not symbols.
const MAX_SHIPPED_BYTES: u64 = 20 << 20;

#[test]
fn the_image_ships_the_stripped_whole_program_build() -> anyhow::Result<()> {
    let dist = profile("dist")?;
    for wanted in [
        ("inherits", "\"release\""),
        ("lto", "\"fat\""),
        ("codegen-units", "1"),
        ("strip", "true"),
        ("debug", "false"),
    ] {
        ensure!(
            dist.iter().any(|(k, v)| (k.as_str(), v.as_str()) == wanted),
            "[profile.dist] lacks {} = {}: {dist:?}",
            wanted.0,
            wanted.1
        );
    }
    // `cargo install` and the benches build `release`: it stays quick.
    let release = profile("release")?;
    ensure!(
        release.iter().any(|(k, v)| k == "lto" && v == "\"thin\""),
        "{release:?}"
    );
    // What the image and the PGO build compile is the dist profile.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile"))?;
    ensure!(dockerfile.contains("--profile dist") && dockerfile.contains("target/dist/authproxy"));
    let pgo = std::fs::read_to_string(root().join("scripts/pgo-build.sh"))?;
    ensure!(
        !pgo.contains("--release") && pgo.matches("--profile dist").count() == 2,
        "{pgo}"
    );
    // A dist binary built here (the image's, or `cargo build --profile
    // dist`) is small and has no symbol table.
    for binary in [
        root().join("target/dist/authproxy"),
        root().join("target/pgo/authproxy"),
    ] {
        if !binary.is_file() {
            continue;
        }
        let bytes = std::fs::read(&binary)?;
        ensure!(
            (bytes.len() as u64) <= MAX_SHIPPED_BYTES,
            "{}: {} bytes, over {MAX_SHIPPED_BYTES}",
            binary.display(),
            bytes.len()
        );
        ensure!(
            !bytes.windows(8).any(|w| w == b".symtab\0"),
            "{} still has a symbol table",
            binary.display()
        );
    }
    Ok(())
}
