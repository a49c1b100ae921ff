variable "table_arn" {
  description = "ARN of the table in its home region (the table module's arn)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for encryption at rest in this replica's region (that region's region-key table_key_arn)."
  type        = string
}

variable "tags" {
  description = "Tags for the replica."
  type        = map(string)
  default     = {}
}
