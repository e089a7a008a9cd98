tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/33", "fd99::1", "fd99::zz/64"]
  routes    = ["10.100.0.1/16"]
}
