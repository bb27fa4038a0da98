# One customer-managed key for everything at rest: uploads and outputs, both queues, the logs, the function's
# environment, the images and the alarm topic. Services that write encrypted data on our behalf are named in
# the key policy: S3 (into the queue), CloudWatch (into the alarm topic), CloudWatch Logs (this log group only).

resource "aws_kms_key" "this" {
  description             = "${var.name}: S3, SQS, CloudWatch Logs, Lambda environment, ECR, SNS"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy, not an IAM policy: "*" is this key, and the root statement is AWS's default that delegates to IAM.
  #checkov:skip=CKV_AWS_111:A key policy, not an IAM policy: "*" is this key; service statements are bound to this account or log group.
  #checkov:skip=CKV_AWS_356:A key policy, not an IAM policy: its only valid Resource is "*", meaning this key.
  # AWS's default key policy statement: IAM policies in this account decide who else may use the key,
  # which is what lets uploaders (and the function's role) use it. Without it the key is unmanageable.
  statement {
    sid       = "AccountAdministersKeyThroughIam"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy "*" means this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # AWS's documented statements for S3 notifications into an SSE-KMS queue and CloudWatch alarms into an
  # SSE-KMS topic. No source conditions: those services do not document passing them to KMS here, and the
  # queue policy (aws:SourceArn = this bucket) already decides who may send.
  statement {
    sid       = "S3NotificationsToEncryptedQueue"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsToEncryptedTopic"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncryptsFunctionLogs"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/lambda/${local.function_name}"]
    }
  }
}
