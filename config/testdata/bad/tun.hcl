tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}

tun {
  name      = "ipip-tunnel-device0"
  addresses = ["10.99.0.2/24"]
  mtu       = 1000000
}
