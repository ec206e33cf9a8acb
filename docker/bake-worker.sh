#!/usr/bin/env bash
# The Dockerfile's two build steps, kept here so the tests run them on the host.
#
#   bake-worker.sh export NOTEBOOK WORKER_DIR
#       `kit export` the notebook into WORKER_DIR, leaving out what the base
#       image provides (KIT_EXCLUDE, default "torch": its CUDA build stays), and
#       write WORKER_DIR/requirements.pins: the exported requirements.txt without
#       its comments. The image installs from that file in a layer of its own, so
#       editing a notebook's code, which leaves the pins as they are, reuses it.
#   bake-worker.sh install PINS
#       pip install the pins into the one Python environment ($PYTHON), with the
#       base image's torch packages held where they are: a requirement that
#       needs another torch fails the build instead of replacing the CUDA build.
set -euo pipefail

: "${PYTHON:=python}"
: "${KIT:=kit}"
: "${KIT_EXCLUDE=torch}"

export_worker() {
    local notebook=$1 worker_dir=$2 name names args=()
    read -ra names <<<"$KIT_EXCLUDE"
    for name in "${names[@]}"; do args+=(--exclude "$name"); done
    "$KIT" export "$notebook" -o "$worker_dir" "${args[@]}"
    # pip's comment rule: '#' at the start of a line or after whitespace.
    sed -E -e 's/(^|[[:space:]]+)#.*$//' -e '/^[[:space:]]*$/d' \
        "$worker_dir/requirements.txt" >"$worker_dir/requirements.pins"
}

install_requirements() {
    local pins=$1 held
    held=$(mktemp)
    "$PYTHON" -m pip list --format=freeze |
        { grep -iE '^(torch|torchvision|torchaudio)==' || true; } >"$held"
    "$PYTHON" -m pip install -r "$pins" -c "$held"
    rm -f "$held"
}

case ${1:-} in
    export) export_worker "$2" "$3" ;;
    install) install_requirements "$2" ;;
    *)
        echo "usage: $0 export NOTEBOOK WORKER_DIR | install PINS" >&2
        exit 2
        ;;
esac
