log {
  level = "info"
}

socks5 "proxy" {
  listen = "127.0.0.1:1080"
}
