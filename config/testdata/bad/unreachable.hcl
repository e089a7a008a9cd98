tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  routes    = ["10.100.0.0/16"]
}

forward "web" {
  listen = "127.0.0.1:8080"
  target = "10.101.0.1:80"
}

reverse "ssh" {
  listen = "10.99.0.2:22"
  target = "127.0.0.1:22"
}

reverse "all6" {
  listen = "[::]:80"
  target = "127.0.0.1:80"
}
