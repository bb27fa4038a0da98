data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  # `id` is the region's name in provider 5.x and 6.x alike (`name` is deprecated in 6.x, `region` new in it).
  region = coalesce(var.region, data.aws_region.current.id)

  function_name = var.name
  # Globally unique without a random suffix: the account and region already make it so.
  bucket_name        = coalesce(var.bucket_name, "${var.name}-input-${local.account_id}-${local.region}")
  output_bucket_name = coalesce(var.output_bucket_name, local.bucket_name)
  output_bucket_arn  = "arn:${local.partition}:s3:::${local.output_bucket_name}"
  separate_output    = local.output_bucket_name != local.bucket_name

  # Output keys are OUTPUT_PREFIX + the input key with its suffix replaced by an output's (.npy, .error.json,
  # .mask.TIF, ...: handler/objects.py), so they live under output_prefix + input_prefix.
  output_key_prefix = "${var.output_prefix}${var.input_prefix}"

  image_uri = "${aws_ecr_repository.this.repository_url}:${var.image_tag}"
  # `make tf-apply` adds this tag to the image it deploys; the ECR lifecycle policy never expires those first.
  deployed_tag_prefix = "deployed-"

  # AWS's guidance for SQS-triggered functions: visibility timeout >= 6 x the function timeout (plus the
  # batching window), so a message is never redelivered while an invocation may still be working on it.
  queue_visibility_timeout_seconds = 6 * var.function_timeout_seconds + var.maximum_batching_window_seconds

  model_uri_match = var.model_uri == null ? null : regex("^s3://([^/]+)/(.*)$", var.model_uri)

  # Only what differs from the code's defaults (handler/settings.py), plus the suffixes the bucket
  # notifications filter on, so the function and the notifications cannot disagree, and OUTPUTS, always: the
  # role's write permissions are derived from the same variable (iam.tf), so the two cannot disagree either.
  lambda_settings = {
    INPUT_SUFFIXES   = join(",", var.input_suffixes)
    PRECISION        = var.precision
    ENGINE           = var.engine
    OUTPUT_MODE      = var.output_mode
    OUTPUTS          = join(",", var.outputs)
    MAX_PIXELS       = var.max_pixels == null ? null : tostring(var.max_pixels)
    MAX_INPUT_BYTES  = var.max_input_bytes == null ? null : tostring(var.max_input_bytes)
    OUTPUT_BUCKET    = local.separate_output ? local.output_bucket_name : null
    OUTPUT_PREFIX    = var.output_prefix == "" ? null : var.output_prefix
    MIN_REMAINING_MS = var.min_remaining_ms == null ? null : tostring(var.min_remaining_ms)
    MODEL_URI        = var.model_uri
    MODEL_CARD       = var.model_card
    # Issue 9: the function refuses events for any other bucket or prefix, before any S3 call; and turns a
    # file that crashed it on every receive into <stem>.error.json on the last one instead of a DLQ entry.
    ALLOWED_BUCKETS   = "${local.bucket_name}/${var.input_prefix}"
    MAX_RECEIVE_COUNT = tostring(var.max_receive_count)
  }
  # Read by aws-lambda-powertools itself (Logger, Metrics), not by handler/settings.py.
  powertools_settings = {
    POWERTOOLS_SERVICE_NAME      = var.name
    POWERTOOLS_METRICS_NAMESPACE = var.metrics_namespace
    POWERTOOLS_LOG_LEVEL         = var.log_level
  }
  lambda_environment = merge(
    { for name, value in local.lambda_settings : name => value if value != null },
    { for name, value in local.fanout_settings : name => value if value != null }, # fanout.tf
    local.powertools_settings,
  )

  alarm_actions = compact([var.alarm_topic_arn, try(aws_sns_topic.alarms[0].arn, null)])
}
