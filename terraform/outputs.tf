output "kms_key_arns" {
  description = "Region -> KMS key ARN."
  value       = local.key_arns
}

output "rkms_config" {
  description = "The [kms] and [store] sections for rkms's config.toml."
  value       = <<-EOT
    [kms]
    provider = "aws"
    regions = ${jsonencode(var.regions)}

    [kms.aws.key_ids]
    ${var.regions[0]} = "alias/${var.name}"
    ${var.regions[1]} = "alias/${var.name}"
    ${var.regions[2]} = "alias/${var.name}"

    [store]
    backend = "dynamodb"

    [store.dynamodb]
    region = "${var.regions[0]}"
    table = "${aws_dynamodb_table.keys.name}"
  EOT
}

output "policy_arn" { value = aws_iam_policy.rkms.arn }
output "irsa_role_arn" { value = try(aws_iam_role.irsa[0].arn, "") }
