tunnel "lossy" {
  local     = "127.0.0.1:4700"
  remote    = "127.0.0.1:4701"
  addresses = ["10.99.0.1/30"]

  impair {
    loss      = 5
    reorder   = "5%"
    duplicate = -0.1
    corrupt   = true
    delay     = 1
    jitter    = "soon"
    rate      = "100MB"
    burst     = 10
  }

  impair {
    loss = 0.01
  }
}

tunnel "blackhole" {
  local     = "127.0.0.1:4702"
  remote    = "127.0.0.1:4703"
  addresses = ["10.99.1.1/30"]

  impair {
    loss = 1
    rate = "fast"
  }
}
