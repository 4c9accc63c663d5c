# keygatectl's container image.
#
# Build from the repository root (BuildKit: the default `docker build` since Docker 23, and
# `docker compose`), so that keygatectl.Dockerfile.dockerignore beside this file applies:
#
#   docker build -f deploy/docker/keygatectl.Dockerfile -t keygate/keygatectl:dev .
#
# Where the binary comes from (KEYGATECTL_FROM):
#   source    compile it in RUST_IMAGE (the default; needs only Docker and the source tree)
#   prebuilt  take target/release/keygatectl as `make build` left it (what the compose stack
#             does). The binary links glibc dynamically: build it on a system whose glibc is
#             no newer than BASE_IMAGE's (Debian 12: 2.36), or use `source`.
# Every image is a build argument, so a registry mirror or a locally made base works too
# (scripts/compose-test.sh builds this file with a base image made FROM scratch).
#
# The server listens on 127.0.0.1:8080 unless told otherwise (`serve --listen`), and keeps
# its SQLite database in /var/lib/keygate (mount a volume there). It runs as uid 65532.
# `keygatectl probe http://127.0.0.1:8080/readyz` is its health check (no curl needed).
#
# A second target, `envoy` (`--target envoy`), is ENVOY_IMAGE with the same keygatectl
# binary added, so that Envoy's container can health-check its admin /ready the same way
# (Envoy's images may have no curl); the compose stack builds it.

ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40-latest
ARG KEYGATECTL_FROM=source

# --- the binary, compiled here -------------------------------------------------------------
FROM ${RUST_IMAGE} AS source
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY core core
COPY control-plane control-plane
COPY sync-service sync-service
RUN cargo build --release --locked -p keygatectl \
 && mkdir -p /out/data \
 && cp target/release/keygatectl /out/keygatectl

# --- the binary, as `make build` left it ---------------------------------------------------
FROM scratch AS prebuilt
COPY target/release/keygatectl /out/keygatectl
# The (empty) database directory; WORKDIR creates it.
WORKDIR /out/data

FROM ${KEYGATECTL_FROM} AS binary

# --- Envoy with keygatectl beside it, for `keygatectl probe` (--target envoy) ---------------
FROM ${ENVOY_IMAGE} AS envoy
COPY --from=binary /out/keygatectl /usr/local/bin/keygatectl

# --- the image (the default target) -------------------------------------------------------
FROM ${BASE_IMAGE} AS keygatectl
COPY --from=binary /out/keygatectl /usr/local/bin/keygatectl
# Owned by the user the server runs as, so that a fresh named volume mounted here is too.
COPY --from=binary --chown=65532:65532 /out/data/ /var/lib/keygate/
ENV KEYGATE_DATABASE=/var/lib/keygate/keygate.db
USER 65532:65532
WORKDIR /var/lib/keygate
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keygatectl"]
CMD ["serve", "--listen", "127.0.0.1:8080"]
