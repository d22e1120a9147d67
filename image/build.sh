#!/bin/sh
# Build the bridge image from ./Containerfile without a container daemon, then smoke-test it.
#
#   image/build.sh IMAGE            (run from the repository root; `make image` does this)
#
# buildah (a Debian package) runs the Containerfile's steps with vfs storage kept under
# $IMAGE_WORK (default build/image) and chroot isolation, so neither a daemon nor privileges beyond
# root's are needed. The base image:
#   IMAGE_BASE=<image>    use that image (e.g. docker.io/library/python:3.11-slim-bookworm, the
#                         Containerfile's default) when a registry of images is reachable;
#   IMAGE_BASE unset      bootstrap an equivalent base here: a minimal Debian bookworm root made by
#                         debootstrap from apt's configured mirror, with python3 (+ venv module)
#                         and ca-certificates, imported `FROM scratch` (built once, then reused).
# Then image/smoke.sh runs the built image's entrypoint in a chroot as the image's user.
set -eu

IMAGE=${1:?usage: image/build.sh IMAGE}
WORK=${IMAGE_WORK:-build/image}
SUITE=${IMAGE_SUITE:-bookworm}
LOCAL_BASE=localhost/devicefabric-base:$SUITE
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
BUILDAH="buildah --storage-driver vfs --root $WORK/storage --runroot $WORK/run"

# The first deb URI of apt's configured sources (one-line or deb822 format).
debian_mirror() {
    grep -rhoE '^(deb[[:space:]]+(\[[^]]*\][[:space:]]+)?|URIs:[[:space:]]*)[a-z]+://[^[:space:]]+' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -v security | sed -E 's/.*[[:space:]]([a-z]+:\/\/)/\1/' | head -n 1
}

bootstrap_base() {
    if $BUILDAH inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
        echo "== base $LOCAL_BASE: already built"
        return
    fi
    mirror=${IMAGE_MIRROR:-$(debian_mirror)}
    [ -n "$mirror" ] || { echo "image/build.sh: no Debian mirror in /etc/apt/sources.list*; set IMAGE_MIRROR" >&2; exit 2; }
    rootfs=$WORK/rootfs
    rm -rf "$rootfs"
    echo "== debootstrap $SUITE from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$mirror"
    # What the slim images leave out: package lists and caches, documentation, logs.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/var/log/* "$rootfs"/dev/*
    tar --numeric-owner -C "$rootfs" -cf "$WORK/base.tar" .
    printf 'FROM scratch\nADD base.tar /\nENV LANG=C.UTF-8\nCMD ["python3"]\n' >"$WORK/Containerfile.base"
    $BUILDAH bud --isolation chroot -f "$WORK/Containerfile.base" -t "$LOCAL_BASE" "$WORK"
    rm -rf "$rootfs" "$WORK/base.tar"
}

# pip inside the build trusts what pip here trusts (e.g. a proxy's CA): mount this machine's CA
# bundle read-only for the RUN steps only; nothing of it is committed to the image.
mounts=""
cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
    printf '[global]\ncert = /run/devicefabric-build/ca.crt\n' >"$WORK/pip.conf"
    mounts="-v $cert:/run/devicefabric-build/ca.crt:ro -v $WORK/pip.conf:/etc/pip.conf:ro"
fi

base=${IMAGE_BASE:-}
if [ -z "$base" ]; then
    bootstrap_base
    base=$LOCAL_BASE
fi
echo "== build $IMAGE from $base"
start=$(date +%s)
# shellcheck disable=SC2086 # $mounts and $BUILDAH are word lists
$BUILDAH bud --isolation chroot --layers=false $mounts --build-arg "BASE=$base" \
    -f Containerfile -t "$IMAGE" .
echo "== built $IMAGE in $(($(date +%s) - start)) s"
$BUILDAH images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"
IMAGE_WORK=$WORK sh image/smoke.sh "$IMAGE"
