# A minimal glibc runtime made FROM scratch, for machines that cannot pull base images
# (scripts/compose-test.sh uses it in place of gcr.io/distroless/cc-debian12). The build
# context is a directory the script fills: rootfs/ holds the host's dynamic loader and the
# shared libraries that `ldd` lists for envoy and keygatectl, plus /etc/passwd and /etc/group.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
