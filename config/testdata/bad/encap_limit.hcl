tunnel "udp6" {
  local       = "[::1]:4700"
  remote      = "[::1]:4701"
  addresses   = ["10.99.0.1/30"]
  encap_limit = 4
}

tunnel "raw6" {
  transport   = "raw"
  local       = "2001:db8::1"
  remote      = "2001:db8::2"
  addresses   = ["10.99.1.1/30"]
  encap_limit = "unlimited"
}
