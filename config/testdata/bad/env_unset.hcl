tunnel "peer1" {
  local     = env("IPIPSTACK_TEST_UNSET_LOCAL")
  remote    = "127.0.0.1:${env("IPIPSTACK_TEST_UNSET_PORT")}"
  addresses = ["10.99.0.1/30"]
}
