# One real-workload benchmark image (bench/workload/images.sh fills rootfs/
# from the host's Debian packages). Nothing is pulled.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin TZ=UTC
ENTRYPOINT ["/bin/sh", "/wl/roles.sh"]
CMD ["idle"]
