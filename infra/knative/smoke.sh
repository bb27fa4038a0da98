#!/usr/bin/env bash
# Smoke test of the Knative deployment (make knative-smoke), from the repository root:
#   1. event path: upload data/test-1.tif to MinIO's bucket; MinIO's webhook -> the relay -> the Broker -> the
#      Trigger -> the function, which writes the .npy beside it; wait for it and check it is a 512 x 512 mask;
#   2. HTTP path: the old API's curl command, POST /inference through kourier's cluster-internal gateway (the
#      Service is cluster-local; Host header);
#   3. GET /metrics shows the requests.
# Port-forwards (no tunnel or LoadBalancer needed); they are stopped on exit.
set -euo pipefail

KUBECTL=${KUBECTL:-kubectl}
PY=${PY:-.venv/bin/python}
SERVICE=${SERVICE:-rasterfn}
BUCKET=${BUCKET:-rasterfn}
SECRET=${SECRET:-rasterfn-minio}
MINIO_LOCAL_PORT=${MINIO_LOCAL_PORT:-19000}
KOURIER_LOCAL_PORT=${KOURIER_LOCAL_PORT:-18080}
TIMEOUT_S=${TIMEOUT_S:-300}
INPUT=data/test-1.tif
KEY="smoke/test-1-$(date +%s).tif"
OUT_DIR=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$OUT_DIR"
}
trap cleanup EXIT

port_forward() {  # port_forward NAMESPACE TARGET LOCAL:REMOTE
    $KUBECTL -n "$1" port-forward "$2" "$3" >"$OUT_DIR/pf-${3%%:*}.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 50); do
        if curl -s -o /dev/null "http://127.0.0.1:${3%%:*}/"; then return 0; fi
        sleep 0.2
    done
    echo "port-forward to $2 did not come up:" >&2
    cat "$OUT_DIR/pf-${3%%:*}.log" >&2
    return 1
}

secret() { $KUBECTL get secret "$SECRET" -o jsonpath="{.data.$1}" | base64 -d; }

$KUBECTL wait --for=condition=Ready --timeout=300s "ksvc/$SERVICE"
$KUBECTL wait --for=condition=Complete --timeout=300s job/minio-setup
$KUBECTL wait --for=condition=Ready --timeout=300s broker/default trigger/rasterfn-uploads
port_forward default svc/minio "$MINIO_LOCAL_PORT:9000"
port_forward kourier-system svc/kourier-internal "$KOURIER_LOCAL_PORT:80"
HOST=$($KUBECTL get ksvc "$SERVICE" -o jsonpath='{.status.url}' | sed -E 's#^https?://##')

echo "== event path: s3://$BUCKET/$KEY -> MinIO webhook -> relay -> Broker -> Trigger -> $SERVICE"
AWS_ENDPOINT_URL="http://127.0.0.1:$MINIO_LOCAL_PORT" \
AWS_ACCESS_KEY_ID="$(secret root-user)" \
AWS_SECRET_ACCESS_KEY="$(secret root-password)" \
AWS_DEFAULT_REGION=us-east-1 \
"$PY" - "$BUCKET" "$KEY" "$INPUT" "$TIMEOUT_S" <<'PYTHON'
import io
import sys
import time

import boto3
import numpy as np
from botocore.exceptions import ClientError

bucket, key, path, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
stem = key.rsplit(".", 1)[0]
s3 = boto3.client("s3")
s3.upload_file(path, bucket, key)
print(f"uploaded {path} to s3://{bucket}/{key}")
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    for suffix in (".npy", ".error.json"):
        try:
            body = s3.get_object(Bucket=bucket, Key=stem + suffix)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("NoSuchKey", "404"):
                raise
            continue
        if suffix == ".error.json":
            sys.exit(f"the function rejected the upload: {body.decode()}")
        mask = np.load(io.BytesIO(body))
        assert mask.shape == (512, 512), mask.shape
        print(f"s3://{bucket}/{stem}.npy: {mask.shape} {mask.dtype}, {float((mask > 0).mean()):.1%} positive")
        sys.exit(0)
    time.sleep(2)
sys.exit(
    f"no s3://{bucket}/{stem}.npy after {timeout:.0f} s: see kubectl logs deploy/rasterfn-relay"
    " and kubectl logs -l serving.knative.dev/service=rasterfn"
)
PYTHON

echo "== HTTP path: POST /inference via kourier-internal (Host: $HOST)"
curl -fsS -X POST -H "Host: $HOST" "http://127.0.0.1:$KOURIER_LOCAL_PORT/inference" \
    -F "file=@./$INPUT" --output "$OUT_DIR/output.npy"
"$PY" -c "import numpy as np, sys; a = np.load(sys.argv[1]); assert a.shape == (512, 512), a.shape; print('inference:', a.shape, a.dtype)" "$OUT_DIR/output.npy"

echo "== metrics"
curl -fsS -H "Host: $HOST" "http://127.0.0.1:$KOURIER_LOCAL_PORT/metrics" | grep '^rasterfn_http_requests_total' || true
echo "knative smoke test passed"
