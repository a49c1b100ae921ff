output "policy_arn" {
  description = "ARN of the rkms IAM policy."
  value       = aws_iam_policy.rkms.arn
}

output "policy_json" {
  description = "The policy document."
  value       = data.aws_iam_policy_document.rkms.json
}

output "irsa_role_arn" {
  description = "ARN of the IRSA role (the chart's serviceAccount.irsaRoleArn); empty without irsa."
  value       = try(aws_iam_role.irsa[0].arn, "")
}
