tunnel "raw" {
  transport = "raw"
  local     = "192.0.2.1"
  remote    = "192.0.2.2:4700"
  addresses = ["10.99.0.1/30"]
}

tunnel "udp" {
  transport = "udp"
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1"
  addresses = ["10.99.1.1/30"]
}
