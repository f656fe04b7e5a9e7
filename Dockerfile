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
# build caches, not layers.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p proxy-bin --bin authproxy \
    && install -D -m 0755 target/release/authproxy /out/authproxy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/authproxy /usr/local/bin/authproxy
# distroless "nonroot" is uid/gid 65532; numeric, so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/authproxy"]
CMD ["serve", "--config", "/etc/authproxy/config/authproxy.yaml"]
