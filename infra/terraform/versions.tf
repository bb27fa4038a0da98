terraform {
  # The oldest Terraform this configuration is written for; aws 6.x needs >= 1.x, 6.0 is the current major.
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
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
