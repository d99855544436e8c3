# syntax=docker/dockerfile:1
#
# Tollgate's release images, one target per binary:
#
#   docker buildx build --target operator -t tollgate/operator:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" .
#
# (likewise --target recorder, --target gateway). Stages: `build` compiles the
# three binaries; `rootfs-NAME` assembles a minimal root filesystem from Debian
# packages with images/rootfs.sh, the same recipe `make images` runs without a
# container engine; the final `NAME` stages are FROM scratch. No shell in them.
# images/test_images.py checks that these final stages and the archives of
# `make images` agree. See docs/images.md.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim

# --- build: the three binaries -----------------------------------------------
FROM ${RUST_IMAGE} AS build
ARG SOURCE_DATE_EPOCH=0
# debug: drop debug info (the release profile keeps line tables, three quarters of
# the binary; the symbol table stays). none: ship the binaries as cargo built them.
ARG STRIP=debug
WORKDIR /src
COPY . .
# --remap-path-prefix keeps the build directory out of the binaries, and
# -ffile-prefix-map does the same for the C they link (SQLite, AWS-LC).
ENV CARGO_TERM_COLOR=never \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo" \
    CFLAGS="-ffile-prefix-map=/src=. -ffile-prefix-map=/usr/local/cargo=cargo"
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
      -p tollgate-operator --bin tollgate-operator \
      -p tollgate-recorder --bin tollgate-recorder \
      -p tollgate-gateway --bin tollgate-gateway \
 && mkdir -p /out \
 && for n in operator recorder gateway; do \
      install -m 0755 "target/release/tollgate-$n" "/out/tollgate-$n"; \
      if [ "$STRIP" = debug ]; then objcopy --strip-debug "/out/tollgate-$n"; fi; \
    done \
 && touch -d "@${SOURCE_DATE_EPOCH}" /out/*

# --- rootfs: images/rootfs.sh, the one recipe ----------------------------------
FROM ${DEBIAN_IMAGE} AS rootfs-base
RUN apt-get update -q
COPY images/rootfs.sh /usr/local/bin/tollgate-rootfs.sh

# Each rootfs stage also checks that its binary resolves every library inside the
# rootfs (--check); the final stage COPYs the binary itself.
FROM rootfs-base AS rootfs-operator
ARG SOURCE_DATE_EPOCH=0
RUN --mount=type=bind,from=build,source=/out,target=/out \
    --mount=type=cache,target=/root/.cache/tollgate/images \
    tollgate-rootfs.sh --check /out/tollgate-operator operator /rootfs

FROM rootfs-base AS rootfs-recorder
ARG SOURCE_DATE_EPOCH=0
RUN --mount=type=bind,from=build,source=/out,target=/out \
    --mount=type=cache,target=/root/.cache/tollgate/images \
    tollgate-rootfs.sh --check /out/tollgate-recorder recorder /rootfs

FROM rootfs-base AS rootfs-gateway
ARG SOURCE_DATE_EPOCH=0
RUN --mount=type=bind,from=build,source=/out,target=/out \
    --mount=type=cache,target=/root/.cache/tollgate/images \
    tollgate-rootfs.sh --check /out/tollgate-gateway gateway /rootfs

# --- final images ----------------------------------------------------------------
FROM scratch AS operator
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://github.com/tollgate-dev/tollgate
COPY --from=rootfs-operator /rootfs/ /
COPY --from=build /out/tollgate-operator /usr/local/bin/tollgate-operator
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="tollgate-operator" \
      org.opencontainers.image.description="Tollgate operator: reconciles the policy CRDs and serves the admission webhooks that inject the gateway sidecar." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
WORKDIR /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tollgate-operator"]

FROM scratch AS recorder
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://github.com/tollgate-dev/tollgate
COPY --from=rootfs-recorder /rootfs/ /
COPY --from=build /out/tollgate-recorder /usr/local/bin/tollgate-recorder
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="tollgate-recorder" \
      org.opencontainers.image.description="Tollgate recorder: verifies and stores the signed receipts gateways emit." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
WORKDIR /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tollgate-recorder"]

# The sidecar runs as the injected gateway UID (admission GATEWAY_UID); the
# init-network container overrides it with runAsUser 0 and NET_ADMIN/NET_RAW and
# runs iptables-restore/-save (nf_tables backend) from /usr/sbin.
FROM scratch AS gateway
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE_URL=https://github.com/tollgate-dev/tollgate
COPY --from=rootfs-gateway /rootfs/ /
COPY --from=build /out/tollgate-gateway /usr/local/bin/tollgate-gateway
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="tollgate-gateway" \
      org.opencontainers.image.description="Tollgate gateway: the injected LLM egress sidecar, and its init-network init container (iptables, nf_tables backend)." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
WORKDIR /
USER 15080:15080
ENTRYPOINT ["/usr/local/bin/tollgate-gateway"]
