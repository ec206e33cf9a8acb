#!/usr/bin/env bash
# The Dockerfile's build steps, kept here so the tests run them on the host.
#
#   bake-worker.sh worker WORKER NOTEBOOK WORKER_DIR
#       WORKER set: copy that worker directory (written by `kit export` where the
#       notebook's kernel ran, so its requirements.txt pins that environment)
#       to WORKER_DIR; else `export` NOTEBOOK. Then write the pins (below).
#   bake-worker.sh export NOTEBOOK WORKER_DIR
#       `kit export` the notebook into WORKER_DIR, leaving out what the base
#       image provides (KIT_EXCLUDE, default "torch": its CUDA build stays).
#   Both write WORKER_DIR/requirements.pins: requirements.txt without comments
#   and without the KIT_EXCLUDE distributions. The image installs from that
#   file in a layer of its own, so editing a notebook's code, which leaves the
#   pins as they are, reuses it.
#   bake-worker.sh examples
#       pip install the kit's examples' dependencies (its "examples" extra)
#       but torch, so that NOTEBOOK=notebooks/<example> exports.
#   bake-worker.sh install PINS
#       pip install the pins into the one Python environment ($PYTHON), with the
#       base image's torch packages held where they are: a requirement that
#       needs another torch fails the build instead of replacing the CUDA build.
set -euo pipefail

: "${PYTHON:=python}"
: "${KIT:=kit}"
: "${KIT_EXCLUDE=torch}"

die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

# pip's comment rule: '#' at the start of a line or after whitespace; then
# the lines whose distribution KIT_EXCLUDE names (compared as pip does).
write_pins() {
    local worker_dir=$1
    sed -E -e 's/(^|[[:space:]]+)#.*$//' -e '/^[[:space:]]*$/d' "$worker_dir/requirements.txt" |
        awk -v exclude="$KIT_EXCLUDE" '
            function norm(s) { s = tolower(s); gsub(/[-_.]+/, "-", s); return s }
            BEGIN { n = split(exclude, names, " "); for (i = 1; i <= n; i++) held[norm(names[i])] = 1 }
            { name = $0; sub(/[[:space:]]*[<>=!~;@\[ ].*$/, "", name)
              if (norm(name) in held) { printf "bake-worker.sh: %s: the base image'"'"'s own is kept\n", $0 > "/dev/stderr"; next }
              print }' >"$worker_dir/requirements.pins"
}

export_worker() {
    local notebook=$1 worker_dir=$2 name names args=()
    read -ra names <<<"$KIT_EXCLUDE"
    for name in "${names[@]}"; do args+=(--exclude "$name"); done
    "$KIT" export "$notebook" -o "$worker_dir" "${args[@]}"
    write_pins "$worker_dir"
}

copy_worker() {
    local worker=$1 worker_dir=$2 name
    [[ -d $worker ]] || die "WORKER=$worker is not a directory in the build context (export it with: kit export NOTEBOOK -o $worker)"
    for name in kit.json handler.py requirements.txt worker_loop.py; do
        [[ -f $worker/$name ]] ||
            die "WORKER=$worker has no $name: it is not a worker directory written by \`kit export\`"
    done
    rm -rf "$worker_dir"
    cp -R "$worker" "$worker_dir"
    write_pins "$worker_dir"
}

worker() {
    local worker=$1 notebook=$2 worker_dir=$3
    if [[ -n $worker ]]; then copy_worker "$worker" "$worker_dir"; else export_worker "$notebook" "$worker_dir"; fi
}

held_torch() {
    "$PYTHON" -m pip list --format=freeze | { grep -iE '^(torch|torchvision|torchaudio)==' || true; }
}

install_examples() {
    local reqs
    reqs=$(mktemp)
    "$PYTHON" - >"$reqs" <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
for line in requires("runpod-kit") or []:
    req = Requirement(line)
    if req.marker and req.marker.evaluate({"extra": "examples"}) and req.name != "torch":
        req.marker = None
        print(req)
PY
    "$PYTHON" -m pip install --quiet -r "$reqs" -c <(held_torch)
    rm -f "$reqs"
}

# pip's own output stays above; the build ends on one line naming what to fix.
install_requirements() {
    local pins=$1 log status=0 reason
    log=$(mktemp)
    "$PYTHON" -m pip install --progress-bar off -r "$pins" -c <(held_torch) 2> >(tee "$log" >&2) || status=$?
    if ((status != 0)); then
        sleep 0.1 # let tee finish writing
        reason=$(grep -E "^ERROR: " "$log" | head -n 1 | sed -E 's/^ERROR: //')
        rm -f "$log"
        die "the worker's requirements cannot be installed on this base image (${reason:-pip exited $status}): fix the notebook or requirements.txt and export again"
    fi
    rm -f "$log"
}

case ${1:-} in
    worker) worker "$2" "$3" "$4" ;;
    export) export_worker "$2" "$3" ;;
    examples) install_examples ;;
    install) install_requirements "$2" ;;
    *)
        echo "usage: $0 worker WORKER NOTEBOOK WORKER_DIR | export NOTEBOOK WORKER_DIR | examples | install PINS" >&2
        exit 2
        ;;
esac
