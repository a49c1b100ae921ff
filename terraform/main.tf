# rkms infrastructure: a KMS key per region, the DynamoDB table, and the IAM
# policy rkms needs (optionally attached to an IRSA role for EKS).

module "kms_primary" {
  source               = "./modules/kms_region"
  providers            = { aws = aws.primary }
  name                 = var.name
  deletion_window_days = var.key_deletion_window_days
}

module "kms_secondary" {
  source               = "./modules/kms_region"
  providers            = { aws = aws.secondary }
  name                 = var.name
  deletion_window_days = var.key_deletion_window_days
}

module "kms_tertiary" {
  source               = "./modules/kms_region"
  providers            = { aws = aws.tertiary }
  name                 = var.name
  deletion_window_days = var.key_deletion_window_days
}

locals {
  key_arns = {
    (var.regions[0]) = module.kms_primary.key_arn
    (var.regions[1]) = module.kms_secondary.key_arn
    (var.regions[2]) = module.kms_tertiary.key_arn
  }
}

resource "aws_dynamodb_table" "keys" {
  provider                    = aws.primary
  name                        = var.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "id"
  deletion_protection_enabled = true

  attribute {
    name = "id"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  lifecycle {
    prevent_destroy = true
  }
}

data "aws_iam_policy_document" "rkms" {
  statement {
    sid       = "WrapAndUnwrapDataKeys"
    actions   = ["kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"]
    resources = values(local.key_arns)
  }
  statement {
    sid       = "KeyRecords"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DescribeTable"]
    resources = [aws_dynamodb_table.keys.arn]
  }
}

resource "aws_iam_policy" "rkms" {
  provider    = aws.primary
  name        = "${var.name}-key-broker"
  description = "What rkms needs: KMS wrap/unwrap in each region, read/create/repair on its table."
  policy      = data.aws_iam_policy_document.rkms.json
}

data "aws_iam_policy_document" "irsa_trust" {
  count = var.irsa_oidc_provider_arn == "" ? 0 : 1
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.irsa_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${replace(var.irsa_oidc_provider_arn, "/^.*oidc-provider\\//", "")}:sub"
      values   = ["system:serviceaccount:${var.irsa_service_account}"]
    }
  }
}

resource "aws_iam_role" "irsa" {
  count              = var.irsa_oidc_provider_arn == "" ? 0 : 1
  provider           = aws.primary
  name               = "${var.name}-key-broker"
  assume_role_policy = data.aws_iam_policy_document.irsa_trust[0].json
}

resource "aws_iam_role_policy_attachment" "irsa" {
  count      = var.irsa_oidc_provider_arn == "" ? 0 : 1
  provider   = aws.primary
  role       = aws_iam_role.irsa[0].name
  policy_arn = aws_iam_policy.rkms.arn
}
