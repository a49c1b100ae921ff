# One region's master key for rkms, with an alias rkms can be configured with.
terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}

variable "name" { type = string }
variable "deletion_window_days" { type = number }

resource "aws_kms_key" "this" {
  description             = "rkms master key: wraps rkms data keys"
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  deletion_window_in_days = var.deletion_window_days
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

output "key_arn" { value = aws_kms_key.this.arn }
output "alias" { value = aws_kms_alias.this.name }
