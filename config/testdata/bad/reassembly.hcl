stack {
  reassembly_timeout = "2h"
  reassembly_memory  = 1024
}

tunnel "peer1" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]
}
