output "region" {
  description = "The region of these keys."
  value       = local.region
}

output "key_arn" {
  description = "ARN of the master key."
  value       = aws_kms_key.master.arn
}

output "alias_name" {
  description = "The master key's alias (alias/<alias_name>): the value for kms.aws.key_ids in this region."
  value       = aws_kms_alias.master.name
}

output "table_key_arn" {
  description = "ARN of the DynamoDB encryption key; empty unless create_table_key."
  value       = try(aws_kms_key.table[0].arn, "")
}
