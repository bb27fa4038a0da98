"""``rasterfn demo --workers N``: one generated scene above ``MAX_PIXELS``, sharded over N local "Lambdas".

Each worker is a process with its own Lambda INIT (model loaded once) and its own local event-source mapping
(:mod:`handler.local.local_esm`) on the embedded moto queue, as N concurrent execution environments would be.
The upload's notification makes one of them the coordinator; stats and predict shards follow on the same
queue; the assembled ``.npy`` is then checked byte for byte against a single-process ``predict_file`` of the
same scene (``MAX_PIXELS`` lifted for it). Prints each shard as it finishes, the job's status line, wall times
and each process's peak RSS. The scene is generated (tiles of a ``model.training.synthetic`` scene), never
committed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as stdlib_queue
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from handler.local.moto_stack import MotoServer, client, create_stack, local_aws_environ, patched_environ

SCENE_KEY = "scenes/fanout-demo.tif"
OUTPUT_KEY = "scenes/fanout-demo.npy"
ERROR_KEY = "scenes/fanout-demo.error.json"
POLL_S = 2.0


def run_fanout_demo(args: argparse.Namespace) -> int:
    workers, size = args.workers, args.scene_size
    max_pixels = args.max_pixels or size * size * 3 // 4
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="rasterfn-fanout-") as tmp, MotoServer() as server:
        scene = write_demo_scene(Path(tmp) / "scene.tif", size)
        aws_env = local_aws_environ(server.endpoint_url)
        with patched_environ(aws_env):
            stack = create_stack(server.endpoint_url)
            s3 = client("s3", server.endpoint_url)
        env = {
            **aws_env,
            "FANOUT_QUEUE_URL": stack.queue_url,
            "MAX_PIXELS": str(max_pixels),
            "FANOUT_MAX_SHARDS": str(args.max_shards or 2 * workers),
            "POWERTOOLS_METRICS_DISABLED": "true",
            "TMPDIR": tmp,
        }
        print(f"scene {size} x {size} ({size * size:,} px) > MAX_PIXELS {max_pixels:,}: {workers} workers")
        progress, stop = ctx.Queue(), ctx.Event()
        procs = [
            ctx.Process(target=_worker, args=(env, stack.queue_url, stack.queue_arn, i, progress, stop))
            for i in range(workers)
        ]
        for proc in procs:
            proc.start()
        _wait_ready(progress, workers)
        started = time.perf_counter()
        s3.upload_file(str(scene), stack.bucket, SCENE_KEY)
        done = _follow(s3, stack.bucket, progress, started, args.timeout, server.endpoint_url)
        wall = time.perf_counter() - started
        stop.set()
        rss = _collect_rss(progress, workers)
        for proc in procs:
            proc.join(timeout=30)
        if not done:
            print(f"FAILED: no {OUTPUT_KEY} within {args.timeout:.0f} s")
            return 1
        assembled = Path(tmp) / "assembled.npy"
        s3.download_file(stack.bucket, OUTPUT_KEY, str(assembled))
        single = ctx.Queue()
        proc = ctx.Process(target=_single, args=(str(scene), str(Path(tmp) / "single.npy"), single))
        proc.start()
        single_seconds, single_rss = single.get(timeout=args.timeout)
        proc.join()
        identical = assembled.read_bytes() == (Path(tmp) / "single.npy").read_bytes()
    print(f"fan-out: {wall:.1f} s wall with {workers} workers; single process: {single_seconds:.1f} s")
    for index, peak in sorted(rss.items()):
        print(f"worker {index}: peak RSS {peak / 1024**3:.2f} GB")
    print(f"single process: peak RSS {single_rss / 1024**3:.2f} GB")
    print("assembled .npy == single-process predict_file: " + ("yes, byte for byte" if identical else "NO"))
    return 0 if identical else 1


def write_demo_scene(path: Path, size: int) -> Path:
    from model.training.synthetic import make_scene, write_scene_tif

    base, _ = make_scene(seed=7, size=1024)
    reps = -(-size // 1024)
    image = np.tile(base, (1, reps, reps))[:, :size, :size]
    return write_scene_tif(path, np.ascontiguousarray(image))


def _worker(env: dict[str, str | None], queue_url: str, queue_arn: str, index: int, progress, stop) -> None:
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    from handler.fanout import is_shard_message, parse_shard_message
    from handler.local.demo import load_lambda_handler
    from handler.local.local_esm import EsmConfig, LocalEventSourceMapping

    handler = load_lambda_handler(env["AWS_ENDPOINT_URL"] or "")

    def on_result(invocation: Any) -> None:
        for record in invocation.event["Records"]:
            body = record["body"]
            what = "coordinator (upload event)"
            if is_shard_message(body):
                message = parse_shard_message(body)
                what = f"{message.phase} shard {message.index}"
            state = "ok" if invocation.ok else f"failed: {invocation.error}"
            progress.put(("line", index, f"{what}: {state} in {invocation.seconds:.1f} s"))

    sqs = client("sqs", env["AWS_ENDPOINT_URL"])
    esm = LocalEventSourceMapping(sqs, EsmConfig(queue_url, queue_arn), handler, on_result=on_result)
    progress.put(("ready", index, ""))
    with esm:
        stop.wait()
    progress.put(("rss", index, peak_rss_bytes()))


def _single(scene: str, out: str, answer) -> None:
    """One process, the model loaded as the function loads it (same engine), ``MAX_PIXELS`` lifted."""
    import dataclasses

    from handler.model_source import load_runtime_model
    from handler.runtime import options_from_settings
    from handler.settings import get_settings
    from model.predictor.predict import predict_file

    settings = get_settings()
    model = load_runtime_model(settings)
    options = dataclasses.replace(options_from_settings(settings), max_pixels=10**12, progress=False)
    started = time.perf_counter()
    predict_file(model, scene, out, options)
    answer.put((time.perf_counter() - started, peak_rss_bytes()))


def peak_rss_bytes() -> int:
    """This process's own peak RSS: ``VmHWM``, not ``ru_maxrss``, which Linux carries over from the parent
    across fork and exec (so a worker would report the demo process's peak when that is higher)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: the best there is


def _wait_ready(progress, workers: int) -> None:
    ready = 0
    while ready < workers:
        kind, index, _ = progress.get(timeout=600)
        ready += kind == "ready"
        print(f"worker {index} ready (model loaded)")


def _follow(s3, bucket: str, progress, started: float, timeout: float, endpoint: str) -> bool:
    from handler.fanout.status import describe, find_job_status
    from handler.storage import Storage

    storage, last = Storage(s3), ""
    while time.perf_counter() - started < timeout:
        try:
            _kind, index, text = progress.get(timeout=POLL_S)
            print(f"[{time.perf_counter() - started:6.1f} s] worker {index}: {text}")
        except stdlib_queue.Empty:
            pass
        status = find_job_status(storage, bucket, bucket, SCENE_KEY)
        if status is not None and describe(status) != last:
            last = describe(status)
            print(f"[{time.perf_counter() - started:6.1f} s] {last}")
        if status is not None and (status.done or status.failure):
            return status.done
        if _exists(s3, bucket, ERROR_KEY):
            print(f"refused: see s3://{bucket}/{ERROR_KEY}")
            return False
    return False


def _collect_rss(progress, workers: int) -> dict[int, int]:
    rss: dict[int, int] = {}
    deadline = time.monotonic() + 60
    while len(rss) < workers and time.monotonic() < deadline:
        try:
            kind, index, value = progress.get(timeout=5)
        except stdlib_queue.Empty:
            continue
        if kind == "rss":
            rss[index] = int(value)
    return rss


def _exists(s3, bucket: str, key: str) -> bool:
    return bool(s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"))
