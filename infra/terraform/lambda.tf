resource "aws_cloudwatch_log_group" "lambda" {
  name              = "/aws/lambda/${local.function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_116:SQS-triggered: failed events go to the queue's redrive DLQ; a function DLQ only applies to async invokes.
  #checkov:skip=CKV_AWS_117:Reaches only S3, SQS, KMS, Logs and X-Ray public endpoints; a VPC adds NAT or five endpoints and nothing else. Add vpc_config if policy requires.
  #checkov:skip=CKV_AWS_272:Lambda code signing applies to .zip packages only; images come from an immutable, scanned ECR repository.
  function_name = local.function_name
  description   = "GeoTIFF segmentation: s3://${local.bucket_name}/${var.input_prefix}*.tif -> .npy beside it"
  role          = aws_iam_role.lambda.arn

  # The image's entrypoint (docker/entrypoint.sh) starts awslambdaric with
  # handler.lambda_function.lambda_handler whenever AWS_LAMBDA_RUNTIME_API is set, so no image_config
  # (command/entry_point) is needed; set image_config.command only to run a different handler.
  package_type  = "Image"
  image_uri     = local.image_uri
  architectures = ["x86_64"]

  memory_size = var.memory_mb
  timeout     = var.function_timeout_seconds
  ephemeral_storage {
    size = var.ephemeral_storage_mb
  }
  # null leaves the function unreserved (the provider's -1): a reservation fails on accounts whose unreserved
  # concurrency would fall under AWS's minimum of 100, which is every new account (quota 1000 or less).
  reserved_concurrent_executions = var.reserved_concurrency

  kms_key_arn = aws_kms_key.this.arn
  environment {
    variables = local.lambda_environment
  }

  tracing_config {
    mode = "Active"
  }

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.lambda.name
  }

  depends_on = [
    aws_iam_role_policy.lambda,
    aws_ecr_repository_policy.this,
  ]
}

resource "aws_lambda_event_source_mapping" "uploads" {
  event_source_arn = aws_sqs_queue.uploads.arn
  function_name    = aws_lambda_function.this.arn

  batch_size                         = var.batch_size
  maximum_batching_window_in_seconds = var.maximum_batching_window_seconds
  # The handler answers {"batchItemFailures": [...]}: only failed records return to the queue.
  function_response_types = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.maximum_concurrency
  }

  lifecycle {
    precondition {
      # Unreserved (null): nothing to compare with; the account's concurrency is the limit.
      condition     = var.maximum_concurrency <= coalesce(var.reserved_concurrency, var.maximum_concurrency)
      error_message = "maximum_concurrency must not exceed reserved_concurrency: the extra pollers would only be throttled."
    }
    precondition {
      condition     = var.batch_size <= 10 || var.maximum_batching_window_seconds >= 1
      error_message = "SQS batch sizes above 10 need maximum_batching_window_seconds >= 1."
    }
  }
}
