tunnel "peer1" {
  local     = "localhost:4700"
  remote    = "127.0.0.1:70000"
  addresses = ["10.99.0.1/30"]
}

forward "web" {
  listen = "127.0.0.1"
  target = "fd99::2:80"
}
