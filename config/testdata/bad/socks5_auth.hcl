tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}

socks5 "user_only" {
  listen   = "127.0.0.1:1080"
  username = "alice"
}

socks5 "pass_only" {
  listen   = "127.0.0.1:1081"
  password = "secret"
}

socks5 "empty" {
  listen   = "127.0.0.1:1082"
  username = ""
  password = "secret"
}
