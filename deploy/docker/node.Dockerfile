# fedmesh-node: FROM scratch with a minimal root filesystem made by
# deploy/build-images.sh (stripped binary + glibc libraries + one static
# busybox copy named `wget`, used only by the health check).
FROM scratch
COPY rootfs/ /
# A directory of its own so that --chown applies to it (and so to the
# named volume Docker initialises from it).
COPY --chown=65534:65534 data/ /var/lib/
# Unprivileged by default: the host cgroup tree and /proc/<pid>/net/dev are
# world-readable, so reading them needs no root. Deployments that mount
# /proc with hidepid or a restricted cgroup tree run it as root instead
# (docker run --user 0 / runAsUser: 0) and still drop every capability.
USER 65534:65534
ENV FEDMESH_LOG=info
# 9101 /metrics and /healthz (metrics_listen = "0.0.0.0:9101")
EXPOSE 9101
VOLUME ["/var/lib/fedmesh"]
# (No -T: the static busybox 1.35 wget segfaults with it; --timeout bounds it.)
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9101/healthz"]
ENTRYPOINT ["/usr/local/bin/fedmesh-node"]
CMD ["run", "--config", "/etc/fedmesh/node.toml"]
