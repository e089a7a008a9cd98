tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
  ttl       = 0
  tos       = "lots"
  df        = "maybe"
}

tunnel "peer2" {
  local     = "127.0.0.1:4702"
  remote    = "127.0.0.1:4703"
  addresses = ["10.99.1.1/30"]
  ttl       = "256"
  tos       = 1.5
}
