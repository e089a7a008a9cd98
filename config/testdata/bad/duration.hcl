stack {
  reassembly_timeout = 30
}

tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}

forward "dns" {
  protocol     = "udp"
  listen       = "127.0.0.1:5353"
  target       = "10.99.0.2:53"
  idle_timeout = "soon"
}

reverse "dns" {
  protocol     = "udp"
  listen       = "10.99.0.1:53"
  target       = "127.0.0.1:53"
  idle_timeout = "0s"
}
