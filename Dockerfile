# One image, two modes (start.sh picks one from MODE_TO_RUN at start):
#   pod         JupyterLab (token-protected) on 8888 and SSH on 22 for VS Code
#   serverless  the worker exported from NOTEBOOK, exec'd as the container's process
#
#   docker build --build-arg NOTEBOOK=notebooks/embeddings.ipynb -t my-worker .
#
# The base image brings CUDA, its own CUDA build of torch, JupyterLab and
# openssh-server. Its Python is the one environment: JupyterLab, its kernel,
# the kit and the worker all use it, and so does `pip install` in a notebook.
ARG BASE_IMAGE=runpod/pytorch:1.0.3-cu1281-torch291-ubuntu2404

# --- the base image, the pod tools and the kit: rebuilt only when the kit changes
FROM ${BASE_IMAGE} AS kit
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHON=python3 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

# Versions come from the base image's Ubuntu release; pinning them here would
# break the build on the next base image. Host keys baked into an image would
# be shared by every pod that runs it: start.sh generates each pod's own.
# hadolint ignore=DL3008
RUN if ! command -v sshd >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends openssh-server \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && rm -f /etc/ssh/ssh_host_*

COPY pyproject.toml README.md /opt/kit/
COPY kit /opt/kit/kit
COPY docker /opt/kit/docker
RUN python3 -m pip install /opt/kit \
    && settings="$(python3 -c 'from jupyterlab.commands import get_app_dir; print(get_app_dir())')/settings/overrides.d" \
    && mkdir -p "$settings" \
    && cp /opt/kit/docker/jupyter/overrides.d/*.json "$settings/"

# --- the worker, exported from the notebook (this stage reruns on every edit; it is quick)
FROM kit AS export
ARG NOTEBOOK=notebooks/hello.ipynb
ARG KIT_EXCLUDE=torch
WORKDIR /src
COPY . .
RUN /opt/kit/docker/bake-worker.sh export "$NOTEBOOK" /app

# --- the image: the worker's requirements first, so that an edit that leaves
# them as they are reuses the layer with the big dependencies
FROM kit
COPY --from=export /app/requirements.pins /app/requirements.pins
RUN /opt/kit/docker/bake-worker.sh install /app/requirements.pins
COPY --from=export /app /app
COPY start.sh /start.sh
WORKDIR /workspace
EXPOSE 8888/tcp 22/tcp
CMD ["/start.sh"]
