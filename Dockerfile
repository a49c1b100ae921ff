# rkms container image: `docker build -t rkms .` (or `make image`).
#
# Build: the locked dependency set is compiled first against stub sources, so
# that layer is reused until Cargo.toml or Cargo.lock change; then the real
# sources. Tests and benchmarks are not copied.
# Run: distroless (glibc, CA certificates, no shell) as the nonroot user,
# 65532:65532. Mount a config at /etc/rkms/config.toml, or use the demo
# config shipped here (deploy/image-config.toml: bearer token from
# RKMS_TOKEN, local development KMS and SQLite under the /var/lib/rkms volume).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Stubs for every target the manifest names, so cargo accepts it.
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/load.rs \
 && cargo build --release --locked --bin rkms \
 && rm -rf src
COPY src ./src
# The copied sources may be older than the stubs: touch them so cargo rebuilds.
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked --bin rkms \
 && mkdir -p /rootfs/var/lib/rkms

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/rkms /usr/local/bin/rkms
COPY deploy/image-config.toml /etc/rkms/config.toml
COPY --from=build --chown=65532:65532 /rootfs/var/lib/rkms /var/lib/rkms
USER 65532:65532
WORKDIR /var/lib/rkms
# The demo config keeps its keyring and SQLite database here.
VOLUME ["/var/lib/rkms"]
ENV RKMS_CONFIG=/etc/rkms/config.toml
# 8080: the API (server.listen); 9090: /metrics (server.metrics_listen).
EXPOSE 8080 9090
# SIGTERM drains in-flight requests (server.shutdown_grace_ms), then exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/rkms", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/rkms"]
CMD ["serve"]
