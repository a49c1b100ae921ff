# The rkms key records: hash key `id` (S), billed per request, with
# point-in-time recovery, deletion protection and encryption under a
# customer managed KMS key; optionally replicated as a global table.

resource "aws_dynamodb_table" "keys" {
  name                        = var.name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "id"
  deletion_protection_enabled = true
  # Global tables replicate through the stream.
  stream_enabled   = length(var.replicas) > 0
  stream_view_type = length(var.replicas) > 0 ? "NEW_AND_OLD_IMAGES" : null
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

  dynamic "replica" {
    for_each = var.replicas
    content {
      region_name            = replica.value.region
      kms_key_arn            = replica.value.kms_key_arn
      point_in_time_recovery = true
      propagate_tags         = true
    }
  }

  lifecycle {
    prevent_destroy = true
  }
}
