# Pure: no provider, no resource. Renders rkms's config from the other
# modules' outputs.
terraform {
  required_version = ">= 1.5"
}
