output "config_toml" {
  description = "A complete rkms config.toml."
  value = templatefile("${path.module}/config.toml.tftpl", {
    listen                = var.listen
    metrics_listen        = var.metrics_listen
    tls                   = var.tls
    allow_plaintext       = var.allow_plaintext
    regions               = var.regions
    min_regions_on_create = local.min_regions_on_create
    key_ids               = var.key_ids
    table_region          = var.table_region
    table_name            = var.table_name
    clients               = var.clients
  })
  precondition {
    condition     = length(setsubtract(var.regions, keys(var.key_ids))) == 0
    error_message = "key_ids: no key for ${join(", ", setsubtract(var.regions, keys(var.key_ids)))}: every region needs one."
  }
  precondition {
    condition     = local.min_regions_on_create <= length(var.regions)
    error_message = "min_regions_on_create: more than the ${length(var.regions)} region(s) listed."
  }
}

output "helm_values" {
  description = "The Helm chart's `config` value for these regions, keys and table (YAML)."
  value       = yamlencode({ config = local.chart_config })
  precondition {
    condition     = length(setsubtract(var.regions, keys(var.key_ids))) == 0
    error_message = "key_ids: no key for ${join(", ", setsubtract(var.regions, keys(var.key_ids)))}: every region needs one."
  }
}
