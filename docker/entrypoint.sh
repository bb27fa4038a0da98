#!/bin/sh
# One image, two runtimes (see the Dockerfile):
#   AWS Lambda sets AWS_LAMBDA_RUNTIME_API -> the Lambda runtime interface client runs the handler.
#     Lambda passes the function's image_config.command (if any) as arguments: a handler name, as with
#     Lambda's own base images. Without one it is handler.lambda_function.lambda_handler.
#   Anything else (Knative, docker run) -> the HTTP function on $PORT (Knative injects PORT).
#     Arguments run a rasterfn sub-command instead: `docker run IMAGE predict scene.tif -o /tmp/x.npy`.
# exec: the runtime replaces this shell (PID 1 in a container), so it receives SIGTERM itself on shutdown.
set -eu

DEFAULT_LAMBDA_HANDLER="handler.lambda_function.lambda_handler"

if [ -n "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    exec python -m awslambdaric "${1:-$DEFAULT_LAMBDA_HANDLER}"
fi

if [ "$#" -gt 0 ]; then
    exec rasterfn "$@"
fi

exec rasterfn serve --host 0.0.0.0 --port "${PORT:-8080}"
