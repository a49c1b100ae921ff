# One region's replica of the rkms table (a DynamoDB global table), with
# deletion protection, point-in-time recovery and encryption at rest under a
# customer managed key of its region. Called once per replica region, each
# call with that region's provider (as region-key is); the table module
# lists the same regions in replica_regions.

data "aws_region" "current" {}

resource "aws_dynamodb_table_replica" "keys" {
  global_table_arn            = var.table_arn
  kms_key_arn                 = var.kms_key_arn
  point_in_time_recovery      = true
  deletion_protection_enabled = true
  tags                        = var.tags

  lifecycle {
    prevent_destroy = true
  }
}
