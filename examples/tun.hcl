# TUN mode: a host TUN device (needs CAP_NET_ADMIN) routes host traffic into
# the stack, which forwards it through the tunnel. Ordinary host programs
# then reach the peer's addresses directly:
#
#   ping 10.99.0.2
#   curl http://10.100.0.10/

stack {
  forwarding = true # the stack routes between the TUN device and the tunnel
}

tunnel "peer" {
  transport = "udp"
  local     = "0.0.0.0:4700" # any local address
  remote    = "198.51.100.2:4700"
  addresses = ["10.99.0.1/30"]
  routes    = ["10.100.0.0/16"] # a network behind the peer
  df        = "set"
}

tun {
  name      = "ipip0"
  addresses = ["10.99.1.1/24"]                  # the host's side of the device
  routes    = ["10.99.0.0/30", "10.100.0.0/16"] # host routes into the device
  mtu       = 1472                              # the tunnel's MTU (the default)
}
