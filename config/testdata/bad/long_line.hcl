# A value far wider than the screen: the snippet and the quoted value in
# the detail are cut to the screen width.
tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  mtu       = 1400
}
forward "web" {
  listen = "127.0.0.1:8080"
  target = "host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-host-:80" /* zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz */
}
