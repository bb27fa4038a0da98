# Fan-out (handler/fanout): a raster estimated above fanout_threshold_seconds is split into row bands that
# parallel invocations process. Shard messages go on the function's own queue (aws_sqs_queue.uploads): the
# same event-source mapping, retries, visibility timeout and dead-letter queue as uploads, and no second
# trigger. Concurrency stays capped by maximum_concurrency / reserved_concurrency (a job takes at most
# fanout_max_shards of them at once).
#
# Recursion: upload -> coordinator -> stats shards -> predict shards is two hops of the function's own
# SQS messages per job, then it stops; Lambda's recursive-loop detection only stops a chain of ~16
# invocations carrying one trace, so the default recursion guard (Terminate) stays on.

variable "fanout_enabled" {
  description = "Shard rasters too large for one invocation across parallel invocations (FANOUT_QUEUE_URL)."
  type        = bool
  default     = true
}

variable "fanout_seconds_per_tile" {
  description = "Measured seconds per 512 x 512 tile on this function's memory size (make bench); null: code default."
  type        = number
  default     = null
}

variable "fanout_threshold_seconds" {
  description = "Estimated seconds above which a raster is sharded; null: the code default (300)."
  type        = number
  default     = null
}

variable "fanout_max_shards" {
  description = "Most row bands per raster (each one invocation per phase); null: the code default (50)."
  type        = number
  default     = null

  validation {
    condition     = var.fanout_max_shards == null ? true : var.fanout_max_shards >= 1 && var.fanout_max_shards <= 10000
    error_message = "fanout_max_shards must be between 1 and 10000 (S3's part limit)."
  }
}

variable "max_scene_pixels" {
  description = "Largest raster a fan-out job accepts (MAX_PIXELS bounds each shard); null: the code default (5e9)."
  type        = number
  default     = null
}

variable "fanout_job_expiration_days" {
  description = "Days after which fan-out job objects (under .rasterfn-jobs/) expire."
  type        = number
  default     = 7
}

locals {
  fanout_job_prefix = ".rasterfn-jobs/"
  # The outputs a sharded job assembles from parts (iam.tf's table): the .npy and the COG, as var.outputs has them.
  sharded_suffixes = distinct(flatten([for format in var.outputs : local.product_suffixes[format] if format != "stac"]))
  sharded_objects  = [for suffix in local.sharded_suffixes : "${local.output_bucket_arn}/${local.output_key_prefix}*${suffix}"]
  fanout_settings = {
    FANOUT_QUEUE_URL         = var.fanout_enabled ? aws_sqs_queue.uploads.url : null
    FANOUT_SECONDS_PER_TILE  = var.fanout_seconds_per_tile == null ? null : tostring(var.fanout_seconds_per_tile)
    FANOUT_THRESHOLD_SECONDS = var.fanout_threshold_seconds == null ? null : tostring(var.fanout_threshold_seconds)
    FANOUT_MAX_SHARDS        = var.fanout_max_shards == null ? null : tostring(var.fanout_max_shards)
    MAX_SCENE_PIXELS         = var.max_scene_pixels == null ? null : tostring(var.max_scene_pixels)
  }
}

resource "aws_iam_role_policy" "fanout" {
  count  = var.fanout_enabled ? 1 : 0
  name   = "${var.name}-fanout"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.fanout.json
}

data "aws_iam_policy_document" "fanout" {
  # The .npy (and the COG, when var.outputs has cog) is one multipart upload: created by the coordinator, a
  # part per shard, completed by the last. The quicklook and STAC Item are single puts (iam.tf's statements).
  statement {
    sid       = "AssembleShardedOutputs"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = local.sharded_objects
  }

  # Job state: small objects under the reserved prefix (conditional puts, reads, listing per job).
  statement {
    sid       = "KeepJobState"
    actions   = ["s3:PutObject", "s3:GetObject"]
    resources = ["${local.output_bucket_arn}/${local.fanout_job_prefix}*"]
  }

  statement {
    sid       = "CountJobState"
    actions   = ["s3:ListBucket"]
    resources = [local.output_bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.fanout_job_prefix}*"]
    }
  }

  statement {
    sid       = "SendShardMessages"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.uploads.arn]
  }
}
