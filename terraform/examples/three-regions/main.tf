# rkms in three regions: a master key in each (us-east-1 preferred), the
# table in us-east-1 with a replica in us-west-2, the IAM policy on an IRSA
# role, and the resulting config: config.toml and values for the Helm chart.

locals {
  name = "rkms"
  # Read preference order: kms.regions.
  regions = ["us-east-1", "us-west-2", "eu-west-1"]
  keys    = [module.key_use1, module.key_usw2, module.key_euw1]
  tags    = { service = "rkms" }
}

module "access" {
  source    = "../../modules/access"
  providers = { aws = aws.use1 }

  name         = local.name
  kms_key_arns = local.keys[*].key_arn
  table_arns   = module.table.arns
  irsa = {
    oidc_provider_arn    = var.eks_oidc_provider_arn
    namespace            = var.namespace
    service_account_name = var.service_account_name
  }
  tags = local.tags
}

module "key_use1" {
  source    = "../../modules/region-key"
  providers = { aws = aws.use1 }

  alias_name           = local.name
  admin_principal_arns = var.admin_principal_arns
  rkms_principal_arns  = [module.access.irsa_role_arn]
  create_table_key     = true
  tags                 = local.tags
}

module "key_usw2" {
  source    = "../../modules/region-key"
  providers = { aws = aws.usw2 }

  alias_name           = local.name
  admin_principal_arns = var.admin_principal_arns
  rkms_principal_arns  = [module.access.irsa_role_arn]
  create_table_key     = true
  tags                 = local.tags
}

module "key_euw1" {
  source    = "../../modules/region-key"
  providers = { aws = aws.euw1 }

  alias_name           = local.name
  admin_principal_arns = var.admin_principal_arns
  rkms_principal_arns  = [module.access.irsa_role_arn]
  tags                 = local.tags
}

module "table" {
  source    = "../../modules/table"
  providers = { aws = aws.use1 }

  name            = "rkms_keys"
  kms_key_arn     = module.key_use1.table_key_arn
  replica_regions = ["us-west-2"]
  tags            = local.tags
}

module "table_replica_usw2" {
  source    = "../../modules/table-replica"
  providers = { aws = aws.usw2 }

  table_arn   = module.table.arn
  kms_key_arn = module.key_usw2.table_key_arn
  tags        = local.tags
}

module "config" {
  source = "../../modules/config"

  regions      = local.regions
  key_ids      = { for k in local.keys : k.region => k.alias_name }
  table_name   = module.table.name
  table_region = module.table.region
  clients = [{
    name       = "app"
    token_file = "/var/run/secrets/rkms/tokens/app"
    ids        = ["*"]
    create     = true
  }]
  # rendered/config.toml serves HTTPS with these files (the Helm chart
  # sets its own TLS from tls.secretName).
  tls = {
    cert = "/etc/rkms/tls/tls.crt"
    key  = "/etc/rkms/tls/tls.key"
  }
}

resource "local_file" "config" {
  filename        = "${path.root}/rendered/config.toml"
  content         = module.config.config_toml
  file_permission = "0644"
}

resource "local_file" "helm_values" {
  filename = "${path.root}/rendered/values-aws.yaml"
  content = join("", [
    module.config.helm_values,
    yamlencode({ serviceAccount = { irsaRoleArn = module.access.irsa_role_arn } }),
  ])
  file_permission = "0644"
}
