tunnel "up1" {
  local         = "127.0.0.1:4700"
  remote        = "127.0.0.1:4701"
  addresses     = ["10.99.0.1/30"]
  default_route = true
}

tunnel "up2" {
  local         = "127.0.0.1:4702"
  remote        = "127.0.0.1:4703"
  addresses     = ["10.99.1.1/30"]
  default_route = true
}

tunnel "up3" {
  local     = "127.0.0.1:4704"
  remote    = "127.0.0.1:4705"
  addresses = ["10.99.2.1/30"]
  routes    = ["0.0.0.0/0", "10.99.2.0/30"]
}
