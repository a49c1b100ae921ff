terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.80 added deletion_protection_enabled to aws_dynamodb_table_replica.
      version = ">= 5.80, < 7.0"
    }
  }
}
