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

variable "replicas" {
  description = "Other regions holding a replica (a global table), each with its region's encryption key. rkms sends every request to the home region (store.dynamodb.region); a replica is for failing over to by changing that setting."
  type = list(object({
    region      = string
    kms_key_arn = string
  }))
  default = []
}

variable "tags" {
  description = "Tags for the table."
  type        = map(string)
  default     = {}
}
