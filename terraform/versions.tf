terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source                = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

# One provider per KMS region; the table lives in the first.
provider "aws" {
  alias  = "primary"
  region = var.regions[0]
}

provider "aws" {
  alias  = "secondary"
  region = var.regions[1]
}

provider "aws" {
  alias  = "tertiary"
  region = var.regions[2]
}
