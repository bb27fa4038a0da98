#!/usr/bin/env bash
# `make image`: build the Dockerfile wherever a Docker engine answers, registry or not.
#   docker/build.sh TAG [docker build flags...]      e.g. --build-arg RUNTIME_VENV=torch --build-arg ENGINE=torch
# Three choices, each printed:
#   builder  buildx where the client has it (Docker Desktop, docker-ce); else a client with BuildKit built in
#            (Docker < 23, e.g. Debian's docker.io), since newer clients hand BuildKit builds to buildx only.
#   base     PYTHON_IMAGE (the Dockerfile's, python:3.11-slim-bookworm) when present or pullable; else the offline base built
#            from Debian's packages (docker/offline-base.sh, once).
#   torch    PyTorch's CPU index (the exporter stage's TORCH_INDEX_URL) when it answers; else a PEP 503 index
#            served on 127.0.0.1 from the CPU wheel pip finds on this machine, reached with --network host.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:?usage: docker/build.sh TAG [docker build flags...]}
shift
# The Dockerfile's own defaults, so the base, the torch pin and its index are written in one place.
dockerfile_arg() { awk -F= -v arg="ARG $1" '$1 == arg { print $2; exit }' Dockerfile; }
python_image=${PYTHON_IMAGE:-$(dockerfile_arg PYTHON_IMAGE)}
offline_base=${OFFLINE_BASE:-rasterfn-base:3.11-bookworm}
torch_index=${TORCH_INDEX_URL:-$(dockerfile_arg TORCH_INDEX_URL)}
torch_version=${TORCH_VERSION:-$(dockerfile_arg TORCH_VERSION)}
cache=${IMAGE_CACHE_DIR:-.cache/image}
platform=${DOCKER_PLATFORM:-linux/amd64}
python=${PYTHON:-python3}

say() { echo "image: $*" >&2; }

pick_client() {
    local c candidates version
    candidates=$( { [[ -n ${DOCKER:-} ]] && echo "$DOCKER"; type -ap docker; } | awk '!seen[$0]++')
    for c in $candidates; do
        if "$c" buildx version >/dev/null 2>&1; then
            client=$c builder=buildx
            return
        fi
    done
    for c in $candidates; do
        version=$("$c" version --format '{{.Client.Version}}' 2>/dev/null) || continue
        if [[ ${version%%.*} =~ ^[0-9]+$ ]] && ((${version%%.*} < 23)); then
            client=$c builder=buildkit
            return
        fi
    done
    echo "image: no Docker client that can run BuildKit: install buildx, or Docker < 23's client (Debian's docker.io)" >&2
    exit 1
}

pick_client
"$client" info >/dev/null 2>&1 || { echo "image: no Docker engine answers $client (start dockerd)" >&2; exit 1; }
say "builder: $builder ($client)"

network=()
# An engine started with --bridge=none has no default network for RUN steps: the host's loopback is all there is.
if ! "$client" network inspect bridge >/dev/null 2>&1; then
    network=(--network host)
fi

if "$client" image inspect "$python_image" >/dev/null 2>&1 || timeout 60 "$client" pull -q "$python_image" >/dev/null 2>&1; then
    base=$python_image
else
    base=$offline_base
    if ! "$client" image inspect "$base" >/dev/null 2>&1; then
        say "$python_image cannot be pulled: building the offline base $base from Debian's packages (once)"
        DOCKER=$client docker/offline-base.sh "$base"
    fi
fi
say "base: $base"

index_pid=""
trap '[[ -z $index_pid ]] || kill "$index_pid" 2>/dev/null || true' EXIT
if curl -fsS --max-time 10 -o /dev/null "$torch_index/torch/" 2>/dev/null; then
    say "torch: $torch_index"
else
    # pip download resolves torch's own dependencies too; the index is only these files, laid out by PEP 503.
    wheels=$cache/torch-$torch_version
    if ! compgen -G "$wheels/torch-$torch_version+cpu-*.whl" >/dev/null; then
        say "$torch_index does not answer: looking for torch==$torch_version's CPU wheel on this machine"
        rm -rf "$wheels" && mkdir -p "$wheels"
        "$python" -m pip download --quiet --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
            --platform manylinux2014_x86_64 --dest "$wheels" "torch==$torch_version"
        compgen -G "$wheels/torch-$torch_version+cpu-*.whl" >/dev/null || {
            found=("$wheels"/torch-*.whl)
            echo "image: no CPU build of torch $torch_version here (pip found ${found[*]##*/}): set TORCH_INDEX_URL" >&2
            rm -rf "$wheels"
            exit 1
        }
    fi
    index=$cache/torch-index
    rm -rf "$index" && mkdir -p "$index/simple"
    for wheel in "$wheels"/*.whl; do
        file=$(basename "$wheel")
        project=$(echo "${file%%-*}" | tr '[:upper:]' '[:lower:]' | sed -E 's/[-_.]+/-/g')
        mkdir -p "$index/simple/$project"
        ln -f "$wheel" "$index/simple/$project/$file" 2>/dev/null || cp "$wheel" "$index/simple/$project/"
    done
    port_file=$index/port
    "$python" - "$index" "$port_file" "${TORCH_INDEX_PORT:-38711}" <<'EOF' &
import functools, http.server, pathlib, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *args: None
# The URL is a build argument, so part of the exporter's cache key: the same port each time, when it is free.
try:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[3])), handler)
except OSError:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
pathlib.Path(sys.argv[2]).write_text(str(server.server_port))
server.serve_forever()
EOF
    index_pid=$!
    for _ in $(seq 50); do [[ -s $port_file ]] && break; sleep 0.1; done
    torch_index="http://127.0.0.1:$(cat "$port_file")/simple"
    network=(--network host)
    served=("$wheels"/*.whl)
    say "torch: $torch_index (loopback index of ${#served[@]} wheels in $wheels)"
fi

# The base's name as the OCI label for it: tests/image measures the image's own layers against that base.
args=(--platform "$platform" -t "$tag" --label "org.opencontainers.image.base.name=$base" --build-arg "PYTHON_IMAGE=$base" --build-arg "TORCH_INDEX_URL=$torch_index"
      --build-arg "TORCH_VERSION=$torch_version" "${network[@]}" "$@" .)
started=$(date +%s)
if [[ $builder == buildx ]]; then
    # --provenance=false: Lambda rejects image indexes carrying attestations. --load: into the engine's images.
    "$client" buildx build --load --provenance=false "${args[@]}"
else
    DOCKER_BUILDKIT=1 "$client" build "${args[@]}"
fi
say "built $tag in $(($(date +%s) - started)) s"
