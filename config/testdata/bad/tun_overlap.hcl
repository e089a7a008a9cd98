tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30", "fd99::1/64"]
  mtu       = 1280
}

tunnel "peer2" {
  local     = "127.0.0.1:4702"
  remote    = "127.0.0.1:4703"
  addresses = ["10.99.1.1/30"]
  mtu       = 1000
}

# The host side overlaps tunnel peer1, and the MTU defaults to peer2's 1000,
# too small for the IPv6 address.
tun {
  addresses = ["10.99.0.100/24", "fd98::1/64"]
}
