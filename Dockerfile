# syntax=docker/dockerfile:1
# The authproxy container image.
#
#   docker build -t authproxy:0.1.0 .
#
# Builder and runtime share one Debian release (bookworm = debian12), so the
# binary needs no newer glibc than the runtime has. The runtime is distroless
# "cc": glibc, libgcc_s, CA certificates and nothing else (no shell, no
# package manager), running as uid 65532. The binary only writes to stderr,
# so the root filesystem can be mounted read-only.
# tests/tests/image.rs checks the binary's shared libraries against this list.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
# Exactly the dependencies of Cargo.lock; the registry and target folders are
# build caches, not layers. By default the binary is optimized with a profile
# of itself under load (scripts/pgo-build.sh: about three release builds'
# time; it installs wrk and llvm from Debian). `--build-arg PGO=0` builds the
# plain `dist` binary (fat LTO, stripped) instead.
ARG PGO=1
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
        scripts/pgo-build.sh && install -D -m 0755 target/pgo/authproxy /out/authproxy; \
    else \
        cargo build --profile dist --locked -p proxy-bin --bin authproxy \
        && install -D -m 0755 target/dist/authproxy /out/authproxy; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/authproxy /usr/local/bin/authproxy
# distroless "nonroot" is uid/gid 65532; numeric, so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/authproxy"]
CMD ["serve", "--config", "/etc/authproxy/config/authproxy.yaml"]
