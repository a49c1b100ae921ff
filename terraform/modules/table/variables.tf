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
