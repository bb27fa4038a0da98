# `terraform test` (Terraform >= 1.7) with a mocked AWS provider: plans only, no credentials, no network.
# Issue 20 (OUTPUTS: .npy, COG, STAC beside each input): the function's role may write exactly the outputs
# var.outputs and var.output_mode name, plus its error markers; no input suffix may match an output's key.
# tests/infra/test_terraform_cli.py runs this file.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  image_tag = "abc123"
}

# apply (mocked) as in review_findings: the policy documents depend on ARNs known only after the mock apply.
run "default_outputs_write_only_masks_and_error_markers" {
  command = apply

  assert {
    condition     = aws_lambda_function.this.environment[0].variables["OUTPUTS"] == "npy"
    error_message = "the function must be told the outputs the role may write"
  }
  assert {
    condition = toset(flatten([
      for s in data.aws_iam_policy_document.lambda.statement : tolist(s.resources) if contains(s.actions, "s3:PutObject")
      ])) == toset([
      "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/*.npy",
      "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/*.error.json",
    ])
    error_message = "with the default outputs the function may write only *.npy and *.error.json"
  }
  assert {
    condition = toset(flatten([
      for s in data.aws_iam_policy_document.fanout.statement : tolist(s.resources) if contains(s.actions, "s3:PutObject")
      ])) == toset([
      "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/*.npy",
      "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/.rasterfn-jobs/*",
    ])
    error_message = "the fan-out may write only the sharded .npy and its job state"
  }
}

run "every_output_with_a_mask_cog" {
  command = apply
  variables {
    outputs       = ["npy", "cog", "stac"]
    output_prefix = "out/"
    input_prefix  = "scenes/"
  }

  assert {
    condition     = aws_lambda_function.this.environment[0].variables["OUTPUTS"] == "npy,cog,stac"
    error_message = "OUTPUTS must be the comma-joined list"
  }
  assert {
    condition = toset(flatten([
      for s in data.aws_iam_policy_document.lambda.statement : tolist(s.resources) if contains(s.actions, "s3:PutObject")
      ])) == toset([for suffix in [".npy", ".mask.TIF", ".thumb.png", ".stac.json", ".error.json"] :
      "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/out/scenes/*${suffix}"
    ])
    error_message = "the function may write its .npy, mask COG, quicklook, STAC Item and error markers under the output prefix, nothing else"
  }
  assert {
    # HeadObject (duplicates, If-Match) on each output; multipart aborts on each output, never on a marker
    condition = alltrue([
      for action in ["s3:GetObject", "s3:AbortMultipartUpload"] : length(setsubtract(
        [for suffix in [".npy", ".mask.TIF", ".thumb.png", ".stac.json"] : "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/out/scenes/*${suffix}"],
        flatten([for s in data.aws_iam_policy_document.lambda.statement : tolist(s.resources) if contains(s.actions, action)]),
      )) == 0
    ])
    error_message = "a conditional or multipart write of an output needs GetObject and AbortMultipartUpload on it"
  }
  assert {
    condition = toset(flatten([
      for s in data.aws_iam_policy_document.lambda.statement : tolist(s.resources)
      if contains(s.actions, "s3:DeleteObject") || contains(s.actions, "s3:DeleteObjectVersion")
    ])) == toset(["arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/out/scenes/*.error.json"])
    error_message = "the function may delete only its error markers"
  }
  assert {
    condition = toset(flatten([
      for s in data.aws_iam_policy_document.fanout.statement : tolist(s.resources) if contains(s.actions, "s3:AbortMultipartUpload")
      ])) == toset([for suffix in [".npy", ".mask.TIF"] :
      "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/out/scenes/*${suffix}"
    ])
    error_message = "the fan-out assembles the .npy and the COG by multipart upload"
  }
}

run "a_score_cog_alone" {
  command = apply
  variables {
    outputs     = ["cog"]
    output_mode = "score"
  }

  assert {
    condition = toset(flatten([
      for s in data.aws_iam_policy_document.lambda.statement : tolist(s.resources) if contains(s.actions, "s3:PutObject")
      ])) == toset([
      "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/*.score.TIF",
      "arn:aws:s3:::rasterfn-input-123456789012-ap-southeast-2/*.error.json",
    ])
    error_message = "OUTPUTS=cog with OUTPUT_MODE=score writes <stem>.score.TIF (and markers) only: no .npy, no .mask.TIF"
  }
}

run "stac_alone_is_refused" {
  command = plan
  variables {
    outputs = ["stac"]
  }
  expect_failures = [var.outputs]
}

run "an_unknown_output_is_refused" {
  command = plan
  variables {
    outputs = ["npy", "geojson"]
  }
  expect_failures = [var.outputs]
}

run "no_output_is_refused" {
  command = plan
  variables {
    outputs = []
  }
  expect_failures = [var.outputs]
}

run "an_unknown_output_mode_is_refused" {
  command = plan
  variables {
    output_mode = "probabilities"
  }
  expect_failures = [var.output_mode]
}

# S3's suffix filter is case-sensitive: ".TIF" would notify the queue of every <stem>.mask.TIF the function writes.
run "an_input_suffix_matching_the_cog_is_refused" {
  command = plan
  variables {
    input_suffixes = [".tif", ".TIF"]
  }
  expect_failures = [var.input_suffixes]
}

run "an_input_suffix_matching_the_stac_item_is_refused" {
  command = plan
  variables {
    input_suffixes = [".json"]
  }
  expect_failures = [var.input_suffixes]
}

run "an_input_suffix_matching_the_quicklook_is_refused" {
  command = plan
  variables {
    input_suffixes = [".png"]
  }
  expect_failures = [var.input_suffixes]
}

# Longer than an output suffix and ending with it: "a.x.tif" writes "a.x.npy".
run "an_input_suffix_ending_with_an_output_suffix_is_refused" {
  command = plan
  variables {
    input_suffixes = [".x.npy"]
  }
  expect_failures = [var.input_suffixes]
}

# Matches no output in S3, but the function itself (lower-case) refuses it at start-up.
run "an_input_suffix_the_function_refuses_is_refused" {
  command = plan
  variables {
    input_suffixes = [".JSON"]
  }
  expect_failures = [var.input_suffixes]
}

run "upper_case_tiff_uploads_plan" {
  command = plan
  variables {
    input_suffixes = [".tif", ".tiff", ".TIFF"]
  }
  assert {
    condition     = length(aws_s3_bucket_notification.input.queue) == 3
    error_message = "each input suffix gets its notification"
  }
}
