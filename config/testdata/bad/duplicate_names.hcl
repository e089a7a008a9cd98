tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}

tunnel "peer1" {
  local     = "127.0.0.1:4702"
  remote    = "127.0.0.1:4703"
  addresses = ["10.99.1.1/30"]
}

socks5 "proxy" {
  listen = "127.0.0.1:1080"
}

socks5 "proxy" {
  listen = "127.0.0.1:1081"
}

log {
  level = "debug"
}

log {
  level = "info"
}
