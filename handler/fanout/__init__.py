"""Fan-out: a raster too large for one invocation, sharded across parallel ones (see ``coordinator``)."""

from handler.fanout.coordinator import ShardResult, fail_shard_job, fan_out_if_large, run_shard
from handler.fanout.jobs import job_id
from handler.fanout.messages import ShardMessage, is_shard_message, parse_shard_message, shard_from_cloudevent
from handler.fanout.sender import sender_from_settings

__all__ = [
    "ShardMessage",
    "ShardResult",
    "fail_shard_job",
    "fan_out_if_large",
    "is_shard_message",
    "job_id",
    "parse_shard_message",
    "run_shard",
    "sender_from_settings",
    "shard_from_cloudevent",
]
