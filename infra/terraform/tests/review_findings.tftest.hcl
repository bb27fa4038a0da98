# `terraform test` (Terraform >= 1.7) with a mocked AWS provider: plans only, no credentials, no network.
# Each run is one review finding of issue 12; tests/infra/test_terraform_cli.py runs this file.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  image_tag = "abc123"
}

run "defaults_apply_on_a_new_account" {
  command = plan

  # Unreserved: AWS refuses a reservation that leaves under 100 unreserved (every new account).
  assert {
    condition     = var.reserved_concurrency == null && aws_lambda_function.this.reserved_concurrent_executions == null
    error_message = "the default must leave the function unreserved (no reservation sent)"
  }
  assert {
    condition     = aws_s3_bucket.input.bucket == "rasterfn-input-123456789012-ap-southeast-2"
    error_message = "the derived bucket name changed"
  }
}

run "reserving_zero_is_refused" {
  command = plan
  variables {
    reserved_concurrency = 0
  }
  expect_failures = [var.reserved_concurrency]
}

run "a_reservation_below_the_pollers_is_refused" {
  command = plan
  variables {
    reserved_concurrency = 5
    maximum_concurrency  = 10
  }
  expect_failures = [aws_lambda_event_source_mapping.uploads]
}

run "a_reservation_above_the_pollers_plans" {
  command = plan
  variables {
    reserved_concurrency = 20
    maximum_concurrency  = 10
  }
  assert {
    condition     = aws_lambda_function.this.reserved_concurrent_executions == 20
    error_message = "the reservation is not passed to the function"
  }
}

# 41 characters pass the name's own validation, but <name>-input-<account>-<region> would be 75 > 63.
run "a_derived_bucket_name_over_63_characters_is_refused" {
  command = plan
  variables {
    name = "a-forty-one-character-function-name-abcde"
  }
  expect_failures = [aws_s3_bucket.input]
}

run "the_longest_name_that_fits_the_bucket_plans" {
  command = plan
  variables {
    name = "a-twenty-nine-character-name1"
  }
  assert {
    condition     = length(aws_s3_bucket.input.bucket) == 63
    error_message = "29 characters + -input- + account + - + ap-southeast-2 should be exactly 63"
  }
}

run "an_explicit_bucket_name_is_validated" {
  command = plan
  variables {
    bucket_name = "Not_A_Bucket"
  }
  expect_failures = [var.bucket_name]
}

run "deployed_images_are_never_expired_by_the_count_rule" {
  command = plan

  assert {
    condition = (
      jsondecode(aws_ecr_lifecycle_policy.this.policy).rules[1].selection.tagPrefixList == ["deployed-"]
      && jsondecode(aws_ecr_lifecycle_policy.this.policy).rules[1].selection.countNumber >= 1000
      && jsondecode(aws_ecr_lifecycle_policy.this.policy).rules[2].selection.tagStatus == "any"
      && jsondecode(aws_ecr_lifecycle_policy.this.policy).rules[2].rulePriority > jsondecode(aws_ecr_lifecycle_policy.this.policy).rules[1].rulePriority
    )
    error_message = "deployed-* images must be selected by a rule of higher priority than the count rule"
  }
}

run "lifecycle_rules_filter_on_an_empty_prefix" {
  command = plan

  assert {
    # (fanout.tf's job-object rule filters on its own prefix)
    condition     = alltrue([for rule in aws_s3_bucket_lifecycle_configuration.input.rule : rule.filter[0].prefix == "" if rule.id != "expire-fanout-job-objects"])
    error_message = "every lifecycle rule needs an explicit filter (an empty `filter {}` is deprecated)"
  }
}

# apply (mocked): the policy document depends on resource ARNs, known only after the (mock) apply.
run "other_keys_are_granted_through_s3_only" {
  command = apply
  variables {
    extra_kms_key_arns = ["arn:aws:kms:ap-southeast-2:210987654321:key/11111111-2222-3333-4444-555555555555"]
  }

  assert {
    condition = anytrue([
      for s in data.aws_iam_policy_document.lambda.statement :
      s.sid == "UseOtherBucketsKeysThroughS3"
      && toset(s.actions) == toset(["kms:Decrypt", "kms:GenerateDataKey"])
      && toset(s.resources) == toset(var.extra_kms_key_arns)
      && anytrue([for c in s.condition : c.variable == "kms:ViaService" && toset(c.values) == toset(["s3.ap-southeast-2.amazonaws.com"])])
    ])
    error_message = "the extra keys must be granted Decrypt and GenerateDataKey via S3"
  }
}

run "no_extra_keys_no_extra_statement" {
  command = apply

  assert {
    condition     = alltrue([for s in data.aws_iam_policy_document.lambda.statement : s.sid != "UseOtherBucketsKeysThroughS3"])
    error_message = "without extra keys the function may use only the project key"
  }
}

run "an_alias_is_not_a_key_arn" {
  command = plan
  variables {
    extra_kms_key_arns = ["arn:aws:kms:ap-southeast-2:210987654321:alias/masks"]
  }
  expect_failures = [var.extra_kms_key_arns]
}
