# A warning, not an error: the configuration is valid.
tunnel "jumbo" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  mtu       = 1500
}
