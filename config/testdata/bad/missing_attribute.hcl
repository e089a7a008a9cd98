tunnel "peer1" {
  local     = "127.0.0.1:4700"
  addresses = ["10.99.0.1/30"]
}
