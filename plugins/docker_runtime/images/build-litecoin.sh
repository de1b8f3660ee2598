#!/bin/sh
# Build the Litecoin regtest images nodevisor's Docker runtime runs, from the
# litecoind that Debian installed on this host. No registry, no network.
#
#   nodevisor/litecoin-regtest:0.21.2-1   revision 1
#   nodevisor/litecoin-regtest:0.21.2-2   revision 2: same litecoind, smaller
#                                         caches in the image's config
#   nodevisor/litecoin-regtest:0.21.2-3   revision 3: revision 2 with babel, the
#                                         container's entrypoint, which
#                                         supervises litecoind
#
# Each image is FROM scratch: litecoind, litecoin-cli, exactly the shared
# libraries they link (from ldd), the dynamic loader, and busybox-static at
# /bin/busybox with /bin/sh so that `docker exec` can run simple commands.
# Revision 3 adds the project's own Python and the locked distributions babel
# needs, copied from .venv by pack-babel.py (nothing is downloaded), with the
# shared libraries their extensions link.
#
# An image is rebuilt only when its recipe (this script and the binaries it
# packs, and for revision 3 every file of the packed Python) changed;
# otherwise the script says so and moves on.
#
# Usage: build-litecoin.sh [--force]
set -eu

REPOSITORY=nodevisor/litecoin-regtest
UPSTREAM=0.21.2
REVISIONS="1 2 3"
# The first revision that runs babel as the entrypoint.
BABEL_REVISION=3
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=$HERE/../../../.venv/bin/python
# The user litecoind runs as inside the container; it owns /data.
UID_GID=10001

say() { printf 'build-litecoin: %s\n' "$*"; }
die() { printf 'build-litecoin: error: %s\n' "$*" >&2; exit 1; }

is_elf() { [ "$(head -c 4 "$1" 2>/dev/null)" = "$(printf '\177ELF')" ]; }

find_litecoind() {
    # Debian's /usr/bin/litecoind is a shell wrapper around this binary.
    for candidate in /usr/lib/litecoin/litecoind "$(command -v litecoind || true)"; do
        if [ -n "$candidate" ] && [ -f "$candidate" ] && is_elf "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

check_inputs() {
    command -v docker >/dev/null 2>&1 ||
        die "the docker command is missing: run apt-get install docker.io"
    docker info >/dev/null 2>&1 ||
        die "cannot reach the Docker engine: is dockerd running?"
    LITECOIND=$(find_litecoind) ||
        die "litecoind is not installed: run apt-get install litecoind"
    LITECOIN_CLI=$(command -v litecoin-cli) ||
        die "litecoin-cli is not installed: run apt-get install litecoind"
    BUSYBOX=/bin/busybox
    [ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 ||
        die "$BUSYBOX is missing or not static: run apt-get install busybox-static"
    [ -x "$PYTHON" ] ||
        die "$PYTHON is missing: run uv sync in the repository first"
    DEBIAN_VERSION=$(dpkg-query -W -f='${Version}' litecoind 2>/dev/null || echo unknown)
}

recipe_of() {
    # Changes whenever the script, a packed binary or a linked library does,
    # or, for revision 3, any file of the packed Python ($2).
    {
        cat "$0"
        echo "$1"
        libraries_of "$LITECOIND" "$LITECOIN_CLI" | xargs cat
        cat "$LITECOIND" "$LITECOIN_CLI" "$BUSYBOX"
        if [ -n "${2:-}" ]; then
            cd "$2"
            find . -type f -print0 | sort -z | xargs -0 sha256sum
            find . -type l -printf '%p %l\n' | sort
            cd - >/dev/null
        fi
    } | sha256sum | cut -c1-16
}

libraries_of() {
    # Absolute paths of every library the binaries link, and the loader.
    ldd "$@" | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]*ld-linux/ { print $1 }' |
        sort -u
}

image_recipe() {
    docker image inspect --format '{{ index .Config.Labels "io.nodevisor.recipe" }}' \
        "$1" 2>/dev/null || true
}

write_config() {
    revision=$1
    cat <<EOF
# litecoin.conf of $REPOSITORY:$UPSTREAM-$revision
regtest=1
server=1
printtoconsole=1
[regtest]
rpcbind=127.0.0.1
rpcallowip=127.0.0.1
EOF
    if [ "$revision" -ge 2 ]; then
        # Revision 2: test hosts run many nodes; keep each one's caches small.
        printf 'dbcache=64\nmaxmempool=64\n'
    fi
}

pack_babel() {
    # The Python and distributions babel runs with, and the libraries they link.
    root=$1
    "$PYTHON" "$HERE/pack-babel.py" "$root" >"$root.so"
    for library in $(libraries_of $(cat "$root.so") 2>/dev/null); do
        [ -e "$root$library" ] && continue
        mkdir -p "$root$(dirname "$library")"
        cp -L "$library" "$root$library"
    done
    rm "$root.so"
}

make_rootfs() {
    root=$1/rootfs
    revision=$2
    mkdir -p "$root/usr/bin" "$root/bin" "$root/etc/litecoin" "$root/tmp" "$1/data"
    chmod 1777 "$root/tmp"
    if [ "$revision" -ge "$BABEL_REVISION" ]; then
        # The folder the runtime bind-mounts, for babel's spec and socket.
        mkdir -p "$root/run/babel"
    fi
    cp "$LITECOIND" "$root/usr/bin/litecoind"
    cp "$LITECOIN_CLI" "$root/usr/bin/litecoin-cli"
    cp "$BUSYBOX" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    for library in $(libraries_of "$LITECOIND" "$LITECOIN_CLI"); do
        mkdir -p "$root$(dirname "$library")"
        cp -L "$library" "$root$library"
    done
    write_config "$revision" >"$root/etc/litecoin/litecoin.conf"
    printf 'root:x:0:0::/:/bin/sh\nlitecoin:x:%s:%s::/data:/bin/sh\n' \
        "$UID_GID" "$UID_GID" >"$root/etc/passwd"
    printf 'root:x:0:\nlitecoin:x:%s:\n' "$UID_GID" >"$root/etc/group"
    printf 'image=%s:%s-%s\nlitecoind=%s (Debian package litecoind %s)\n' \
        "$REPOSITORY" "$UPSTREAM" "$revision" "$UPSTREAM" "$DEBIAN_VERSION" \
        >"$root/etc/nodevisor-image"
}

write_dockerfile() {
    revision=$1
    recipe=$2
    # Where pack-babel.py put babel's packages: not every Python (Debian's,
    # for one) looks in its own lib/pythonX.Y/site-packages.
    python_path=""
    if [ "$revision" -ge "$BABEL_REVISION" ]; then
        command='["python3", "-m", "nodevisor_babel", "--spec", "/run/babel/babel.json", "--socket", "/run/babel/babel.sock", "--logs", "/run/babel/logs"]'
        python_path=$("$PYTHON" -c 'import sys; print("ENV PYTHONPATH=/usr/lib/python%d.%d/site-packages" % sys.version_info[:2])')
    else
        command='["litecoind", "-conf=/etc/litecoin/litecoin.conf", "-datadir=/data"]'
    fi
    cat <<EOF
FROM scratch
COPY rootfs/ /
COPY --chown=$UID_GID:$UID_GID data/ /data/
ENV PATH=/usr/bin:/bin HOME=/data
USER $UID_GID:$UID_GID
WORKDIR /data
EXPOSE 19443 19444
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="litecoin-regtest" \\
      org.opencontainers.image.version="$UPSTREAM-$revision" \\
      org.opencontainers.image.revision="$revision" \\
      io.nodevisor.litecoind-package="$DEBIAN_VERSION" \\
      io.nodevisor.recipe="$recipe"
ENV PYTHONDONTWRITEBYTECODE=1
$python_path
CMD $command
EOF
}

build_revision() {
    revision=$1
    tag=$REPOSITORY:$UPSTREAM-$revision
    context=$(mktemp -d "${TMPDIR:-/tmp}/nodevisor-litecoin.XXXXXX")
    trap 'rm -rf "$context"' EXIT
    packed=
    if [ "$revision" -ge "$BABEL_REVISION" ]; then
        packed=$context/rootfs
        pack_babel "$packed"
    fi
    recipe=$(recipe_of "$revision" "$packed")
    if [ "$FORCE" = 0 ] && [ "$(image_recipe "$tag")" = "$recipe" ]; then
        rm -rf "$context"
        trap - EXIT
        say "$tag is up to date (recipe $recipe)"
        return 0
    fi
    say "building $tag (recipe $recipe) in $context"
    make_rootfs "$context" "$revision"
    write_dockerfile "$revision" "$recipe" >"$context/Dockerfile"
    DOCKER_BUILDKIT=0 docker build --quiet --tag "$tag" "$context" >/dev/null
    rm -rf "$context"
    trap - EXIT
    say "built $tag ($(docker image inspect --format '{{ .Size }}' "$tag") bytes)"
}

main() {
    FORCE=0
    if [ "${1:-}" = "--force" ]; then
        FORCE=1
    fi
    check_inputs
    say "litecoind: $LITECOIND (Debian package litecoind $DEBIAN_VERSION)"
    for revision in $REVISIONS; do
        build_revision "$revision"
    done
}

main "$@"
