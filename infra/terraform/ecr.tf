resource "aws_ecr_repository" "this" {
  name = var.name
  # One tag, one image, forever: a deployed tag cannot be re-pointed under a running function.
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_destroy

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this.arn
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Drop untagged layers left by pushes after a day"
        selection    = { tagStatus = "untagged", countType = "sinceImagePushed", countUnit = "days", countNumber = 1 }
        action       = { type = "expire" }
      },
      # `make tf-apply` tags what it deploys deployed-<tag>. ECR never lets a lower-priority rule expire an
      # image that matches a higher one's tags, so rule 3 cannot touch a deployed image: a rollback target
      # only expires once ecr_keep_deployed_images newer deployed images exist.
      {
        rulePriority = 2
        description  = "Keep the newest ${var.ecr_keep_deployed_images} deployed images (rollback targets)"
        selection    = { tagStatus = "tagged", tagPrefixList = [local.deployed_tag_prefix], countType = "imageCountMoreThan", countNumber = var.ecr_keep_deployed_images }
        action       = { type = "expire" }
      },
      {
        rulePriority = 3
        description  = "Keep the newest ${var.ecr_keep_images} images never deployed"
        selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = var.ecr_keep_images }
        action       = { type = "expire" }
      },
    ]
  })
}

# Lambda pulls the image with its service principal: allow exactly that, for this function only.
resource "aws_ecr_repository_policy" "this" {
  repository = aws_ecr_repository.this.name
  policy     = data.aws_iam_policy_document.ecr.json
}

data "aws_iam_policy_document" "ecr" {
  statement {
    sid = "LambdaPullsTheFunctionImage"
    # No "resources": a repository policy applies to its repository, and ECR rejects other resources.
    actions = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringLike"
      variable = "aws:sourceArn"
      values   = ["arn:${local.partition}:lambda:${local.region}:${local.account_id}:function:${local.function_name}*"]
    }
  }
}
