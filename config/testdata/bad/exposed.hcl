# Valid, but every host listener here is reachable from other machines.
status {
  listen = "0.0.0.0:9100"
}

tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}

forward "db" {
  listen = "[::]:5432"
  target = "10.99.0.2:5432"
}

socks5 "open" {
  listen = "192.168.1.5:1080"
}

socks5 "authenticated" {
  listen   = "192.168.1.5:1081"
  username = "alice"
  password = "secret"
}
