log {
  level  = "verbose"
  format = "yaml"
}

stack {
  tcp_congestion    = "bbr"
  tcp_send_buffer   = 1024
  reassembly_memory = 4.5
}

tunnel "peer 1" {
  transport = "gre"
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["0.0.0.0/30", "::ffff:10.0.0.1/126"]
  capture   = ""

  allowed_sources = []
}

forward "web" {
  protocol        = "sctp"
  listen          = "127.0.0.1:8080"
  target          = "0.0.0.0:80"
  max_connections = 0
}
