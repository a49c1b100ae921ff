# One region's rkms master key: a symmetric KMS key with rotation, an alias,
# and a key policy under which rkms may use the key only for data keys bound
# to an rkms id (encryption context {"rkms:id": ID}), and administrators may
# manage it but not use it (short of rewriting the policy: PutKeyPolicy is
# break-glass, see admin_actions). Optionally a second key for DynamoDB encryption
# at rest in the same region. Called once per region, each call with that
# region's provider.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  region = data.aws_region.current.name
  # What a key administrator may do: nothing that reads or writes data, and
  # no kms:CreateGrant (a grant could give the administrator Decrypt), so
  # no kms:Create* either.
  admin_actions = [
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:Delete*",
    "kms:Describe*",
    "kms:Disable*",
    "kms:Enable*",
    "kms:Get*",
    "kms:List*",
    # Break-glass: PutKeyPolicy is the only way to change the key policy
    # (add or remove administrators or rkms roles, allow_legacy_decrypt), and
    # KMS refuses a policy that would lock out the principal setting it, so
    # Terraform's own role needs it. It also lets an administrator rewrite
    # the policy to grant itself use of the key: a change CloudTrail records
    # (alert on PutKeyPolicy) and that this policy then no longer describes.
    "kms:PutKeyPolicy",
    "kms:Revoke*",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:Update*",
  ]
}

data "aws_iam_policy_document" "master_key" {
  # checkov:skip=CKV_AWS_109:A key policy's resource is always "*", the key it is attached to; administration is limited to admin_principal_arns.
  # checkov:skip=CKV_AWS_111:A key policy's resource is always "*", the key it is attached to; writes are limited to admin_principal_arns.
  # checkov:skip=CKV_AWS_356:A key policy's resource is always "*", the key it is attached to.
  statement {
    sid       = "KeyAdministration"
    actions   = local.admin_actions
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = var.admin_principal_arns
    }
  }

  statement {
    sid       = "RkmsDataKeysBoundToAnId"
    actions   = ["kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = var.rkms_principal_arns
    }
    # Every context key is rkms:id...
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "kms:EncryptionContextKeys"
      values   = ["rkms:id"]
    }
    # ...and there is a context: ForAllValues alone also matches an empty one.
    condition {
      test     = "Null"
      variable = "kms:EncryptionContextKeys"
      values   = ["false"]
    }
  }

  statement {
    sid       = "RkmsPreflight"
    actions   = ["kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = var.rkms_principal_arns
    }
  }

  dynamic "statement" {
    for_each = var.allow_legacy_decrypt ? [1] : []
    content {
      sid       = "RkmsLegacyRecordsWithoutContext"
      actions   = ["kms:Decrypt"]
      resources = ["*"]
      principals {
        type        = "AWS"
        identifiers = var.rkms_principal_arns
      }
    }
  }
}

resource "aws_kms_key" "master" {
  description              = "rkms master key (${local.region}): wraps rkms data keys"
  key_usage                = "ENCRYPT_DECRYPT"
  customer_master_key_spec = "SYMMETRIC_DEFAULT"
  enable_key_rotation      = true
  deletion_window_in_days  = var.deletion_window_in_days
  policy                   = data.aws_iam_policy_document.master_key.json
  tags                     = var.tags

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_kms_alias" "master" {
  name          = "alias/${var.alias_name}"
  target_key_id = aws_kms_key.master.key_id
}

# Encryption at rest for DynamoDB: DynamoDB may use the key for callers in
# this account, through DynamoDB in this region only.
data "aws_iam_policy_document" "table_key" {
  # checkov:skip=CKV_AWS_109:A key policy's resource is always "*", the key it is attached to; administration is limited to admin_principal_arns.
  # checkov:skip=CKV_AWS_111:A key policy's resource is always "*", the key it is attached to; writes are limited to admin_principal_arns.
  # checkov:skip=CKV_AWS_356:A key policy's resource is always "*", the key it is attached to.
  statement {
    sid       = "KeyAdministration"
    actions   = local.admin_actions
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = var.admin_principal_arns
    }
  }

  statement {
    sid       = "DynamoDBEncryptionAtRest"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey", "kms:CreateGrant"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["dynamodb.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "kms:CallerAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_kms_key" "table" {
  count                   = var.create_table_key ? 1 : 0
  description             = "rkms table encryption at rest (${local.region})"
  key_usage               = "ENCRYPT_DECRYPT"
  enable_key_rotation     = true
  deletion_window_in_days = var.deletion_window_in_days
  policy                  = data.aws_iam_policy_document.table_key.json
  tags                    = var.tags

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_kms_alias" "table" {
  count         = var.create_table_key ? 1 : 0
  name          = "alias/${var.alias_name}-table"
  target_key_id = aws_kms_key.table[0].key_id
}
