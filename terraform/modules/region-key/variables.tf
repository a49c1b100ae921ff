variable "alias_name" {
  description = "Alias of the master key, without the alias/ prefix; the same in every region keeps the rkms config short."
  type        = string
  default     = "rkms"
  validation {
    condition     = can(regex("^[a-zA-Z0-9/_-]+$", var.alias_name)) && !startswith(var.alias_name, "aws/")
    error_message = "alias_name: letters, digits, /, _ and -, not starting with aws/."
  }
}

variable "admin_principal_arns" {
  description = "IAM principals that manage the keys (rotate, disable, schedule deletion, change the policy) but cannot use them. Include the role Terraform runs as, or KMS refuses the key policy."
  type        = list(string)
  validation {
    condition     = length(var.admin_principal_arns) > 0
    error_message = "admin_principal_arns: at least one, or nobody could manage the keys."
  }
}

variable "rkms_principal_arns" {
  description = "IAM roles rkms runs as (the access module's principal_arns): they may wrap and unwrap data keys, bound to an rkms id."
  type        = list(string)
  validation {
    condition     = length(var.rkms_principal_arns) > 0 && alltrue([for a in var.rkms_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:", a))])
    error_message = "rkms_principal_arns: at least one role, each an IAM ARN (the access module's irsa_role_arn is empty without irsa: pass the role rkms runs as)."
  }
}

variable "allow_legacy_decrypt" {
  description = "Also let rkms Decrypt without an encryption context: needed only to read records written by RKMS (Go), which carry none."
  type        = bool
  default     = false
}

variable "deletion_window_in_days" {
  description = "Waiting period of a scheduled key deletion. Deleting a master key loses every data key wrapped only under it."
  type        = number
  default     = 30
  validation {
    condition     = var.deletion_window_in_days >= 7 && var.deletion_window_in_days <= 30
    error_message = "deletion_window_in_days: 7 to 30."
  }
}

variable "create_table_key" {
  description = "Also create a key for DynamoDB encryption at rest in this region (for the table or its replica here)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
