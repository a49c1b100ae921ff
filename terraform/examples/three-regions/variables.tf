variable "admin_principal_arns" {
  description = "IAM principals that manage the keys but cannot use them; include the role Terraform runs as."
  type        = list(string)
}

variable "eks_oidc_provider_arn" {
  description = "The EKS cluster's OIDC provider ARN, for the IRSA role."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the rkms release."
  type        = string
  default     = "rkms"
}

variable "service_account_name" {
  description = "rkms's service account: the chart's full name (release \"rkms\" gives \"rkms\")."
  type        = string
  default     = "rkms"
}
