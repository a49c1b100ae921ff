# A warning, not an error: users of helm_values alone (the chart sets TLS
# itself) need neither; rkms refuses such a config_toml at start.
check "config_toml_plain_http" {
  assert {
    condition     = var.tls != null || var.allow_plaintext || can(regex("^(127\\.|\\[::1\\]:)", var.listen))
    error_message = "config_toml serves plain HTTP on ${var.listen}, which rkms refuses at start (data keys and client tokens would cross the network in the clear): set tls (the server certificate and key), or allow_plaintext = true where something else encrypts the traffic. helm_values is not affected."
  }
}

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
