output "region" {
  description = "The replica's region."
  value       = data.aws_region.current.name
}

output "arn" {
  description = "ARN of the replica."
  value       = aws_dynamodb_table_replica.keys.arn
}
