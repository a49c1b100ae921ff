variable "name" {
  description = "Name of the IAM policy and of the IRSA role."
  type        = string
  default     = "rkms"
}

variable "kms_key_arns" {
  description = "The master keys' ARNs, one per region (region-key's key_arn)."
  type        = list(string)
  validation {
    condition     = length(var.kms_key_arns) > 0
    error_message = "kms_key_arns: at least one key."
  }
}

variable "table_arns" {
  description = "The table's ARNs (the table module's arns)."
  type        = list(string)
}

variable "allow_legacy_decrypt" {
  description = "Also allow Decrypt without an encryption context: needed only to read records written by RKMS (Go)."
  type        = bool
  default     = false
}

variable "attach_to_role_names" {
  description = "Existing IAM roles rkms runs as (ECS task role, instance role) to attach the policy to."
  type        = list(string)
  default     = []
}

variable "irsa" {
  description = "Create a role for EKS IRSA: the cluster's OIDC provider ARN and the namespace and name of rkms's service account (the Helm release's, by default <release>-rkms or <release>)."
  type = object({
    oidc_provider_arn    = string
    namespace            = string
    service_account_name = string
  })
  default = null
}

variable "tags" {
  description = "Tags for the policy and role."
  type        = map(string)
  default     = {}
}
