# The AWS provider as every `terraform test` file here mocks it: fixed account, region and ARNs, so plans
# and mocked applies need no credentials and no network (mock_provider "aws" { source = "./tests/mocks" }).

mock_data "aws_caller_identity" {
  defaults = { account_id = "123456789012" }
}
mock_data "aws_partition" {
  defaults = { partition = "aws" }
}
mock_data "aws_region" {
  defaults = { id = "ap-southeast-2", name = "ap-southeast-2" }
}
mock_data "aws_iam_policy_document" {
  defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
}
mock_resource "aws_kms_key" {
  defaults = { arn = "arn:aws:kms:ap-southeast-2:123456789012:key/00000000-0000-0000-0000-000000000000" }
}
mock_resource "aws_sqs_queue" {
  defaults = { arn = "arn:aws:sqs:ap-southeast-2:123456789012:rasterfn-uploads" }
}
mock_resource "aws_iam_role" {
  defaults = { arn = "arn:aws:iam::123456789012:role/rasterfn-function" }
}
mock_resource "aws_s3_bucket" {
  defaults = { arn = "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2" }
}
mock_resource "aws_ecr_repository" {
  defaults = { repository_url = "123456789012.dkr.ecr.ap-southeast-2.amazonaws.com/rasterfn" }
}
mock_resource "aws_lambda_function" {
  defaults = { arn = "arn:aws:lambda:ap-southeast-2:123456789012:function:rasterfn" }
}
mock_resource "aws_cloudwatch_log_group" {
  defaults = { arn = "arn:aws:logs:ap-southeast-2:123456789012:log-group:/aws/lambda/rasterfn" }
}
