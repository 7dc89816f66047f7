# fedmesh-workload: static busybox for the demo workloads (httpd, periodic
# jobs, and the misbehaving container), see workload.sh.
FROM scratch
COPY busybox /bin/busybox
COPY workload.sh /workload.sh
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -m 1777 /tmp"]
USER 65534:65534
ENTRYPOINT ["/bin/sh", "/workload.sh"]
CMD ["idle"]
