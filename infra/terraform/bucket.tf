# The input bucket: users upload rasters here, the function writes its outputs beside each raster.

resource "aws_s3_bucket" "input" {
  #checkov:skip=CKV_AWS_144:Cross-region replication needs a second bucket in another region: an account-level DR choice; versioning protects uploads here.
  #checkov:skip=CKV_AWS_18:Access logs are opt-in (var.access_log_bucket names an existing log bucket); CloudTrail S3 data events are the alternative.
  bucket        = local.bucket_name
  force_destroy = var.force_destroy

  lifecycle {
    # The derived name holds the account (12) and region (up to 14): a 41-character name fits the other
    # resources but not S3's 63, and S3 would only say so halfway through an apply.
    precondition {
      condition     = length(local.bucket_name) <= 63 && can(regex("^[a-z0-9][a-z0-9.-]+[a-z0-9]$", local.bucket_name))
      error_message = "The input bucket name \"${local.bucket_name}\" (${length(local.bucket_name)} characters) is not a valid S3 bucket name (at most 63): shorten name (the bucket is <name>-input-<account>-<region>) or set bucket_name."
    }
  }
}

resource "aws_s3_bucket_ownership_controls" "input" {
  bucket = aws_s3_bucket.input.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "input" {
  bucket                  = aws_s3_bucket.input.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Versioning: nothing a user uploaded is lost to an overwrite or an accidental delete.
resource "aws_s3_bucket_versioning" "input" {
  bucket = aws_s3_bucket.input.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "input" {
  bucket = aws_s3_bucket.input.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    # One data key per bucket instead of one KMS call per object: cheaper and no KMS throttling.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "input" {
  bucket = aws_s3_bucket.input.id

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    # Every object: an empty prefix. (An empty `filter {}` warns on current providers, "an error in a future version".)
    filter {
      prefix = ""
    }
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  # Fan-out job state (fanout.tf): small objects, useless once the job is done or abandoned.
  rule {
    id     = "expire-fanout-job-objects"
    status = "Enabled"
    filter {
      prefix = local.fanout_job_prefix
    }
    expiration {
      days = var.fanout_job_expiration_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  # Also sharded .npy / COG uploads whose job failed or was abandoned (the function aborts them when it can).
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {
      prefix = ""
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.input]
}

resource "aws_s3_bucket_logging" "input" {
  count         = var.access_log_bucket == null ? 0 : 1
  bucket        = aws_s3_bucket.input.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3/${local.bucket_name}/"
}

resource "aws_s3_bucket_policy" "input" {
  bucket = aws_s3_bucket.input.id
  policy = data.aws_iam_policy_document.input_bucket.json

  # S3 rejects a policy write while the public access block is still being applied.
  depends_on = [aws_s3_bucket_public_access_block.input]
}

data "aws_iam_policy_document" "input_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.input.arn, "${aws_s3_bucket.input.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyOutdatedTls"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.input.arn, "${aws_s3_bucket.input.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

# Object-created events for the raster suffixes go to the queue. The function's own outputs (<stem>.npy,
# .mask.TIF / .score.TIF, .thumb.png, .stac.json and .error.json) never match: S3's suffix filter is
# case-sensitive, the COG's upper-case .TIF is not .tif, and var.input_suffixes refuses any suffix that would
# match one of them (variables.tf), so the function cannot trigger itself.
resource "aws_s3_bucket_notification" "input" {
  bucket = aws_s3_bucket.input.id

  dynamic "queue" {
    for_each = toset(var.input_suffixes)
    content {
      id            = "${var.name}${replace(queue.value, ".", "-")}"
      queue_arn     = aws_sqs_queue.uploads.arn
      events        = ["s3:ObjectCreated:*"]
      filter_prefix = var.input_prefix == "" ? null : var.input_prefix
      filter_suffix = queue.value
    }
  }

  # S3 sends a test message when the configuration is saved: the queue must already accept it.
  depends_on = [aws_sqs_queue_policy.uploads]
}
