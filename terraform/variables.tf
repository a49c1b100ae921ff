variable "regions" {
  description = "Three KMS regions in read-preference order; must match kms.regions. The DynamoDB table is created in the first."
  type        = list(string)
  default     = ["us-east-1", "us-west-2", "eu-west-1"]
  validation {
    condition     = length(var.regions) == 3
    error_message = "This module wires exactly three regions; add a provider and a module block for more."
  }
}

variable "name" {
  description = "Alias suffix (alias/<name>) and table name prefix."
  type        = string
  default     = "rkms"
}

variable "table_name" {
  description = "DynamoDB table name (store.dynamodb.table)."
  type        = string
  default     = "rkms_keys"
}

variable "key_deletion_window_days" {
  description = "Waiting period before a scheduled KMS key deletion. Deleting a master key loses every data key wrapped only under it."
  type        = number
  default     = 30
}

variable "irsa_oidc_provider_arn" {
  description = "EKS OIDC provider ARN for an IRSA role; empty = no role, only the policy."
  type        = string
  default     = ""
}

variable "irsa_service_account" {
  description = "namespace:serviceaccount allowed to assume the IRSA role."
  type        = string
  default     = "rkms:rkms"
}
