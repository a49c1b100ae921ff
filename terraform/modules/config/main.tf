locals {
  min_regions_on_create = coalesce(var.min_regions_on_create, min(2, length(var.regions)))
  # TOML for the chart's `config` value: the same [kms] and [store].
  chart_config = {
    kms = {
      provider              = "aws"
      regions               = var.regions
      min_regions_on_create = local.min_regions_on_create
      aws                   = { key_ids = { for r in var.regions : r => lookup(var.key_ids, r, "") } }
    }
    store = {
      backend  = "dynamodb"
      dynamodb = { region = var.table_region, table = var.table_name }
    }
  }
}
