output "name" {
  description = "Table name (store.dynamodb.table)."
  value       = aws_dynamodb_table.keys.name
}

output "region" {
  description = "The table's home region (store.dynamodb.region)."
  value       = split(":", aws_dynamodb_table.keys.arn)[3]
}

output "arn" {
  description = "ARN of the table in its home region."
  value       = aws_dynamodb_table.keys.arn
}

output "arns" {
  description = "ARNs of the table in its home region and in every replica region."
  value = concat([aws_dynamodb_table.keys.arn], [
    for r in var.replica_regions : replace(aws_dynamodb_table.keys.arn, ":${split(":", aws_dynamodb_table.keys.arn)[3]}:", ":${r}:")
  ])
}
