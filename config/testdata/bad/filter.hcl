tunnel "hub" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]

  filter {
    default   = "reject"
    max_flows = 0

    rule {
      protocol = "tcp"
    }

    rule {
      action       = "allow"
      protocol     = "sctp"
      destinations = ["10.1.2.3/16"]
    }

    rule {
      action = "allow"
      ports  = ["22"]
    }

    rule {
      action   = "allow"
      protocol = "udp"
      ports    = ["53", "0", "70000", "90-80", "dns"]
      source   = "10.0.0.0/8"
    }
  }

  filter {
    default = "allow"
  }
}
