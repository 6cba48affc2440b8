# The one image every node runs: Ray's GPU image with this project and its pinned
# dependencies baked in, so no node installs anything at start. KubeRay (infra/k8s), the
# cluster launcher (infra/aws) and the MLflow server Deployment all use it.
#
#   docker build --build-arg DCGAN_GIT_COMMIT=$(git rev-parse HEAD) \
#       -t 123456789012.dkr.ecr.us-west-2.amazonaws.com/dcgan-ray:0.1.0 .
#
# The tag is the project's version (pyproject.toml); push it to a repository with
# immutable tags so a tag always means one image. The versions are constraints.txt's, the
# same pins CI and the README's install line use (tests/test_infra_yaml.py checks both).
#
# CUDA: torch 2.14.1 (PyPI wheel) brings its own CUDA 13.0 runtime; nodes need an NVIDIA driver >= 580.
# The wheel installs its CUDA libraries as pip packages (cuda-toolkit 13.0.x, cuDNN, NCCL for
# CUDA 13; constraints.txt) and loads those, not the CUDA toolkit the base image's -gpu tag
# carries; what it takes from the node is the driver (libcuda). NVIDIA's minor version
# compatibility lets CUDA 13.x run on any R580-or-newer driver ("CUDA Toolkit 11.x, 12.x, and
# 13.x Minimum and Maximum Required Driver Versions", https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html;
# the per-release rows are in the CUDA Toolkit release notes' table "CUDA Toolkit and
# Corresponding Driver Versions"). A node on a 12.x-era driver (< 580) fails at the first CUDA
# call. tests/test_infra_yaml.py holds this line to the torch wheel's declared CUDA.
FROM rayproject/ray:2.60.0-py311-gpu

# The commit the image is built from; registered model versions carry it (git_commit tag).
ARG DCGAN_GIT_COMMIT
RUN test -n "$DCGAN_GIT_COMMIT" || { echo "build with --build-arg DCGAN_GIT_COMMIT=\$(git rev-parse HEAD)" >&2; exit 1; }

WORKDIR /home/ray/dcgan-ray
# Dependencies first (a layer that changes only with the pins), then the code.
COPY --chown=ray:users constraints.txt pyproject.toml README.md ./
COPY --chown=ray:users gan ./gan
COPY --chown=ray:users pipelines ./pipelines
COPY --chown=ray:users tune ./tune
# A normal install (the presets are package data, pipelines/presets); the source stays here
# too, as the RayJob's working_dir. 'server' adds MLflow's auth app and the PostgreSQL
# driver for the tracking server; 'gpu' adds nvidia-ml-py, which GPU nodes' system metrics
# (system/<Ray node id>/gpu_*) and the workers' GPU utilisation read NVML through.
RUN python -m pip install --no-cache-dir -c constraints.txt '.[server,gpu]'

ENV DCGAN_GIT_COMMIT=${DCGAN_GIT_COMMIT}
LABEL org.opencontainers.image.title="dcgan-ray" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${DCGAN_GIT_COMMIT}"
