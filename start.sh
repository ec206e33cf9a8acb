#!/usr/bin/env bash
# The image's entry point: one image, two modes.
#
#   MODE_TO_RUN=pod         SSH (when PUBLIC_KEY is set) and JupyterLab, then stay up
#   MODE_TO_RUN=serverless  exec the worker ($WORKER_DIR/handler.py): no Jupyter, no SSH, no open ports
#   MODE_TO_RUN=both        the pod services plus the worker, to debug a worker live on a pod
#   MODE_TO_RUN unset       serverless when RUNPOD_ENDPOINT_ID is set (RunPod sets it on
#                           endpoints), else pod: a forgotten MODE_TO_RUN never hangs a worker
#
# Every path and port below is an env var with the container default, so the
# tests run this script on the host inside a temporary directory.
set -euo pipefail

: "${WORKSPACE_DIR:=/workspace}"        # JupyterLab's root: the only directory a pod keeps across restarts
: "${WORKER_DIR:=/app}"                 # the worker `kit export` baked into the image
: "${PYTHON:=python}"                   # one interpreter for JupyterLab, its kernel and the worker
: "${JUPYTER_IP:=0.0.0.0}"
: "${JUPYTER_PORT:=8888}"
# JupyterLab accepts websockets only from its own origin: the pod's RunPod
# proxy URL and localhost (an SSH tunnel). Another site open in the same
# browser would otherwise ride the login cookie into a kernel or a terminal.
: "${JUPYTER_ALLOW_ORIGIN:=}"           # one extra origin, e.g. https://lab.example.com ('*' turns the check off)
: "${SSH_PORT:=22}"
: "${SSH_LISTEN:=0.0.0.0}"
: "${SSH_DIR:=/etc/ssh}"                # host keys and the sshd config this script writes
: "${SSHD:=/usr/sbin/sshd}"             # sshd re-executes itself, so it needs an absolute path
: "${RP_ENV_FILE:=/etc/rp_environment}" # env vars for SSH sessions, sourced from ~/.bashrc
: "${WORKER_API_HOST:=127.0.0.1}"       # MODE_TO_RUN=both off RunPod's queue: the SDK's local API
: "${WORKER_API_PORT:=8000}"
: "${EXAMPLES_DIR:=/opt/kit/notebooks}" # copied into an empty WORKSPACE_DIR on a pod's first start
: "${VOLUME_DIR:=/runpod-volume}"       # an endpoint's network volume, when one is mounted

# Debian's sshd refuses to start without its privilege separation directory,
# a path compiled into it (not configurable); containers do not create it.
readonly SSHD_PRIVSEP_DIR=/run/sshd

# Set by the login itself, so copying them into SSH sessions would be wrong.
readonly SESSION_VARS=" HOME PWD OLDPWD SHLVL TERM HOSTNAME USER LOGNAME SHELL MAIL _ "

children=()

log() {
    printf 'start.sh: %s\n' "$*" >&2
}

select_mode() {
    local mode=${MODE_TO_RUN:-}
    if [[ -z $mode ]]; then
        if [[ -n ${RUNPOD_ENDPOINT_ID:-} ]]; then mode=serverless; else mode=pod; fi
        log "MODE_TO_RUN is unset: running as $mode (serverless when RUNPOD_ENDPOINT_ID is set, else pod)"
    fi
    case $mode in
        pod | serverless | both) printf '%s\n' "$mode" ;;
        *)
            log "invalid MODE_TO_RUN='$mode': expected 'pod', 'serverless' or 'both'"
            return 1
            ;;
    esac
}

# Like RunPod's official templates: the container's env vars, written for SSH
# sessions to source. Overwritten on every start (a restart must not pile up
# copies), PUBLIC_KEY left out, the ~/.bashrc line added once.
export_env_vars() {
    local name source_line
    mkdir -p "$(dirname "$RP_ENV_FILE")"
    (
        umask 077 # it holds RUNPOD_API_KEY
        for name in $(compgen -e); do
            [[ $name =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
            [[ $name == PUBLIC_KEY || $SESSION_VARS == *" $name "* ]] && continue
            printf 'export %s=%q\n' "$name" "${!name}"
        done >"$RP_ENV_FILE.tmp"
    )
    mv -f "$RP_ENV_FILE.tmp" "$RP_ENV_FILE"
    source_line=$(printf '[ -f %q ] && . %q' "$RP_ENV_FILE" "$RP_ENV_FILE")
    touch "$HOME/.bashrc"
    grep -qxF "$source_line" "$HOME/.bashrc" || printf '%s\n' "$source_line" >>"$HOME/.bashrc"
}

# SSH for VS Code Remote-SSH: only with PUBLIC_KEY, key authentication only.
start_ssh() {
    if [[ -z ${PUBLIC_KEY:-} ]]; then
        log "PUBLIC_KEY is not set: no SSH server (add a public key to your RunPod account to get one)"
        return 0
    fi
    if [[ ! -x $SSHD ]]; then
        log "PUBLIC_KEY is set but $SSHD does not exist: no SSH server (install openssh-server)"
        return 0
    fi
    mkdir -p "$HOME/.ssh" "$SSH_DIR" "$SSHD_PRIVSEP_DIR"
    chmod 700 "$HOME/.ssh"
    printf '%s\n' "$PUBLIC_KEY" >"$HOME/.ssh/authorized_keys"
    chmod 600 "$HOME/.ssh/authorized_keys"

    local type key config=$SSH_DIR/sshd_config.kit check
    for type in ed25519 rsa; do
        key=$SSH_DIR/ssh_host_${type}_key
        if [[ ! -f $key ]]; then
            ssh-keygen -q -t "$type" -N '' -C "host key" -f "$key"
        elif [[ $(stat -c '%a %u' "$key") != "600 $(id -u)" ]]; then
            # sshd ignores a host key others can read, and with none left it exits.
            log "SSH host key $key had mode $(stat -c '%a' "$key") (owner uid $(stat -c '%u' "$key")): made it private to $(id -un) (600)"
            chown "$(id -u)" "$key" 2>/dev/null || true
            chmod 600 "$key"
        fi
    done
    # A whole config of our own rather than edits to the system one: what
    # this file says is all that holds.
    cat >"$config" <<EOF
Port $SSH_PORT
ListenAddress $SSH_LISTEN
HostKey $SSH_DIR/ssh_host_ed25519_key
HostKey $SSH_DIR/ssh_host_rsa_key
PidFile none
AuthorizedKeysFile "$HOME/.ssh/authorized_keys"
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
UsePAM no
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
EOF
    # A pod without SSH still has JupyterLab: never let sshd take it down.
    if ! check=$("$SSHD" -t -f "$config" 2>&1); then
        log "no SSH server: sshd refuses its configuration in $SSH_DIR: ${check//$'\n'/; } (delete the broken host keys there to get new ones on the next start)"
        return 0
    fi
    "$SSHD" -D -e -f "$config" &
    children+=("$!")
    log "SSH on port $SSH_PORT (key authentication only)"
    print_ssh_config
}

# On RunPod, the pod's public address and the port mapped to its port 22 are
# in the env: print the ~/.ssh/config block VS Code Remote-SSH (or ssh) needs.
# The mapped port changes when the pod restarts, so the block is printed anew.
print_ssh_config() {
    local ip=${RUNPOD_PUBLIC_IP:-} port=${RUNPOD_TCP_PORT_22:-} alias
    [[ -n $ip && -n $port ]] || return 0
    # Values from the env go into a file the user pastes: only what an address and a port can hold.
    if [[ ! $ip =~ ^[A-Za-z0-9.:-]{1,253}$ ]] || [[ ! $port =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
        log "RUNPOD_PUBLIC_IP or RUNPOD_TCP_PORT_22 is not an address and a port: no SSH config printed"
        return 0
    fi
    alias=runpod-${RUNPOD_POD_ID:-pod}
    [[ $alias =~ ^[A-Za-z0-9_-]{1,80}$ ]] || alias=runpod-pod
    log "SSH config for this pod: paste into ~/.ssh/config on your computer (the port changes when the pod restarts):"
    printf '%s\n' \
        "# IdentityFile: the private key whose public key is in your RunPod settings (PUBLIC_KEY)" \
        "Host $alias" \
        "    HostName $ip" \
        "    Port $((10#$port))" \
        "    User $(id -un)" \
        "    IdentityFile ~/.ssh/id_ed25519" >&2
}

# JupyterLab is always authenticated: a public proxy URL reaches it.
start_jupyter() {
    local token=${JUPYTER_PASSWORD:-} origins
    if [[ -z $token ]]; then
        token=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')
        log "JUPYTER_PASSWORD is not set: JupyterLab token (random): $token"
    elif ((${#token} < 8)); then
        log "warning: JUPYTER_PASSWORD has ${#token} characters: anyone who finds the pod's public proxy URL can guess it; use 16 or more"
    fi
    # Python regular expression, matched against the whole Origin header.
    origins='https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]+)?'
    if [[ -n ${RUNPOD_POD_ID:-} ]]; then
        origins+="|https://$(regex_escape "$RUNPOD_POD_ID-$JUPYTER_PORT").proxy\.runpod\.net"
    fi
    if [[ $JUPYTER_ALLOW_ORIGIN == '*' ]]; then
        origins='.*'
        log "warning: JUPYTER_ALLOW_ORIGIN='*': any website open in your browser can use your JupyterLab login"
    elif [[ -n $JUPYTER_ALLOW_ORIGIN ]]; then
        origins+="|$(regex_escape "$JUPYTER_ALLOW_ORIGIN")"
    fi
    mkdir -p "$WORKSPACE_DIR"
    # The token goes through the environment, not argv, so `ps` does not show it.
    JUPYTER_TOKEN=$token "$PYTHON" -m jupyterlab \
        --allow-root --no-browser \
        --ServerApp.ip="$JUPYTER_IP" \
        --ServerApp.port="$JUPYTER_PORT" \
        --ServerApp.port_retries=0 \
        --ServerApp.root_dir="$WORKSPACE_DIR" \
        --ServerApp.allow_origin_pat="^($origins)\$" &
    children+=("$!")
    log "JupyterLab on port $JUPYTER_PORT, rooted at $WORKSPACE_DIR"
}

# Python's re.escape for the characters an origin can hold.
regex_escape() {
    # shellcheck disable=SC2016 # a sed expression, not shell
    printf '%s' "$1" | sed -E 's/[].[*+?^$(){}|\\]/\\&/g'
}

# A pod's first start: an empty workspace gets the kit's example notebooks,
# so JupyterLab does not open on nothing. What is there is never touched.
seed_workspace() {
    mkdir -p "$WORKSPACE_DIR"
    [[ -d $EXAMPLES_DIR ]] || return 0
    if [[ -n $(find "$WORKSPACE_DIR" -mindepth 1 -maxdepth 1 ! -name lost+found -print -quit) ]]; then
        return 0
    fi
    cp -R --no-clobber "$EXAMPLES_DIR/." "$WORKSPACE_DIR/"
    log "empty $WORKSPACE_DIR: copied the example notebooks from $EXAMPLES_DIR"
}

# Model downloads go where they survive a restart: the pod's workspace, or
# an endpoint's network volume when one is mounted. HF_HOME set by the user wins.
set_hf_home() {
    local mode=$1
    [[ -n ${HF_HOME:-} ]] && return 0
    if [[ $mode != serverless ]]; then
        export HF_HOME=$WORKSPACE_DIR/.cache/huggingface
    elif [[ -d $VOLUME_DIR ]]; then
        export HF_HOME=$VOLUME_DIR/.cache/huggingface
    else
        return 0
    fi
    log "model cache HF_HOME=$HF_HOME"
}

require_worker() {
    if [[ ! -f $WORKER_DIR/handler.py ]]; then
        log "no worker: $WORKER_DIR/handler.py does not exist (build the image with --build-arg NOTEBOOK=<notebook>, or set WORKER_DIR)"
        return 1
    fi
}

# Beside the pod services. On an endpoint the SDK finds RunPod's queue in its
# env; elsewhere its local API answers /runsync on WORKER_API_HOST:PORT.
start_worker_beside() {
    local args=()
    [[ -n ${RUNPOD_WEBHOOK_GET_JOB:-} ]] ||
        args=(--rp_serve_api --rp_api_host "$WORKER_API_HOST" --rp_api_port "$WORKER_API_PORT")
    (cd "$WORKER_DIR" && exec "$PYTHON" -u handler.py "${args[@]}") &
    children+=("$!")
    log "worker $WORKER_DIR/handler.py started ${args[*]}"
}

stop_children() {
    log "stopping"
    kill -TERM "${children[@]}" 2>/dev/null || true
    wait || true
    exit 0
}

# A pod stays up even when JupyterLab stops, so SSH remains a way in.
stay_up() {
    sleep infinity &
    children+=("$!")
    wait "$!"
}

main() {
    local mode
    mode=$(select_mode)
    log "mode: $mode"
    case $mode in
        serverless)
            require_worker
            set_hf_home "$mode"
            cd "$WORKER_DIR"
            # exec: the worker becomes this process, receives SIGTERM and drains.
            exec "$PYTHON" -u "$WORKER_DIR/handler.py"
            ;;
        pod | both)
            [[ $mode == pod ]] || require_worker
            trap stop_children TERM INT
            seed_workspace
            set_hf_home "$mode"
            export_env_vars
            start_ssh
            start_jupyter
            [[ $mode == pod ]] || start_worker_beside
            stay_up
            ;;
    esac
}

main "$@"
