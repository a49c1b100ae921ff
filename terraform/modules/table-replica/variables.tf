variable "table_arn" {
  description = "ARN of the table in its home region (the table module's arn)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for encryption at rest in this replica's region (that region's region-key table_key_arn)."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn: the ARN of a KMS key (region-key's table_key_arn, with create_table_key = true). Empty would leave the table under the AWS-managed key aws/dynamodb, not yours."
  }
}

variable "tags" {
  description = "Tags for the replica."
  type        = map(string)
  default     = {}
}
