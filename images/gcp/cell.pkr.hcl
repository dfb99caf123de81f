# Cello cell GCE image: a stock Debian or Ubuntu image plus images/install.sh and the
# cell-agent bundle. Build (from images/gcp, after `npm run package:agent`):
#
#   packer init .
#   packer build -var project_id=my-project -var agent_version=0.1.0 .
#
# See images/README.md for every variable.

packer {
  required_version = ">= 1.10.0"
  required_plugins {
    googlecompute = {
      version = ">= 1.1.6"
      source  = "github.com/hashicorp/googlecompute"
    }
  }
}

variable "project_id" {
  type        = string
  description = "GCP project the image is built and stored in."
}

variable "agent_version" {
  type        = string
  description = "Version of the cell-agent bundle to install (the VERSION in cell-agent-VERSION-linux-ARCH.tar.gz)."
}

variable "arch" {
  type        = string
  default     = "amd64"
  description = "CPU architecture of the image: amd64 or arm64 (Tau T2A / Axion)."
  validation {
    condition     = contains(["amd64", "arm64"], var.arch)
    error_message = "The arch variable must be amd64 or arm64."
  }
}

variable "base" {
  type        = string
  default     = "debian-12"
  description = "Base image: debian-12, ubuntu-2204 or ubuntu-2404."
  validation {
    condition     = contains(["debian-12", "ubuntu-2204", "ubuntu-2404"], var.base)
    error_message = "The base variable must be debian-12, ubuntu-2204 or ubuntu-2404."
  }
}

variable "bundle_dir" {
  type        = string
  default     = "../out"
  description = "Directory holding cell-agent-VERSION-linux-ARCH.tar.gz and its .sha256 (the output of npm run package:agent), relative to this directory or absolute."
}

variable "zone" {
  type        = string
  default     = "us-central1-a"
  description = "Zone of the build instance (arm64 needs a zone with T2A machines)."
}

variable "machine_type" {
  type        = string
  default     = ""
  description = "Machine type of the build instance; empty picks e2-small (amd64) or t2a-standard-1 (arm64)."
}

variable "image_family" {
  type        = string
  default     = "cello-cell"
  description = "Image family; the controller can launch the newest image of a family."
}

variable "subnetwork" {
  type        = string
  default     = ""
  description = "Subnetwork of the build instance; empty uses the default network."
}

variable "labels" {
  type        = map(string)
  default     = {}
  description = "Extra labels on the image."
}

locals {
  source_family = {
    "debian-12"   = var.arch == "arm64" ? "debian-12-arm64" : "debian-12"
    "ubuntu-2204" = var.arch == "arm64" ? "ubuntu-2204-lts-arm64" : "ubuntu-2204-lts"
    "ubuntu-2404" = var.arch == "arm64" ? "ubuntu-2404-lts-arm64" : "ubuntu-2404-lts-amd64"
  }
  source_project = {
    "debian-12"   = "debian-cloud"
    "ubuntu-2204" = "ubuntu-os-cloud"
    "ubuntu-2404" = "ubuntu-os-cloud"
  }
  bundle_name  = "cell-agent-${var.agent_version}-linux-${var.arch}.tar.gz"
  bundle       = "${abspath(var.bundle_dir) == var.bundle_dir ? var.bundle_dir : "${path.root}/${var.bundle_dir}"}/${local.bundle_name}"
  machine_type = var.machine_type != "" ? var.machine_type : (var.arch == "arm64" ? "t2a-standard-1" : "e2-small")
  stamp        = formatdate("YYYYMMDDhhmmss", timestamp())
  # GCE names: lower-case letters, digits and hyphens.
  version_slug = regex_replace(lower(var.agent_version), "[^a-z0-9-]", "-")
}

source "googlecompute" "cell" {
  project_id              = var.project_id
  zone                    = var.zone
  machine_type            = local.machine_type
  subnetwork              = var.subnetwork != "" ? var.subnetwork : null
  source_image_family     = local.source_family[var.base]
  source_image_project_id = [local.source_project[var.base]]
  ssh_username            = "packer"
  disk_size               = 10
  # The gce provider launches cells as Shielded VMs (provider.shieldedVm, on by default): the
  # image is built on one, so a boot path that secure boot refuses fails here, not in a cell.
  enable_secure_boot          = true
  enable_vtpm                 = true
  enable_integrity_monitoring = true

  image_name        = "${var.image_family}-${local.version_slug}-${var.base}-${var.arch}-${local.stamp}"
  image_family      = var.image_family
  image_description = "Cello cell image: cell-agent ${var.agent_version} on ${var.base} (${var.arch})"
  image_labels = merge({
    cello-agent-version = local.version_slug
    cello-base          = var.base
    cello-arch          = var.arch
  }, var.labels)
}

build {
  name    = "cello-cell"
  sources = ["source.googlecompute.cell"]

  provisioner "file" {
    sources     = [local.bundle, "${local.bundle}.sha256", "${path.root}/../install.sh"]
    destination = "/tmp/"
  }

  provisioner "shell" {
    inline = [
      "sudo sh /tmp/install.sh --bundle /tmp/${local.bundle_name} --metadata gce",
      "rm -f /tmp/${local.bundle_name} /tmp/${local.bundle_name}.sha256 /tmp/install.sh",
      # Nothing of the build machine's first boot may carry over into cells.
      "sudo rm -rf /var/lib/cello/bootstrap /var/lib/cello/agent /etc/cello/agent.env",
    ]
  }
}
