# One image, two modes (start.sh picks one from MODE_TO_RUN at start):
#   pod         JupyterLab (token-protected) on 8888 and SSH on 22 for VS Code
#   serverless  the worker, exec'd as the container's process
#
#   docker build --build-arg WORKER=build/my-worker -t my-worker .      a worker `kit export`ed on a pod
#   docker build --build-arg NOTEBOOK=notebooks/embeddings.ipynb .     one of the kit's examples
#
# The base image brings CUDA, its own CUDA build of torch, JupyterLab and
# openssh-server. Its Python is the one environment: JupyterLab, its kernel,
# the kit and the worker all use it, and so does `pip install` in a notebook.
ARG BASE_IMAGE=runpod/pytorch:1.0.3-cu1281-torch291-ubuntu2404

# --- the base image, the pod tools and the kit: rebuilt only when the kit changes
FROM ${BASE_IMAGE} AS kit
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The interpreter that has torch and runs JupyterLab's kernel: `python` on
# RunPod's images (on their ubuntu2204 tags `python3` is another one, without torch).
ARG PYTHON=python
ENV PYTHON=${PYTHON} \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
RUN "$PYTHON" -c 'import torch, jupyterlab, ipykernel' \
    || { echo "error: '$PYTHON' cannot import torch, jupyterlab and ipykernel: build with --build-arg PYTHON=<the base image's interpreter that has them>" >&2; exit 2; }

# What VS Code Remote-SSH needs on the pod: sshd, and curl or wget for its
# server's download. Versions come from the base image's Ubuntu release; pinning
# them here would break the build on the next base image. Host keys baked into
# an image would be shared by every pod that runs it: start.sh generates each pod's own.
# hadolint ignore=DL3008,SC2086
RUN missing=""; \
    command -v sshd >/dev/null || missing="openssh-server"; \
    command -v curl >/dev/null || command -v wget >/dev/null || missing="$missing curl"; \
    if [ -n "$missing" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && rm -f /etc/ssh/ssh_host_*

# The kit's code and metadata only: editing the README or docker/ reuses this layer.
COPY pyproject.toml /opt/kit/
COPY kit /opt/kit/kit
RUN : >/opt/kit/README.md \
    && "$PYTHON" -m pip install --quiet /opt/kit \
    && rm -rf /opt/kit/build
COPY docker/bake-worker.sh /opt/kit/docker/
COPY docker/jupyter /opt/kit/docker/jupyter
RUN settings="$("$PYTHON" -c 'from jupyterlab.commands import get_app_dir; print(get_app_dir())')/settings/overrides.d" \
    && mkdir -p "$settings" \
    && cp /opt/kit/docker/jupyter/overrides.d/*.json "$settings/"

# --- the worker: WORKER, a directory `kit export` wrote where the notebook's
# kernel ran (its requirements.txt pins that environment), or else NOTEBOOK,
# exported here; the examples' dependencies are installed for that.
FROM kit AS export
RUN /opt/kit/docker/bake-worker.sh examples
ARG NOTEBOOK=notebooks/hello.ipynb
ARG WORKER=
ARG KIT_EXCLUDE=torch
WORKDIR /src
COPY . .
RUN /opt/kit/docker/bake-worker.sh worker "$WORKER" "$NOTEBOOK" /app

# --- the image: the worker's requirements first, so that an edit that leaves
# them as they are reuses the layer with the big dependencies
FROM kit
COPY --from=export /app/requirements.pins /app/requirements.pins
RUN /opt/kit/docker/bake-worker.sh install /app/requirements.pins
COPY notebooks /opt/kit/notebooks
COPY --from=export /app /app
COPY start.sh /start.sh
WORKDIR /workspace
EXPOSE 8888/tcp 22/tcp
CMD ["/start.sh"]
