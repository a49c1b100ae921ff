output "config_toml" {
  description = "A complete rkms config.toml."
  value = templatefile("${path.module}/config.toml.tftpl", {
    listen                = var.listen
    metrics_listen        = var.metrics_listen
    regions               = var.regions
    min_regions_on_create = local.min_regions_on_create
    key_ids               = var.key_ids
    table_region          = var.table_region
    table_name            = var.table_name
    clients               = var.clients
  })
}

output "helm_values" {
  description = "The Helm chart's `config` value for these regions, keys and table (YAML)."
  value       = yamlencode({ config = local.chart_config })
}
