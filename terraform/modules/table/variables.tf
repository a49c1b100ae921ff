variable "name" {
  description = "Table name (store.dynamodb.table)."
  type        = string
  default     = "rkms_keys"
  validation {
    condition     = can(regex("^[a-zA-Z0-9_.-]{3,255}$", var.name))
    error_message = "name: 3 to 255 letters, digits, _, . or -."
  }
}

variable "kms_key_arn" {
  description = "KMS key for encryption at rest in the table's region (region-key's table_key_arn)."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn: the ARN of a KMS key (region-key's table_key_arn, with create_table_key = true). Empty would leave the table under the AWS-managed key aws/dynamodb, not yours."
  }
}

variable "replica_regions" {
  description = "Regions holding a replica (a global table), each created by a table-replica module call with that region's provider. Turns on the stream replication needs and adds the replicas to the arns output. rkms sends every request to the home region (store.dynamodb.region); a replica is for failing over to by changing that setting."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for the table."
  type        = map(string)
  default     = {}
}
