# The function's role: exactly what handler/process.py and handler/storage.py do, on exactly these resources.

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name               = "${var.name}-function"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy" "lambda" {
  name   = "${var.name}-function"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda.json
}

# What the function writes beside each input, by OUTPUTS format (handler/objects.py's product_keys; the COG's
# name follows OUTPUT_MODE). The role may write exactly what var.outputs and var.output_mode make it write, not
# every output suffix: the Lambda's OUTPUTS and OUTPUT_MODE come from the same variables in the same apply, so
# they cannot disagree, and a deployment without cog or stac gets no write access to *.TIF, *.png or *.stac.json.
locals {
  cog_suffixes = { mask = ".mask.TIF", "mask-uint8" = ".mask.TIF", score = ".score.TIF" }
  cog_suffix   = local.cog_suffixes[lower(coalesce(var.output_mode, "mask"))]
  product_suffixes = {
    npy  = [".npy"]
    cog  = [local.cog_suffix]
    stac = [".thumb.png", ".stac.json"]
  }
  written_suffixes = distinct(flatten([for format in var.outputs : local.product_suffixes[format]]))
  # The objects the function writes (conditional PutObject, multipart above 64 MB), HEADs and may abort.
  product_objects = [for suffix in local.written_suffixes : "${local.output_bucket_arn}/${local.output_key_prefix}*${suffix}"]
  error_markers   = "${local.output_bucket_arn}/${local.output_key_prefix}*.error.json"
}

data "aws_iam_policy_document" "lambda" {
  statement {
    sid       = "ReadUploads"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = ["${aws_s3_bucket.input.arn}/${var.input_prefix}*"]
  }

  # Without ListBucket a missing object answers 403 instead of 404, and the handler could not tell "deleted
  # since the event" (skip) from "not allowed" (deployment fault).
  statement {
    sid       = "TellMissingFromForbidden"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.input.arn, local.output_bucket_arn] # the same ARN twice is fine for IAM
  }

  # Only the outputs var.outputs names (locals above) and the error markers: never an upload, nor an output
  # this deployment does not produce.
  statement {
    sid       = "WriteOutputsAndErrorMarkers"
    actions   = ["s3:PutObject"]
    resources = concat(local.product_objects, [local.error_markers])
  }

  # HeadObject on an existing output or error marker: a redelivered event whose result is already there is a
  # duplicate, and nothing is downloaded again; its ETag is what a conditional overwrite (If-Match) names.
  statement {
    sid       = "SeeEarlierResults"
    actions   = ["s3:GetObject"]
    resources = concat(local.product_objects, [local.error_markers])
  }

  # Outputs above 64 MB go up in parts; a failed upload is aborted instead of waiting for the lifecycle rule.
  statement {
    sid       = "AbortFailedOutputUploads"
    actions   = ["s3:AbortMultipartUpload"]
    resources = local.product_objects
  }

  # A stale error marker is removed once its raster succeeds (exactly the version seen, hence
  # DeleteObjectVersion in the versioned bucket); outputs and uploads are never deleted.
  statement {
    sid       = "RemoveStaleErrorMarkers"
    actions   = ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    resources = [local.error_markers]
  }

  statement {
    sid = "ConsumeUploadEvents"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes",
      "sqs:ChangeMessageVisibility",
    ]
    resources = [aws_sqs_queue.uploads.arn]
  }

  # Objects, messages and the environment are encrypted with the project key.
  statement {
    sid       = "UseTheProjectKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }

  # An output bucket or MODEL_URI bucket encrypted under another key: S3 asks KMS on the function's behalf,
  # so the grant is for calls made through S3 only.
  dynamic "statement" {
    for_each = length(var.extra_kms_key_arns) == 0 ? [] : [var.extra_kms_key_arns]
    content {
      sid       = "UseOtherBucketsKeysThroughS3"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = statement.value
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${local.region}.amazonaws.com"]
      }
    }
  }

  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda.arn}:*"]
  }

  # X-Ray's PutTraceSegments/PutTelemetryRecords support no resource-level permissions: "*" is the only
  # valid resource (the actions themselves are named).
  statement {
    sid       = "SendTraces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }

  # MODEL_URI names one weights file (handler/model_source.py): that object only.
  dynamic "statement" {
    for_each = local.model_uri_match == null ? [] : [local.model_uri_match]
    content {
      sid       = "ReadModelWeights"
      actions   = ["s3:GetObject"]
      resources = ["arn:${local.partition}:s3:::${statement.value[0]}/${statement.value[1]}"]
    }
  }
}
