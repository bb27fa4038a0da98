#!/usr/bin/env bash
# Fan-out smoke test of the Knative deployment (make knative-fanout-smoke), from the repository root, after
# make knative-deploy:
#   1. lowers the Service's FANOUT_THRESHOLD_SECONDS to 0 (FANOUT_MAX_SHARDS to 3), so any scene is sharded, and
#      waits for the new Revision; the original environment is put back on exit;
#   2. uploads a generated 2048 x 2048 scene; MinIO -> relay -> Broker -> the function (coordinator) -> K_SINK
#      (SinkBinding rasterfn-fanout) -> Trigger rasterfn-shards -> relay -> the function, once per shard;
#   3. follows the job with `rasterfn status` until the .npy is there and compares it with a local
#      `rasterfn predict` of the same file (the same engine, ENGINE=openvino, on the same host's CPU).
set -euo pipefail

KUBECTL=${KUBECTL:-kubectl}
PY=${PY:-.venv/bin/python}
SERVICE=${SERVICE:-rasterfn}
BUCKET=${BUCKET:-rasterfn}
SECRET=${SECRET:-rasterfn-minio}
MINIO_LOCAL_PORT=${MINIO_LOCAL_PORT:-19000}
TIMEOUT_S=${TIMEOUT_S:-900}
KEY="smoke/fanout-$(date +%s).tif"
WORK=$(mktemp -d)
PF_PID=""

"$KUBECTL" wait --for=condition=Ready --timeout=300s "ksvc/$SERVICE" trigger/rasterfn-shards sinkbinding/rasterfn-fanout
"$KUBECTL" get ksvc "$SERVICE" -o jsonpath='{.spec.template.spec.containers[0].env}' >"$WORK/env.json"

set_env() {  # set_env ENV_JSON_FILE: replace the container's environment (a JSON patch: CRDs take no strategic merge)
    "$PY" -c 'import json, sys; print(json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/env", "value": json.load(open(sys.argv[1]))}]))' "$1" >"$WORK/patch.json"
    "$KUBECTL" patch ksvc "$SERVICE" --type json --patch-file "$WORK/patch.json"
    "$KUBECTL" wait --for=condition=Ready --timeout=300s "ksvc/$SERVICE"
}

cleanup() {
    [[ -n "$PF_PID" ]] && kill "$PF_PID" 2>/dev/null || true
    echo "== restoring the Service's environment"
    set_env "$WORK/env.json" || echo "could not restore it: kubectl apply -f infra/knative/service.yaml" >&2
    rm -rf "$WORK"
}
trap cleanup EXIT

"$PY" - "$WORK/env.json" "$WORK/fanout-env.json" <<'PYTHON'
import json
import sys

env = [e for e in json.load(open(sys.argv[1])) if e["name"] not in ("FANOUT_THRESHOLD_SECONDS", "FANOUT_MAX_SHARDS")]
if not any(e["name"] == "K_SINK" for e in env):
    sys.exit("the Service has no K_SINK: is sinkbinding/rasterfn-fanout Ready? (make knative-deploy)")
env += [{"name": "FANOUT_THRESHOLD_SECONDS", "value": "0"}, {"name": "FANOUT_MAX_SHARDS", "value": "3"}]
json.dump(env, open(sys.argv[2], "w"))
PYTHON
echo "== FANOUT_THRESHOLD_SECONDS=0 on ksvc/$SERVICE"
set_env "$WORK/fanout-env.json"

"$KUBECTL" -n default port-forward svc/minio "$MINIO_LOCAL_PORT:9000" >"$WORK/pf.log" 2>&1 &
PF_PID=$!
sleep 2

secret() { "$KUBECTL" get secret "$SECRET" -o jsonpath="{.data.$1}" | base64 -d; }
export AWS_ENDPOINT_URL="http://127.0.0.1:$MINIO_LOCAL_PORT" AWS_DEFAULT_REGION=us-east-1
AWS_ACCESS_KEY_ID="$(secret root-user)"
AWS_SECRET_ACCESS_KEY="$(secret root-password)"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY

echo "== s3://$BUCKET/$KEY: a generated 2048 x 2048 scene, sharded through the Broker"
"$PY" - "$WORK" "$BUCKET" "$KEY" "$TIMEOUT_S" <<'PYTHON'
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
from botocore.exceptions import ClientError

from handler.local.fanout_demo import write_demo_scene

work, bucket, key, timeout = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
stem = key.rsplit(".", 1)[0]
scene = write_demo_scene(work / "scene.tif", 2048)
s3 = boto3.client("s3")
s3.upload_file(str(scene), bucket, key)
started = time.monotonic()
while time.monotonic() < started + timeout:
    subprocess.run([sys.executable, "-m", "handler.cli", "status", f"s3://{bucket}/{key}"], check=False)
    for suffix in (".npy", ".error.json"):
        try:
            s3.download_file(bucket, stem + suffix, str(work / ("out" + suffix)))
        except ClientError:
            continue
        if suffix == ".error.json":
            sys.exit("the job failed: " + (work / "out.error.json").read_text())
        print(f"s3://{bucket}/{stem}.npy after {time.monotonic() - started:.0f} s")
        env = {"ENGINE": "openvino", "MAX_PIXELS": str(2048 * 2048)}
        subprocess.run([sys.executable, "-m", "handler.cli", "predict", str(scene), "-o", str(work / "local.npy")],
                       check=True, env={**os.environ, **env})
        remote, local = np.load(work / "out.npy"), np.load(work / "local.npy")
        assert remote.shape == local.shape == (2048, 2048), (remote.shape, local.shape)
        same = (work / "out.npy").read_bytes() == (work / "local.npy").read_bytes()
        agree = float((remote == local).mean())
        print(f"sharded vs local predict: byte-identical {same}, pixel agreement {agree:.4%}")
        sys.exit(0 if agree >= 0.999 else "the sharded mask disagrees with the local one")
    time.sleep(5)
sys.exit(f"no .npy after {timeout:.0f} s: see kubectl logs deploy/rasterfn-relay | grep 'dead letter'"
         " and kubectl logs -l serving.knative.dev/service=rasterfn")
PYTHON
echo "knative fan-out smoke test passed"
