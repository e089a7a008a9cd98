status {
  listen = "127.0.0.1:8080"
}

tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}

forward "web" {
  listen = "0.0.0.0:8080"
  target = "10.99.0.2:80"
}

# Same port, other protocol: fine.
forward "dns" {
  protocol = "udp"
  listen   = "127.0.0.1:8080"
  target   = "10.99.0.2:53"
}

socks5 "proxy" {
  listen = "127.0.0.1:8080"
}

reverse "a" {
  listen = "0.0.0.0:22"
  target = "127.0.0.1:22"
}

reverse "b" {
  listen = "10.99.0.1:22"
  target = "127.0.0.1:2222"
}
