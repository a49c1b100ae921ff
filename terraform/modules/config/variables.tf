variable "regions" {
  description = "KMS regions in read preference order (kms.regions)."
  type        = list(string)
  validation {
    condition     = length(var.regions) > 0 && length(distinct(var.regions)) == length(var.regions)
    error_message = "regions: at least one, each once."
  }
}

variable "key_ids" {
  description = "Region -> master key id, ARN or alias (region-key's alias_name), for every region."
  type        = map(string)
}

variable "min_regions_on_create" {
  description = "Regions a new key must be wrapped in before it is stored; null = 2, or 1 with a single region."
  type        = number
  default     = null
}

variable "table_name" {
  description = "store.dynamodb.table."
  type        = string
}

variable "table_region" {
  description = "store.dynamodb.region: the table's home region, where every request goes."
  type        = string
}

variable "listen" {
  description = "server.listen."
  type        = string
  default     = "0.0.0.0:8080"
}

variable "metrics_listen" {
  description = "server.metrics_listen; \"\" = none."
  type        = string
  default     = "0.0.0.0:9090"
}

variable "tls" {
  description = "[server.tls]: paths, on the host that runs rkms, of the server certificate chain and key (PEM), and optionally of the CA that signs client certificates (client_ca) and its revocation lists (client_crl, needs client_ca). null = plain HTTP, which rkms refuses on a non-loopback listen unless allow_plaintext."
  type = object({
    cert       = string
    key        = string
    client_ca  = optional(string)
    client_crl = optional(string)
  })
  default = null
  validation {
    condition     = var.tls == null || (try(length(var.tls.cert), 0) > 0 && try(length(var.tls.key), 0) > 0 && (try(var.tls.client_crl, null) == null || try(var.tls.client_ca, null) != null))
    error_message = "tls: cert and key are both required (paths of PEM files), and client_crl needs client_ca."
  }
}

variable "allow_plaintext" {
  description = "server.allow_plaintext: serve plain HTTP on a non-loopback listen without tls. Answers carry data keys and requests carry client tokens: only where something else encrypts the traffic."
  type        = bool
  default     = false
}

variable "clients" {
  description = "[[auth.clients]] in token mode. Each token is read from token_file (a mounted secret holding the raw token)."
  type = list(object({
    name       = string
    token_file = string
    ids        = list(string)
    create     = optional(bool, false)
  }))
  validation {
    condition     = length(var.clients) > 0
    error_message = "clients: at least one; rkms refuses token mode without clients."
  }
}
