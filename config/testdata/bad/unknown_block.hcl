tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}

forwrd "web" {
  listen = "127.0.0.1:8080"
  target = "10.99.0.2:80"
}
