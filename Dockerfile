# rasterfn: one image for AWS Lambda (container image) and Knative. docker/entrypoint.sh picks the runtime.
#   make image              # docker/build.sh: buildx where present, else the engine's integrated BuildKit
# No `# syntax=` line: it would make BuildKit pull a frontend image, and the built-in one has all this uses.
# Stages: deps (the serving venv's dependencies: OpenVINO, rasterio; no torch) -> builder (+ rasterfn) and
# export-deps (+ torch and NNCF) -> exporter (runs `rasterfn export` of the image's card into /opt/model) ->
# venv-serving (builder's venv + the exported model, stripped) -> runtime (that venv only).
# The torch variant keeps torch in the image for ENGINE=torch (bit-exact one-tile masks) or a GPU:
#   make image-torch        # docker/build.sh ... --build-arg RUNTIME_VENV=torch --build-arg ENGINE=torch
# (for CUDA also --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 and DEVICE=cuda at run time).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# serving: no torch (the default, about 1/3 of the torch variant's size); torch: the venv the export ran in.
ARG RUNTIME_VENV=serving

FROM ${PYTHON_IMAGE} AS deps

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies in their own layer, keyed on pyproject.toml only: code (and README) changes do not reinstall them.
# Empty stand-ins (packages, the readme pyproject names) let pip resolve the project; the real files replace them.
COPY pyproject.toml ./
RUN mkdir model handler \
    && touch README.md model/__init__.py handler/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall --yes rasterfn \
    && rm -rf build ./*.egg-info


FROM deps AS builder
COPY README.md ./
COPY model ./model
COPY handler ./handler
# Non-editable, no dependency changes: only rasterfn itself, with the demo weights and card (package data).
# The checks use -P (no cwd on sys.path) so they import the installed package, not /src.
RUN pip install --no-cache-dir --no-deps . \
    && python -P -c "from model.card import DEFAULT_CARD_PATH, load_card; c = load_card(DEFAULT_CARD_PATH); assert c.weights_path.is_file(), c.weights_path"


# The export needs torch (to load the checkpoint) and NNCF (int8 calibration); the serving image needs neither.
# Installed on the dependencies alone, so a code change re-runs the export, not these downloads.
FROM deps AS export-deps

# torch from PyTorch's CPU index: PyPI's Linux wheel pulls ~3 GB of CUDA libraries that Lambda and CPU-only
# Knative nodes cannot use. The version must match pyproject.toml's [torch] pin, so pip keeps this build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "nncf>=3.4,<4"


FROM export-deps AS exporter
COPY --from=builder /src /src
# fp32 + int8 graphs of the image's card, each verified against torch on held-out synthetic scenes (the
# build fails if one misses its bar), with the card and checkpoint copied beside them:
# MODEL_CARD=/opt/model/demo.json. Run from the source tree (/src, on sys.path with -m): the scene generator,
# model/training/synthetic.py, is in the build context for this step only and is never installed. rasterfn
# itself is installed too, for the torch variant's venv (venv-torch).
RUN pip install --no-cache-dir --no-deps . \
    && python -m handler.cli export --model model/weights/demo.json --out-dir /opt/model


# Smaller and read-only at run time:
# - test suites of all packages; pip, only needed here;
# - then precompile everything once (unchecked-hash: no source stat on import), because at run time
#   site-packages is read-only (Lambda) and PYTHONDONTWRITEBYTECODE=1, so nothing would ever be cached.
# - OpenVINO's GPU and NPU plugins and its model-format frontends but IR's: the function runs IR graphs on the
#   CPU only (-76 MB; measured with make bench's runtime size).
FROM builder AS venv-serving
COPY --from=exporter /opt/model /opt/model
RUN site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && rm -f "${site}/openvino/libs/libopenvino_intel_gpu_plugin.so" "${site}/openvino/libs/libopenvino_intel_npu_plugin.so" \
    && find "${site}/openvino/libs" -name 'libopenvino_*_frontend.so*' ! -name 'libopenvino_ir_frontend.so*' -delete \
    && find "${site}" -depth -type d -name tests -exec rm -rf {} + \
    && find "${site}" -depth -type d -name __pycache__ -exec rm -rf {} + \
    && python -m pip uninstall --yes pip \
    && python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv
# Smoke test of what was stripped: the entry modules (function, Eventing relay) import, and the Lambda one runs
# its INIT (loads the exported model and checks its sha256) on the serving engine without torch, exactly as a
# cold start would; the local tools and torch are not there.
RUN AWS_DEFAULT_REGION=us-east-1 MODEL_CARD=/opt/model/demo.json python -P -c "import sys, handler.knative, handler.http.relay, handler.lambda_function as f; assert f.RUNTIME.model.engine == 'openvino' and 'torch' not in sys.modules" \
    && python -P -c "from importlib.util import find_spec as f; assert not [m for m in ('handler.local', 'model.training', 'moto', 'torch') if f(m)]"


# The torch variant: torch's C++ headers, CMake files, C++ test binaries and test libraries are for building
# extensions/tests; NNCF and its dependencies stay (small), so this venv can also re-export.
FROM exporter AS venv-torch
RUN site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && rm -rf "${site}/torch/include" "${site}/torch/share/cmake" "${site}/torch/test" \
              "${site}/torch/lib/libtorchbind_test.so" "${site}/torch/lib/libaoti_custom_ops.so" \
    && find "${site}/torch/bin" -type f ! -name torch_shm_manager -delete \
    && find "${site}" -depth -type d -name tests -exec rm -rf {} + \
    && find "${site}" -depth -type d -name __pycache__ -exec rm -rf {} + \
    && python -m pip uninstall --yes pip \
    && python -m compileall -q -j 0 --invalidation-mode unchecked-hash -x '/py312_intrinsics\.py$' /opt/venv
# (torch's test helper py312_intrinsics.py is Python 3.12 syntax, never imported on 3.11.)
RUN AWS_DEFAULT_REGION=us-east-1 MODEL_CARD=/opt/model/demo.json ENGINE=torch python -P -c "import handler.knative, handler.lambda_function as f; assert f.RUNTIME.model.engine == 'torch'"


# hadolint ignore=DL3006
FROM venv-${RUNTIME_VENV} AS venv


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="rasterfn" \
      org.opencontainers.image.description="Event-driven GeoTIFF segmentation for AWS Lambda and Knative" \
      org.opencontainers.image.licenses="Apache-2.0"

# auto: OpenVINO (the exported graphs); the torch variant sets torch (see the top of this file).
ARG ENGINE=auto

# Writable paths are all under /tmp: Lambda's only writable (and size-configurable) directory, and an
# emptyDir-friendly one on Knative. The model cache follows TMPDIR.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    MODEL_CARD=/opt/model/demo.json \
    ENGINE=${ENGINE} \
    MODEL_CACHE_DIR=/tmp/rasterfn-model \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Same base image, so the venv's interpreter symlinks resolve. Root-owned and world-readable: Lambda runs
# the image as its own unprivileged user, Knative as uid 10001 below; neither can modify the code.
COPY --from=venv /opt/venv /opt/venv
COPY --from=venv /opt/model /opt/model
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/rasterfn-entrypoint

RUN groupadd --system --gid 10001 rasterfn \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
               --shell /usr/sbin/nologin rasterfn

USER 10001:10001
WORKDIR /tmp

# Knative's default container port (infra/knative, func.yaml); Lambda ignores it.
EXPOSE 8080

# No HEALTHCHECK: Lambda and Knative both ignore Docker health checks; Knative probes the HTTP health
# routes itself, and Lambda has its own init/invoke lifecycle.

ENTRYPOINT ["/usr/local/bin/rasterfn-entrypoint"]
CMD []
