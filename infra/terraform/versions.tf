terraform {
  # 1.6: `terraform test` (infra/terraform/tests) and the validation/precondition syntax used here.
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.100 (the last 5.x, what offline mirrors often hold) through 6.x: the configuration uses nothing
      # that exists in only one of them (e.g. the region comes from var.region or aws_region's `id`, not
      # `region` (6.x only) or `name` (deprecated in 6.x)). `make static` validates it with the installed one.
      version = ">= 5.100, < 7.0"
    }
  }
}

provider "aws" {
  # null: the region comes from AWS_REGION / the profile, as for the AWS CLI.
  region = var.region

  default_tags {
    tags = merge({ Application = var.name, ManagedBy = "terraform" }, var.tags)
  }
}
