tunnel "big" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  path_mtu  = 70000
}

tunnel "v6outer" {
  transport = "raw"
  local     = "2001:db8::1"
  remote    = "2001:db8::2"
  addresses = ["10.99.1.1/30"]
  path_mtu  = 1000
}

tunnel "v6inner" {
  local     = "127.0.0.1:4702"
  remote    = "127.0.0.1:4703"
  addresses = ["fd99:2::1/64"]
  path_mtu  = 1300
}
