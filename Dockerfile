# rkms container image: build with the locked dependency set, run as a
# non-root user on a slim base. `docker build -t rkms .`
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin rkms

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/rkms --create-home rkms
COPY --from=build /src/target/release/rkms /usr/local/bin/rkms
COPY config.toml /etc/rkms/config.toml
USER 10001
WORKDIR /var/lib/rkms
ENV RKMS_CONFIG=/etc/rkms/config.toml \
    RKMS__SERVER__LISTEN=0.0.0.0:8080 \
    RKMS__LOG__FORMAT=json
EXPOSE 8080
# SIGTERM drains in-flight requests (server.shutdown_grace_ms), then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/rkms"]
CMD ["serve"]
