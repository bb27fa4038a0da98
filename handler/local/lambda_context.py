"""A realistic fake of the Lambda ``context`` object, for running ``lambda_handler`` outside Lambda.

It has the attributes Lambda's Python runtime (awslambdaric) sets and powertools reads (``function_name``,
``memory_limit_in_mb``, ``invoked_function_arn``, ``aws_request_id``, log group/stream) and a real deadline:
``get_remaining_time_in_millis()`` counts down from the function timeout, so the handler's "stop before the
timeout" logic behaves as it does in AWS. Shared by ``rasterfn replay`` and the local event-source mapping.

Example:
    >>> ctx = make_context(timeout_s=60)
    >>> ctx.invoked_function_arn
    'arn:aws:lambda:us-east-1:123456789012:function:rasterfn'
    >>> 59_000 < ctx.get_remaining_time_in_millis() <= 60_000
    True
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_FUNCTION_NAME = "rasterfn"
DEFAULT_FUNCTION_VERSION = "$LATEST"
# Terraform's defaults (infra/terraform/variables.tf): function_timeout_seconds and memory_mb.
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_MB = 3008
DEFAULT_REGION = "us-east-1"
# The account id moto (and the AWS docs' examples) use: obviously not a real account.
DEFAULT_ACCOUNT_ID = "123456789012"


@dataclass(frozen=True)
class FakeLambdaContext:
    """What Lambda passes as ``context``; the deadline is on ``clock`` (monotonic seconds)."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    deadline: float
    timeout_s: float
    identity: object | None = None
    client_context: object | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - self.clock()) * 1000))

    @property
    def timed_out(self) -> bool:
        return self.clock() >= self.deadline


def make_context(
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    function_name: str = DEFAULT_FUNCTION_NAME,
    memory_mb: int = DEFAULT_MEMORY_MB,
    region: str = DEFAULT_REGION,
    account_id: str = DEFAULT_ACCOUNT_ID,
    request_id: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FakeLambdaContext:
    """A fresh context for one invocation whose deadline is ``timeout_s`` from now."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    day = time.strftime("%Y/%m/%d", time.gmtime())
    return FakeLambdaContext(
        function_name=function_name,
        function_version=DEFAULT_FUNCTION_VERSION,
        invoked_function_arn=f"arn:aws:lambda:{region}:{account_id}:function:{function_name}",
        memory_limit_in_mb=memory_mb,
        aws_request_id=request_id or str(uuid.uuid4()),
        log_group_name=f"/aws/lambda/{function_name}",
        log_stream_name=f"{day}/[{DEFAULT_FUNCTION_VERSION}]{uuid.uuid4().hex}",
        deadline=clock() + timeout_s,
        timeout_s=timeout_s,
        clock=clock,
    )
