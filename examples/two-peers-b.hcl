# Peer B of the two-peer demo; see two-peers-a.hcl. B exposes three host
# services to the tunnel: a web server on 127.0.0.1:8000 (for example
# `python3 -m http.server 8000 --bind 127.0.0.1`), a UDP service on
# 127.0.0.1:7007 (for example `socat UDP-LISTEN:7007,fork EXEC:cat`) and a
# DNS server on 127.0.0.1:5353 that A's proxies ask for names (the README's
# walk-through starts a small one that answers web.tunnel).

log {
  level = "info"
}

# Both peers run on one host, so B's status server needs its own port.
status {
  listen = "127.0.0.1:9101"
}

tunnel "a" {
  transport = "udp"
  local     = "127.0.0.1:4701"
  remote    = "127.0.0.1:4700"
  addresses = ["10.99.0.2/30", "fd99::2/64"]
}

# Port 80 on our inner address 10.99.0.2 -> the web server on the host.
reverse "web" {
  protocol = "tcp"
  listen   = "10.99.0.2:80"
  target   = "127.0.0.1:8000"
}

# UDP port 7 on every inner IPv4 address -> the UDP service on the host.
reverse "echo" {
  protocol     = "udp"
  listen       = "0.0.0.0:7"
  target       = "127.0.0.1:7007"
  idle_timeout = "30s"
}

# The DNS server of the tunnel: A's dns block asks 10.99.0.2:53.
reverse "dns" {
  protocol     = "udp"
  listen       = "10.99.0.2:53"
  target       = "127.0.0.1:5353"
  idle_timeout = "10s"
}
