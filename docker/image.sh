#!/usr/bin/env bash
# Build and run the kit's image with podman, the same way for a user and for CI
# (`make image`, `make image-test`, .ci/run). Run as root from anywhere.
#
#   docker/image.sh base                the stand-in for runpod/pytorch (BASE_TAG), built once:
#                                       a Debian root filesystem from this host's apt sources,
#                                       `python` -> python3, pip, torch==2.13.0 (CPU), JupyterLab,
#                                       ipywidgets, openssh-server, no host keys
#   docker/image.sh build TAG [ARG=VALUE...]
#                                       podman build of the Dockerfile on BASE_TAG, with build args,
#                                       e.g. NOTEBOOK=notebooks/hello.ipynb or WORKER=build/hello
#   docker/image.sh build-dir TAG DIR [ARG=VALUE...]
#                                       podman build of DIR's own Dockerfile with DIR alone as the
#                                       context (a `kit export --repo` folder), on BASE_TAG
#   docker/image.sh podman ARGS...      podman with this machine's settings (for `run`, `stop`, ...)
#   docker/image.sh sizes TAG...        the images' sizes
#
# What this machine needs, found by trying: runc (crun cannot start containers
# on a hybrid cgroup setup), rlimits podman may set (its defaults fail with
# EPERM), and pip in RUN steps reaching packages the way the host's pip does:
# its configuration (`pip config list`, PIP_* variables) written to one
# pip.conf, and every local file or folder it names (CA bundle, constraints,
# find-links, file:// indexes) mounted read-only at the same path.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${BASE_TAG:=localhost/kit-base:bookworm}"
: "${STATE_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/kit-image}"
: "${HOST_PYTHON:=python3}" # the host interpreter whose pip configuration the build copies
: "${OCI_RUNTIME:=$(command -v runc || true)}"

log() {
    printf 'image.sh: %s\n' "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

setup_podman() {
    command -v podman >/dev/null ||
        die "podman is not installed (Debian: apt-get install podman runc mmdebstrap)"
    mkdir -p "$STATE_DIR"
    local nofile
    nofile=$(ulimit -Hn)
    [[ $nofile == unlimited ]] && nofile=1048576
    {
        printf '[containers]\n'
        printf 'default_ulimits = ["nofile=%s:%s", "nproc=32768:32768"]\n' "$nofile" "$nofile"
        if [[ -n $OCI_RUNTIME ]]; then
            printf '[engine]\nruntime = "%s"\n' "$OCI_RUNTIME"
        fi
    } >"$STATE_DIR/containers.conf"
    export CONTAINERS_CONF=$STATE_DIR/containers.conf
}

# The host's pip settings as one [global] section; stdout: -v mount options.
PIP_MOUNTS=()
host_pip_config() {
    local conf=$STATE_DIR/pip.conf line key value scope word path
    declare -A settings=() rank=()
    while IFS= read -r line; do
        [[ $line == *=* ]] || continue
        key=${line%%=*} value=${line#*=}
        value=${value#\'} value=${value%\'}
        scope=${key%%.*} key=${key#*.}
        # pip's precedence: global < user < site < PIP_CONFIG_FILE < PIP_* variables
        case $scope in
            :env:) r=4 ;; site) r=3 ;; user) r=2 ;; *) r=1 ;;
        esac
        if [[ -z ${rank[$key]:-} || ${rank[$key]} -le $r ]]; then
            settings[$key]=$value rank[$key]=$r
        fi
    done < <("$HOST_PYTHON" -m pip config list 2>/dev/null || true)

    declare -A mounts=()
    for key in "${!settings[@]}"; do
        for word in ${settings[$key]}; do
            path=$word
            [[ $path == file://* ]] && path=${path#file://}
            [[ $path == /* && -e $path ]] || continue
            mounts[$path]=1
            # A file:// index's pages link to files beside it (../../files/...).
            [[ $key == *index-url && -d $path ]] && mounts[$(dirname "$path")]=1
        done
    done
    {
        printf '# The host pip configuration, for RUN steps (written by docker/image.sh)\n[global]\n'
        for key in "${!settings[@]}"; do printf '%s = %s\n' "$key" "${settings[$key]}"; done
    } >"$conf"
    PIP_MOUNTS=(-v "$conf:/etc/pip.conf:ro")
    for path in "${!mounts[@]}"; do PIP_MOUNTS+=(-v "$path:$path:ro"); done
}

# A failed multi-stage build can leave its working container mounted: remove
# the build containers this run created, and only those.
# Build (buildah) containers only, shown as "Storage": never a container someone runs.
build_containers() {
    podman ps --all --external --format '{{.ID}} {{.Status}}' 2>/dev/null |
        awk '$2 == "Storage" {print $1}' | sort
}

podman_build() {
    local before status=0 leftover
    host_pip_config
    # One build at a time on this machine: the cleanup below would otherwise take another
    # build's working containers, made while this one ran, for leftovers of its own.
    exec {build_lock}>"$STATE_DIR/build.lock"
    flock "$build_lock"
    before=$(build_containers)
    podman build --format docker --network host --force-rm "${PIP_MOUNTS[@]}" "$@" || status=$?
    leftover=$(comm -13 <(printf '%s\n' "$before") <(build_containers) || true)
    if [[ -n $leftover ]]; then
        log "removing the build's leftover working containers: $(echo "$leftover" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        podman rm --force $leftover >/dev/null 2>&1 || buildah rm $leftover >/dev/null 2>&1 || true
    fi
    return "$status"
}

# The host's Debian sources (deb822 stanzas for the host's release), for mmdebstrap.
host_apt_sources() {
    local codename=$1 file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        awk -v suite="$codename" 'BEGIN { RS = ""; ORS = "\n\n" } $0 ~ "Suites:[^\n]*" suite { print }' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        grep -E "^deb[[:space:]].*[[:space:]]$codename([[:space:]]|-)" "$file" || true
    done
}

# The base is rebuilt when its Containerfile changes (or REBUILD_BASE=1).
base_recipe() {
    sha256sum "$ROOT/docker/base.Containerfile" | cut -c 1-16
}

base_is_current() {
    podman image exists "$BASE_TAG" &&
        [[ $(podman image inspect --format '{{index .Labels "kit.base.recipe"}}' "$BASE_TAG") == "$(base_recipe)" ]]
}

build_base() {
    if base_is_current && [[ -z ${REBUILD_BASE:-} ]]; then
        log "base image $BASE_TAG is up to date (REBUILD_BASE=1 rebuilds it)"
        return 0
    fi
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
    local codename rootfs sources
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "/etc/os-release names no VERSION_CODENAME: the stand-in base needs a Debian host"
    rootfs=$STATE_DIR/rootfs-$codename.tar
    if [[ ! -f $rootfs || -n ${REBUILD_BASE:-} ]]; then
        sources=$(host_apt_sources "$codename")
        [[ -n $sources ]] || die "no apt source for '$codename' in /etc/apt: the stand-in base is built from them"
        log "Debian $codename root filesystem (mmdebstrap, the host's apt sources)"
        rm -rf "$rootfs.new.tar"
        mmdebstrap --quiet --variant=apt --format=tar \
            --include=python3,python3-pip,python3-venv,openssh-server,ca-certificates \
            --aptopt='Acquire::Check-Valid-Until "false"' \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            "$codename" "$rootfs.new.tar" - <<<"$sources"
        mv -f "$rootfs.new.tar" "$rootfs"
    fi
    podman import --quiet "$rootfs" "localhost/kit-rootfs:$codename" >/dev/null
    podman_build -f "$ROOT/docker/base.Containerfile" --build-arg "ROOTFS=localhost/kit-rootfs:$codename" \
        --label "kit.base.recipe=$(base_recipe)" -t "$BASE_TAG" "$ROOT/docker"
    podman rmi "localhost/kit-rootfs:$codename" >/dev/null 2>&1 || true
}

build_image() {
    local tag=${1:?usage: image.sh build TAG [ARG=VALUE...]} args=() arg
    shift
    for arg in "$@"; do args+=(--build-arg "$arg"); done
    build_base
    podman_build --build-arg "BASE_IMAGE=$BASE_TAG" "${args[@]}" -t "$tag" "$ROOT"
}

build_dir() {
    local tag=${1:?usage: image.sh build-dir TAG DIR [ARG=VALUE...]} dir=${2:?usage: image.sh build-dir TAG DIR [ARG=VALUE...]} args=() arg
    shift 2
    [[ -f $dir/Dockerfile ]] || die "$dir has no Dockerfile (export the notebook with --repo)"
    for arg in "$@"; do args+=(--build-arg "$arg"); done
    podman image exists "$BASE_TAG" || build_base
    podman_build --build-arg "BASE_IMAGE=$BASE_TAG" "${args[@]}" -t "$tag" "$dir"
}

sizes() {
    local tag
    for tag in "$@"; do
        podman image inspect --format "{{.Size}}" "$tag" |
            awk -v tag="$tag" '{ printf "%s: %.0f MB\n", tag, $1 / 1e6 }'
    done
}

main() {
    local command=${1:-}
    shift || true
    case $command in
        base) setup_podman && build_base ;;
        build) setup_podman && build_image "$@" ;;
        build-dir) setup_podman && build_dir "$@" ;;
        podman) setup_podman && exec podman "$@" ;;
        sizes) setup_podman && sizes "$@" ;;
        *)
            echo "usage: $0 base | build TAG [ARG=VALUE...] | build-dir TAG DIR [ARG=VALUE...] | podman ARGS... | sizes TAG..." >&2
            exit 2
            ;;
    esac
}

main "$@"
