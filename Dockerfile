# hub node image.
#
# With a registry (the ordinary way):
#     docker build -t hub .
# Offline, from a binary built on this host and a base made from the host's
# own libraries (no image is pulled):
#     deploy/build-image.sh            # = cargo build --release + deploy/base-image.sh
#                                      #   + docker build --build-arg BUILDER=hub-base:local
#                                      #                  --build-arg BASE=hub-base:local
#
# The container runs `hub serve` as uid 10001 with its data in the volume
# /var/lib/hub and certificates mounted read-only at /etc/hub/certs; every
# setting is a HUB_* variable (see the README's configuration table).

ARG BUILDER=rust:1-bookworm
ARG BASE=debian:bookworm-slim

FROM ${BUILDER} AS build
WORKDIR /src
COPY . .
# A binary prebuilt on the host (offline builds) is used as it is;
# otherwise build one here.
RUN if [ -x .prebuilt/hub ]; then cp .prebuilt/hub /hub; \
    else CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=true \
         cargo build --release --locked --bin hub && cp target/release/hub /hub; fi

FROM ${BASE}
COPY --from=build /hub /usr/local/bin/hub
RUN mkdir -p /var/lib/hub /etc/hub/certs \
    && chown 10001:10001 /var/lib/hub /etc/hub/certs \
    && chmod 0700 /var/lib/hub
USER 10001:10001
ENV HUB_DATA_DIR=/var/lib/hub \
    HUB_CERTS=/etc/hub/certs \
    HUB_HTTP=0.0.0.0:8080 \
    HUB_LISTEN=0.0.0.0:7000 \
    HUB_LOG_FORMAT=json
VOLUME ["/var/lib/hub"]
EXPOSE 8080/tcp 7000/udp 7373/udp
# `hub probe` asks this container's own node for /ready (HTTPS and the CA
# from HUB_CERTS when HUB_HTTP_TLS is on).
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["hub", "probe"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["hub"]
CMD ["serve"]
