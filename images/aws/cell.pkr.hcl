# Cello cell AMI: a stock Debian, Ubuntu or Amazon Linux AMI plus images/install.sh and the
# cell-agent bundle. Build (from images/aws, after `npm run package:agent`):
#
#   packer init .
#   packer build -var agent_version=0.1.0 -var arch=amd64 -var base=debian-12 .
#
# See images/README.md for every variable and for the IAM permissions Packer needs.

packer {
  required_version = ">= 1.10.0"
  required_plugins {
    amazon = {
      version = ">= 1.2.1"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "agent_version" {
  type        = string
  description = "Version of the cell-agent bundle to install (the VERSION in cell-agent-VERSION-linux-ARCH.tar.gz)."
}

variable "arch" {
  type        = string
  default     = "amd64"
  description = "CPU architecture of the image: amd64 or arm64 (Graviton)."
  validation {
    condition     = contains(["amd64", "arm64"], var.arch)
    error_message = "The arch variable must be amd64 or arm64."
  }
}

variable "base" {
  type        = string
  default     = "debian-12"
  description = "Base image: debian-12, ubuntu-22.04, ubuntu-24.04 or al2023."
  validation {
    condition     = contains(["debian-12", "ubuntu-22.04", "ubuntu-24.04", "al2023"], var.base)
    error_message = "The base variable must be one of debian-12, ubuntu-22.04, ubuntu-24.04, al2023."
  }
}

variable "bundle_dir" {
  type        = string
  default     = "../out"
  description = "Directory holding cell-agent-VERSION-linux-ARCH.tar.gz and its .sha256 (the output of npm run package:agent), relative to this directory or absolute."
}

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "Region the AMI is built in."
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "Other regions to copy the finished AMI to."
}

variable "ami_users" {
  type        = list(string)
  default     = []
  description = "AWS account IDs allowed to launch the AMI."
}

variable "ami_groups" {
  type        = list(string)
  default     = []
  description = "Set to [\"all\"] to make the AMI public (official Cello images)."
}

variable "ami_name_prefix" {
  type        = string
  default     = "cello-cell"
  description = "Prefix of the AMI name; the controller's image name filter matches it (e.g. cello-cell-*)."
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Instance type of the build machine; empty picks t3.small (amd64) or t4g.small (arm64)."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the build instance; empty uses the default VPC."
}

variable "encrypt_boot" {
  type        = bool
  default     = true
  description = "Encrypt the AMI's root snapshot (with the default EBS key unless kms_key_id is set)."
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for the encrypted root snapshot; empty uses the account's default EBS key."
}

variable "skip_region_validation" {
  type        = bool
  default     = false
  description = "Skip Packer's check that the region exists (an AWS call): for offline validation and EC2-compatible clouds."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Extra tags on the AMI and its snapshots."
}

locals {
  # Source AMIs, by the publishers' own naming and account IDs.
  sources = {
    "debian-12"    = { name = "debian-12-${var.arch}-*", owner = "136693071363", user = "admin" }
    "ubuntu-22.04" = { name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-${var.arch}-server-*", owner = "099720109477", user = "ubuntu" }
    "ubuntu-24.04" = { name = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-${var.arch}-server-*", owner = "099720109477", user = "ubuntu" }
    "al2023"       = { name = "al2023-ami-2023.*-kernel-*-${var.arch == "amd64" ? "x86_64" : "arm64"}", owner = "137112412989", user = "ec2-user" }
  }
  source        = local.sources[var.base]
  bundle_name   = "cell-agent-${var.agent_version}-linux-${var.arch}.tar.gz"
  bundle        = "${abspath(var.bundle_dir) == var.bundle_dir ? var.bundle_dir : "${path.root}/${var.bundle_dir}"}/${local.bundle_name}"
  instance_type = var.instance_type != "" ? var.instance_type : (var.arch == "arm64" ? "t4g.small" : "t3.small")
  stamp         = formatdate("YYYYMMDDhhmmss", timestamp())
}

source "amazon-ebs" "cell" {
  region                 = var.region
  skip_region_validation = var.skip_region_validation
  instance_type          = local.instance_type
  subnet_id              = var.subnet_id != "" ? var.subnet_id : null

  source_ami_filter {
    filters = {
      name                = local.source.name
      architecture        = var.arch == "amd64" ? "x86_64" : "arm64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = [local.source.owner]
    most_recent = true
  }
  ssh_username = local.source.user

  ami_name        = "${var.ami_name_prefix}-${var.agent_version}-${var.base}-${var.arch}-${local.stamp}"
  ami_description = "Cello cell image: cell-agent ${var.agent_version} on ${var.base} (${var.arch})"
  ami_regions     = var.ami_regions
  ami_users       = var.ami_users
  ami_groups      = var.ami_groups
  ena_support     = true
  encrypt_boot    = var.encrypt_boot
  kms_key_id      = var.kms_key_id != "" ? var.kms_key_id : null
  # The build instance requires IMDSv2, like the cells the controller launches (it sets
  # HttpTokens=required on RunInstances; the AMI-level imds_support flag needs a newer amazon
  # plugin than the v1.2.1 these templates are validated with).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = merge({
    Name                  = "${var.ami_name_prefix}-${var.agent_version}-${var.base}-${var.arch}"
    "cello:agent-version" = var.agent_version
    "cello:base"          = var.base
    "cello:arch"          = var.arch
  }, var.tags)
  snapshot_tags = merge({ "cello:agent-version" = var.agent_version }, var.tags)
  run_tags      = { Name = "packer-cello-cell-build" }
}

build {
  name    = "cello-cell"
  sources = ["source.amazon-ebs.cell"]

  provisioner "file" {
    sources     = [local.bundle, "${local.bundle}.sha256", "${path.root}/../install.sh"]
    destination = "/tmp/"
  }

  provisioner "shell" {
    inline = [
      "sudo sh /tmp/install.sh --bundle /tmp/${local.bundle_name} --metadata aws",
      "rm -f /tmp/${local.bundle_name} /tmp/${local.bundle_name}.sha256 /tmp/install.sh",
      # Nothing of the build machine's first boot may carry over into cells.
      "sudo rm -rf /var/lib/cello/bootstrap /var/lib/cello/agent /etc/cello/agent.env",
    ]
  }
}
