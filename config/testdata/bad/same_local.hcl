tunnel "peer1" {
  local     = "0.0.0.0:4700"
  remote    = "192.0.2.1:4700"
  addresses = ["10.99.0.1/30"]
}

tunnel "peer2" {
  local     = "127.0.0.1:4700"
  remote    = "192.0.2.2:4700"
  addresses = ["10.99.1.1/30"]
}

tunnel "raw1" {
  transport = "raw"
  local     = "192.0.2.10"
  remote    = "192.0.2.20"
  addresses = ["10.99.2.1/30"]
}

tunnel "raw2" {
  transport = "raw"
  local     = "192.0.2.10"
  remote    = "192.0.2.20"
  addresses = ["10.99.3.1/30"]
}
