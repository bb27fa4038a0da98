#!/usr/bin/env bash
# Build the Dockerfile's base (PYTHON_IMAGE) from Debian's packages, for machines that reach no container
# registry: `make image` runs this only when the official python:3.11-slim-bookworm can be neither found
# locally nor pulled. Needs root, debootstrap and a Debian mirror; about a minute.
#   docker/offline-base.sh TAG [MIRROR]
# What differs from the official image: Debian's CPython 3.11 at /usr/bin/python3 (the official image builds
# its own at /usr/local/bin), and this machine's CA bundle in place of Debian's so HTTPS from build steps
# (pip) is trusted wherever the machine itself trusts it.
set -euo pipefail

tag=${1:?usage: offline-base.sh TAG [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}
suite=bookworm
ca_bundle=/etc/ssl/certs/ca-certificates.crt

command -v debootstrap >/dev/null || { echo "offline-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "offline-base: debootstrap needs root" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$suite" "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# The build's pip must trust what this machine trusts (a TLS-inspecting proxy's CA, say): pip uses its own
# certifi bundle unless told, so the system bundle is named in pip's global config too.
if [[ -f $ca_bundle ]]; then
    cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"

# What an image never needs: package lists and caches, documentation, locales but C.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C*' -exec rm -rf {} +

tar -C "$root" -c . | "$docker" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "offline-base: built $tag ($("$docker" run --rm --network host "$tag" python3 --version))"
