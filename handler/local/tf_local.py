"""``rasterfn tf-local``: ``terraform apply`` of infra/terraform onto the embedded moto stack, one upload through
what Terraform created, then ``terraform destroy``.

1. moto's server starts on 127.0.0.1 (:class:`~handler.local.moto_stack.MotoServer`); a throwaway copy of
   infra/terraform gets the moto override (:func:`~handler.local.terraform.moto_override`, each deviation
   named there) and local variables (:data:`LOCAL_VARIABLES`), and Terraform initialises and applies it.
2. The function's configuration is read back from moto's Lambda (``GetFunctionConfiguration``,
   ``ListEventSourceMappings``): its environment becomes the handler's, its timeout and memory the fake
   context's, the mapping's batch size and queue the local event-source mapping's. The queues, redrive and
   notification suffixes are compared with the stack ``rasterfn demo`` builds by hand, so the two agree.
3. ``data/test-1.tif`` goes to ``s3://<bucket>/<input_prefix>test-1.tif``; the bucket notification Terraform
   created sends the event to the queue Terraform created; :mod:`handler.local.local_esm` runs
   ``lambda_handler`` on it; the ``.npy`` beside the input is downloaded and checked.
4. ``terraform destroy`` removes everything, and the state must be empty afterwards.

Exit code 0 only when the demo's topology agrees, the mask is valid and the destroy left nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import rasterio

from handler import settings
from handler.local.demo import load_lambda_handler
from handler.local.local_esm import EsmConfig, Invocation, LocalEventSourceMapping
from handler.local.moto_stack import (
    DEFAULT_REGION,
    DLQ_RETENTION_S,
    MotoServer,
    StackSpec,
    client,
    local_aws_environ,
    patched_environ,
    queue_depth,
    verify_clients_local,
)
from handler.local.paths import SAMPLE_RASTER
from handler.local.results import ObjectResult, find_result, load_npy, validate_mask
from handler.local.terraform import (
    DEFAULT_PLUGIN_MIRROR,
    MOTO_DEVIATIONS,
    OVERRIDE_NAME,
    TF_DIR,
    Terraform,
    TerraformError,
    completed_lines,
    find_terraform,
    has_provider_mirror,
    moto_override,
    prepare_workdir,
)
from model.errors import ConfigError

INPUT_PREFIX = "scenes/"
# Terraform variables of the local run; everything else keeps the production defaults.
LOCAL_VARIABLES = {
    "image_tag": "tf-local",  # Lambda on moto does not pull the image; the tag only has to be valid
    "input_prefix": INPUT_PREFIX,
    "force_destroy": True,  # `terraform destroy` of a bucket holding the upload and its mask
}
# Added to the environment Terraform gave the function, for this process only: no X-Ray daemon and no
# CloudWatch here, and powertools would print each metric flush to stdout.
LOCAL_ONLY_ENV = {"POWERTOOLS_TRACE_DISABLED": "1", "POWERTOOLS_METRICS_DISABLED": "true"}
# Settings the function reads that are not Terraform's to set (the runtime's scratch directory).
_KEPT_FROM_PROCESS = {settings.ENV_TMP_DIR}
POLL_INTERVAL_S = 0.25
DEFAULT_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class DeployedFunction:
    """What moto's Lambda says Terraform created: the function and its SQS event-source mapping."""

    name: str
    environment: dict[str, str]
    timeout_s: int
    memory_mb: int
    esm: EsmConfig


def run_tf_local(args: argparse.Namespace, out: TextIO | None = None) -> int:
    mirror = Path(args.plugin_mirror) if args.plugin_mirror else None
    if mirror is None and has_provider_mirror(DEFAULT_PLUGIN_MIRROR):
        mirror = DEFAULT_PLUGIN_MIRROR
    return TfLocal(
        out=out or sys.stdout,
        terraform=getattr(args, "terraform", None),
        mirror=mirror,
        timeout_s=float(getattr(args, "timeout", DEFAULT_TIMEOUT_S)),
    ).run()


def handler_environ(
    function_env: Mapping[str, str], endpoint_url: str, region: str, current: Mapping[str, str]
) -> dict[str, str | None]:
    """The handler's environment: moto's endpoint and fake credentials, exactly the variables Terraform set
    (every other setting of handler/settings.py unset, as in Lambda), plus :data:`LOCAL_ONLY_ENV` (pure)."""
    env: dict[str, str | None] = dict(local_aws_environ(endpoint_url, region, current))
    env.update({name: None for name in settings.env_var_names() if name not in _KEPT_FROM_PROCESS})
    env.update(function_env)
    env.update(LOCAL_ONLY_ENV)
    return env


def read_back_function(lambda_client: Any, name: str, queue_url: str, queue_arn: str, region: str) -> DeployedFunction:
    """The function and mapping as moto's Lambda holds them; ConfigError when the mapping is missing."""
    config = lambda_client.get_function_configuration(FunctionName=name)
    mappings = [
        mapping
        for mapping in lambda_client.list_event_source_mappings(EventSourceArn=queue_arn)["EventSourceMappings"]
        if mapping["FunctionArn"] == config["FunctionArn"]
    ]
    if len(mappings) != 1:
        raise ConfigError(f"expected one event-source mapping from {queue_arn} to {name}, found {len(mappings)}")
    (mapping,) = mappings
    esm = EsmConfig(
        queue_url=queue_url,
        queue_arn=queue_arn,
        region=region,
        batch_size=int(mapping["BatchSize"]),
        max_batching_window_s=float(mapping.get("MaximumBatchingWindowInSeconds") or 0),
        report_batch_item_failures="ReportBatchItemFailures" in mapping.get("FunctionResponseTypes", []),
        function_name=config["FunctionName"],
        function_timeout_s=float(config["Timeout"]),
        memory_mb=int(config["MemorySize"]),
    )
    return DeployedFunction(
        name=config["FunctionName"],
        environment=dict(config.get("Environment", {}).get("Variables", {})),
        timeout_s=int(config["Timeout"]),
        memory_mb=int(config["MemorySize"]),
        esm=esm,
    )


def demo_topology_differences(
    spec: StackSpec, queue: Mapping[str, str], dlq: Mapping[str, str], suffixes: Sequence[str]
) -> list[str]:
    """Where the stack ``rasterfn demo`` builds by hand (:class:`StackSpec`'s defaults) differs from the queues
    and notification suffixes Terraform created, one line each; ``[]`` when they agree (pure)."""
    redrive = json.loads(queue.get("RedrivePolicy") or "{}")
    pairs = {
        "queue name": (spec.queue_name, queue.get("QueueArn", "").rpartition(":")[2]),
        "DLQ name": (spec.dlq_name, dlq.get("QueueArn", "").rpartition(":")[2]),
        "visibility timeout": (str(spec.visibility_timeout_s), queue.get("VisibilityTimeout")),
        "message retention": (str(spec.retention_s), queue.get("MessageRetentionPeriod")),
        "DLQ retention": (str(DLQ_RETENTION_S), dlq.get("MessageRetentionPeriod")),
        "maxReceiveCount": (spec.max_receive_count, redrive.get("maxReceiveCount")),
        "DLQ of the queue": (dlq.get("QueueArn"), redrive.get("deadLetterTargetArn")),
        "notification suffixes": (sorted(spec.suffixes), sorted(suffixes)),
    }
    return [f"{name}: demo {ours!r}, Terraform {theirs!r}" for name, (ours, theirs) in pairs.items() if ours != theirs]


class TfLocal:
    """One run: moto up, apply, read back, upload, wait, check, destroy."""

    def __init__(
        self,
        *,
        out: TextIO,
        terraform: str | None = None,
        mirror: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        region: str = DEFAULT_REGION,
        source: Path = TF_DIR,
        sample: Path = SAMPLE_RASTER,
    ) -> None:
        self.out = out
        self.terraform = terraform
        self.mirror = mirror
        self.timeout_s = timeout_s
        self.region = region
        self.source = source
        self.sample = sample

    def run(self) -> int:
        executable = find_terraform(self.terraform)
        if executable is None:
            raise ConfigError(f"tf-local needs terraform: {self.terraform or 'terraform'} is not on PATH")
        with tempfile.TemporaryDirectory(prefix="rasterfn-tf-local-") as tmp, MotoServer() as server:
            url = server.endpoint_url
            aws_env = local_aws_environ(url, self.region)
            workdir = prepare_workdir(
                Path(tmp) / "terraform",
                source=self.source,
                override=moto_override(url, self.region),
                variables=LOCAL_VARIABLES,
            )
            tf = Terraform.create(workdir, executable=executable, mirror=self.mirror, extra_env=aws_env)
            self._say(f"tf-local: moto on {url}; {tf.executable} on a copy of {self.source}")
            self._say(f"  provider from: {self.mirror or 'your CLI configuration (the registry)'}")
            self._say(f"  variables: {LOCAL_VARIABLES}")
            self._say(f"  local only ({OVERRIDE_NAME}, reasons in handler/local/terraform.py):")
            for deviation in MOTO_DEVIATIONS:
                self._say(f"    - {deviation}")
            tf.init()
            try:
                self._apply(tf)
                with patched_environ(aws_env):
                    verify_clients_local(url, self.region)
                    code = self._exercise(tf, url)
            except BaseException:
                self._destroy_after_failure(tf)
                raise
            code = self._destroy(tf) or code
        self._say("tf-local OK" if code == 0 else "tf-local FAILED")
        return code

    def _apply(self, tf: Terraform) -> None:
        t0 = time.perf_counter()
        output = tf.apply()
        created = completed_lines(output, ("Creation complete",))
        self._say(f"terraform apply: {len(created)} resources in {time.perf_counter() - t0:.1f} s")
        for address in tf.state_list():
            self._say(f"  {address}")

    def _exercise(self, tf: Terraform, url: str) -> int:
        outputs = tf.outputs()
        bucket, queue_url = outputs["bucket"], outputs["queue_url"]
        deployed = read_back_function(
            client("lambda", url, self.region), outputs["function_name"], queue_url, outputs["queue_arn"], self.region
        )
        self._say(
            f"function {deployed.name}: timeout {deployed.timeout_s} s, memory {deployed.memory_mb} MB, "
            f"batch size {deployed.esm.batch_size}, reads {deployed.esm.queue_arn}"
        )
        self._say(f"  environment from Terraform: {deployed.environment}")
        if differences := self._compare_with_demo(url, bucket, queue_url, outputs["dlq_url"]):
            for line in differences:
                self._say(f"FAILED: `rasterfn demo` builds a different topology: {line}")
            return 1
        with patched_environ(handler_environ(deployed.environment, url, self.region, os.environ)):
            handler = load_lambda_handler(url)
            s3 = client("s3", url, self.region)
            sqs = client("sqs", url, self.region)
            esm = LocalEventSourceMapping(sqs, deployed.esm, handler, on_result=self._on_result)
            key = INPUT_PREFIX + self.sample.name
            with esm:
                since = datetime.now(UTC)
                s3.upload_file(str(self.sample), bucket, key)
                self._say(f"uploaded s3://{bucket}/{key} ({self.sample.stat().st_size} bytes)")
                result = self._wait(s3, bucket, key, since, lambda: queue_depth(sqs, outputs["dlq_url"]))
            return self._check(s3, result)

    def _compare_with_demo(self, url: str, bucket: str, queue_url: str, dlq_url: str) -> list[str]:
        sqs, s3 = client("sqs", url, self.region), client("s3", url, self.region)
        queue = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
        dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
        notifications = s3.get_bucket_notification_configuration(Bucket=bucket).get("QueueConfigurations", [])
        suffixes = [
            rule["Value"]
            for config in notifications
            for rule in config["Filter"]["Key"]["FilterRules"]
            if rule["Name"].lower() == "suffix"
        ]
        differences = demo_topology_differences(StackSpec(), queue, dlq, suffixes)
        if not differences:
            self._say("  `rasterfn demo` builds the same queues, redrive and suffixes (handler/local/moto_stack.py)")
        return differences

    def _on_result(self, invocation: Invocation) -> None:
        state = "ok" if invocation.ok else f"failed: {invocation.error or invocation.failed_ids}"
        self._say(f"  invocation {invocation.request_id[:8]}: {len(invocation.message_ids)} record(s), {state}")

    def _wait(self, s3: Any, bucket: str, key: str, since: datetime, dlq_depth: Any) -> ObjectResult:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            result = find_result(s3, bucket, key, since=since)
            if result.status != "none":
                return result
            if dlq_depth() > 0:
                raise ConfigError(f"the event for {key} was dead-lettered")
            time.sleep(POLL_INTERVAL_S)
        raise ConfigError(f"no output for {key} after {self.timeout_s:.0f} s")

    def _check(self, s3: Any, result: ObjectResult) -> int:
        if result.status != "written" or result.key is None:
            self._say(f"FAILED: {result.input_key}: {result.status} {result.detail}")
            return 1
        obj = s3.get_object(Bucket=result.bucket, Key=result.key)
        array = load_npy(obj["Body"].read())
        with rasterio.open(self.sample) as src:
            shape = (src.height, src.width)
        problem = validate_mask(array, shape)
        self._say(f"output s3://{result.bucket}/{result.key}: {array.shape} {array.dtype}, {result.size} bytes")
        for name, value in sorted(obj.get("Metadata", {}).items()):
            self._say(f"  metadata {name}: {value}")
        if problem is not None:
            self._say(f"FAILED: not a valid mask: {problem}")
            return 1
        self._say(f"  a valid mask of the input's shape {shape}, {float(array.mean()):.1%} of pixels set")
        return 0

    def _destroy(self, tf: Terraform) -> int:
        t0 = time.perf_counter()
        output = tf.destroy()
        left = tf.state_list()
        destroyed = completed_lines(output, ("Destruction complete",))
        self._say(f"terraform destroy: {len(destroyed)} resources in {time.perf_counter() - t0:.1f} s")
        if left:
            self._say(f"FAILED: still in the state after destroy: {left}")
            return 1
        self._say("  the state is empty")
        return 0

    def _destroy_after_failure(self, tf: Terraform) -> None:
        # The failure that got us here is the one to report; a failed destroy only adds a line.
        try:
            self._destroy(tf)
        except TerraformError as exc:
            self._say(f"terraform destroy failed too (moto's state goes with the process): {exc}")

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)
