"""The CloudEvent types rasterfn sends on Knative: the Triggers of infra/knative filter on these strings.

Each Trigger matches one type exactly, and the function's replies match none of them, so no event ever
loops back to the function it came from:

- :data:`UPLOAD_EVENT_TYPE`: an upload notification the relay wraps for the Broker (Trigger ``rasterfn-uploads``).
- :data:`SHARD_EVENT_TYPE`: a fan-out shard message the function sends to ``K_SINK`` (Trigger ``rasterfn-shards``).
- :data:`REPLY_TYPE_PREFIX` + ``created`` / ``skipped`` / ``rejected`` / ``accepted``: the function's answer to an
  upload event (no Trigger subscribes to it; a consumer of masks can).

This module imports nothing, so the relay (which loads no model) can share it.
"""

UPLOAD_EVENT_TYPE = "dev.rasterfn.object.notification"
SHARD_EVENT_TYPE = "dev.rasterfn.shard"
REPLY_TYPE_PREFIX = "dev.rasterfn.mask."
# The types the relay's /deliver forwards to the function (those of the Triggers that subscribe it).
DELIVERED_TYPES = (UPLOAD_EVENT_TYPE, SHARD_EVENT_TYPE)
