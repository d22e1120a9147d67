#!/bin/sh
# Smoke-test a built image without a daemon: run its entrypoint in a chroot of its root
# filesystem, as the user, environment and working directory its configuration names.
#
#   image/smoke.sh IMAGE     (storage as image/build.sh: vfs under $IMAGE_WORK, default build/image)
#
# Checks: the configured user is not root and is the one the processes run as; `--version` prints
# the package version; `bridge run --help` works (the bridge extra imports); no compiler or pip
# is left in the image; `devicefabric up` (embedded broker + bridge) runs as that user until
# `devicefabric status` exits 0, then stops cleanly on SIGINT. The chroot shares this machine's
# network: the ports are free loopback ports. Exits non-zero on the first failure.
set -eu

IMAGE=${1:?usage: image/smoke.sh IMAGE}
WORK=$(cd "${IMAGE_WORK:-build/image}" && pwd)
BUILDAH="buildah --storage-driver vfs --root $WORK/storage --runroot $WORK/run"

config() { $BUILDAH inspect --type image --format "$1" "$IMAGE"; }
user=$(config '{{.OCIv1.Config.User}}')
entrypoint=$(config '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}')
workdir=$(config '{{.OCIv1.Config.WorkingDir}}')
env=$(config '{{range .OCIv1.Config.Env}}{{.}} {{end}}')
echo "image $IMAGE: user=$user entrypoint=[$entrypoint] workdir=$workdir"
case "$user" in "" | 0 | 0:* | root | root:*) echo "FAIL: the image runs as root" >&2; exit 1 ;; esac

container=$($BUILDAH from "$IMAGE")
trap '$BUILDAH rm "$container" >/dev/null' EXIT
root=$($BUILDAH mount "$container")

# A private mount namespace: /dev is bound into the root for the command and gone afterwards.
in_image() {
    # shellcheck disable=SC2086 # $env is a word list of NAME=VALUE
    unshare --mount --pid --fork --kill-child sh -c '
        root=$1; shift; mount --rbind /dev "$root/dev"; exec chroot "$@"' \
        sh "$root" --userspec="$user" "$root" \
        /usr/bin/env -i $env sh -c 'cd "$0" && exec "$@"' "$workdir" "$@"
}

echo "\$ id (in the image)"
in_image id
uid=$(in_image id -u)
[ "$uid" != 0 ] || { echo "FAIL: running as uid 0" >&2; exit 1; }

echo "\$ $entrypoint--version"
# shellcheck disable=SC2086 # the entrypoint is a word list
in_image $entrypoint --version
echo "\$ $entrypoint bridge run --help | head -n 4"
# shellcheck disable=SC2086
in_image $entrypoint bridge run --help | head -n 4

for tool in gcc cc make pip pip3; do
    if in_image sh -c "command -v $tool" >/dev/null 2>&1; then
        echo "FAIL: build tool '$tool' left in the image" >&2
        exit 1
    fi
done
for python in python3 /opt/devicefabric/bin/python; do
    if in_image "$python" -m pip --version >/dev/null 2>&1; then
        echo "FAIL: '$python -m pip' works in the image" >&2
        exit 1
    fi
done
echo "no compiler, make or pip in the image"
# The whole fabric from the image: `up` (embedded broker + bridge) until `status` says OK.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mqtt=127.0.0.1:$(free_port)
http=127.0.0.1:$(free_port)
echo "\$ devicefabric up --mqtt $mqtt --http $http &  then  devicefabric status --http $http"
# shellcheck disable=SC2016 # expanded by the shell in the image
in_image sh -c '
    devicefabric up --state-dir /tmp/smoke --mqtt "$1" --http "$2" >/tmp/up.log 2>&1 &
    up=$!
    tries=0
    until devicefabric status --http "$2" --state-dir /tmp/smoke >/tmp/status.out; do
        tries=$((tries + 1))
        if [ "$tries" -ge 100 ] || ! kill -0 "$up" 2>/dev/null; then
            cat /tmp/status.out /tmp/up.log; kill -INT "$up"; exit 1
        fi
        sleep 0.3
    done
    cat /tmp/status.out
    kill -INT "$up"
    wait "$up" && echo "up stopped cleanly (exit 0)"' sh "$mqtt" "$http"
echo "smoke test passed"
