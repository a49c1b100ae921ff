# What rkms may do, and nothing more: wrap and unwrap data keys bound to an
# rkms id under its master keys, check those keys at start, and read,
# create and repair records in its table. Optionally the EKS IRSA role
# carrying it. IAM is global: pass any region's provider.

locals {
  # The OIDC issuer as IAM condition keys name it: host and path, no scheme.
  oidc_issuer = var.irsa == null ? "" : replace(var.irsa.oidc_provider_arn, "/^arn:[^:]+:iam::[0-9]+:oidc-provider\\//", "")
}

data "aws_iam_policy_document" "rkms" {
  statement {
    sid       = "DataKeysBoundToAnId"
    actions   = ["kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"]
    resources = var.kms_key_arns
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "kms:EncryptionContextKeys"
      values   = ["rkms:id"]
    }
    condition {
      test     = "Null"
      variable = "kms:EncryptionContextKeys"
      values   = ["false"]
    }
  }

  statement {
    sid       = "Preflight"
    actions   = ["kms:DescribeKey"]
    resources = var.kms_key_arns
  }

  dynamic "statement" {
    for_each = var.allow_legacy_decrypt ? [1] : []
    content {
      sid       = "LegacyRecordsWithoutContext"
      actions   = ["kms:Decrypt"]
      resources = var.kms_key_arns
    }
  }

  statement {
    sid       = "KeyRecords"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Scan", "dynamodb:DescribeTable"]
    resources = var.table_arns
  }
}

resource "aws_iam_policy" "rkms" {
  name        = var.name
  description = "rkms: data keys under its KMS keys, bound to an rkms id; read, create and repair records in its table."
  policy      = data.aws_iam_policy_document.rkms.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "existing" {
  for_each   = toset(var.attach_to_role_names)
  role       = each.value
  policy_arn = aws_iam_policy.rkms.arn
}

data "aws_iam_policy_document" "irsa_trust" {
  count = var.irsa == null ? 0 : 1
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.irsa.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.irsa.namespace}:${var.irsa.service_account_name}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "irsa" {
  count                = var.irsa == null ? 0 : 1
  name                 = var.name
  description          = "rkms on EKS (IRSA): service account ${var.irsa.namespace}/${var.irsa.service_account_name}"
  assume_role_policy   = data.aws_iam_policy_document.irsa_trust[0].json
  max_session_duration = 3600
  tags                 = var.tags
}

resource "aws_iam_role_policy_attachment" "irsa" {
  count      = var.irsa == null ? 0 : 1
  role       = aws_iam_role.irsa[0].name
  policy_arn = aws_iam_policy.rkms.arn
}
