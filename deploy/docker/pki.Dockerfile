# fedmesh-pki: the coordinator image plus a static busybox shell that runs
# pki.sh once (mesh CA, coordinator and node certificates into volumes).
ARG BASE=fedmesh-coordinator:dev
FROM ${BASE}
COPY busybox /bin/busybox
COPY pki.sh /usr/local/bin/pki.sh
# Root only to hand each volume's files to the uid that reads them.
USER 0:0
HEALTHCHECK NONE
ENTRYPOINT ["/bin/busybox", "sh", "/usr/local/bin/pki.sh"]
CMD []
