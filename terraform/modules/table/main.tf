# The rkms key records: hash key `id` (S), billed per request, with
# point-in-time recovery, deletion protection and encryption under a
# customer managed KMS key. A global table's replicas are the table-replica
# module, one call per replica region with that region's provider: the
# inline `replica` block cannot turn on a replica's deletion protection.

resource "aws_dynamodb_table" "keys" {
  name                        = var.name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "id"
  deletion_protection_enabled = true
  # Global tables replicate through the stream.
  stream_enabled   = length(var.replica_regions) > 0
  stream_view_type = length(var.replica_regions) > 0 ? "NEW_AND_OLD_IMAGES" : null
  tags             = var.tags

  attribute {
    name = "id"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  lifecycle {
    prevent_destroy = true
    # Replicas are aws_dynamodb_table_replica resources (table-replica):
    # the table must not manage, nor remove, them itself.
    ignore_changes = [replica]
  }
}
