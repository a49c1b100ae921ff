output "kms_key_arns" {
  description = "Region -> master key ARN."
  value       = { for k in local.keys : k.region => k.key_arn }
}

output "table_arn" {
  description = "The table in its home region."
  value       = module.table.arn
}

output "irsa_role_arn" {
  description = "For the chart's serviceAccount.irsaRoleArn."
  value       = module.access.irsa_role_arn
}

output "config_toml" {
  description = "rkms config.toml (also written to rendered/config.toml)."
  value       = module.config.config_toml
}
