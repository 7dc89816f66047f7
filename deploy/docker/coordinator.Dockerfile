# fedmesh-coordinator: FROM scratch with a minimal root filesystem made by
# deploy/build-images.sh (stripped binary + the glibc libraries ldd lists).
FROM scratch
COPY rootfs/ /
# A directory of its own so that --chown applies to it (and so to the
# named volume Docker initialises from it).
COPY --chown=10001:10001 data/ /var/lib/
# Unprivileged: the coordinator needs no capability (ports > 1024).
USER 10001:10001
ENV FEDMESH_LOG=info
# 7443 gRPC + mutual TLS, 7444 plaintext grpc.health.v1, 9464 /metrics /status /healthz
EXPOSE 7443 7444 9464
VOLUME ["/var/lib/fedmesh"]
# The binary is its own probe: `status --url` exits non-zero when the
# metrics listener (metrics_listen = "0.0.0.0:9464") does not answer.
HEALTHCHECK --interval=10s --timeout=6s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/fedmesh-coordinator", "status", "--url", "http://127.0.0.1:9464"]
ENTRYPOINT ["/usr/local/bin/fedmesh-coordinator"]
CMD ["serve", "--config", "/etc/fedmesh/coordinator.toml"]
