output "region" {
  description = "Region everything was created in."
  value       = local.region
}

output "bucket" {
  description = "Upload rasters here (s3://BUCKET/<input_prefix>.../scene.tif); the .npy appears beside them."
  value       = aws_s3_bucket.input.bucket
}

output "output_bucket" {
  description = "Where the masks are written."
  value       = local.output_bucket_name
}

output "queue_url" {
  description = "The upload-events queue."
  value       = aws_sqs_queue.uploads.url
}

output "queue_arn" {
  description = "ARN of the upload-events queue."
  value       = aws_sqs_queue.uploads.arn
}

output "dlq_url" {
  description = "Dead-letter queue: events that failed max_receive_count times."
  value       = aws_sqs_queue.dead_letters.url
}

output "dlq_arn" {
  description = "ARN of the dead-letter queue (the source of a redrive back to the queue)."
  value       = aws_sqs_queue.dead_letters.arn
}

output "function_name" {
  description = "The Lambda function."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = aws_lambda_function.this.arn
}

output "ecr_repository_url" {
  description = "Push images here (make push-image)."
  value       = aws_ecr_repository.this.repository_url
}

output "kms_key_arn" {
  description = "The key everything is encrypted with: uploaders need kms:GenerateDataKey, readers kms:Decrypt."
  value       = aws_kms_key.this.arn
}

output "log_group" {
  description = "The function's CloudWatch log group."
  value       = aws_cloudwatch_log_group.lambda.name
}
