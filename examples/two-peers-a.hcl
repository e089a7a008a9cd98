# Peer A of the two-peer demo: two ipipstack processes on one host, joined
# by a UDP tunnel over loopback. Run one ipipstack daemon with this file and
# another with two-peers-b.hcl:
#   ipipstack run -c examples/two-peers-b.hcl &
#   ipipstack run -c examples/two-peers-a.hcl &
# then, on the host:
#   curl http://127.0.0.1:8080/                   # forward "web" -> B's reverse "web" -> 127.0.0.1:8000
#   echo hi | nc -u -w1 127.0.0.1 7000            # forward "echo" (UDP) -> B's reverse "echo"
#   curl --socks5 127.0.0.1:1080 http://10.99.0.2/  # any address inside the tunnel, via SOCKS5
#   curl --proxy http://127.0.0.1:3128 http://10.99.0.2/  # the same through the HTTP proxy
#   curl --proxy http://127.0.0.1:3128 http://web.tunnel/ # a name, resolved by B's DNS inside the tunnel
#   ipipstack status -c examples/two-peers-a.hcl    # counters; SIGTERM (kill %2) drains and stops

log {
  level  = "info" # debug | info | warn | error
  format = "text" # text | json
}

# JSON at http://127.0.0.1:9100/status, Prometheus at /metrics.
status {
  listen = "127.0.0.1:9100"
}

tunnel "b" {
  transport = "udp"            # rootless: each inner packet is one UDP datagram (FOU)
  local     = "127.0.0.1:4700" # our end of the outer path
  remote    = "127.0.0.1:4701" # peer B's end
  # Inner addresses with their on-link prefixes: B is 10.99.0.2 and fd99::2.
  addresses = ["10.99.0.1/30", "fd99::1/64"]
  # The inner MTU defaults to path_mtu 1500 - 20 (IPv4) - 8 (UDP) = 1472.
}

# Host port 8080 -> port 80 inside the tunnel, on peer B.
forward "web" {
  protocol = "tcp"
  listen   = "127.0.0.1:8080"
  target   = "10.99.0.2:80"
}

# Host UDP port 7000 -> B's UDP reverse forward on 10.99.0.2:7.
forward "echo" {
  protocol     = "udp"
  listen       = "127.0.0.1:7000"
  target       = "10.99.0.2:7"
  idle_timeout = "30s" # a UDP session ends after 30s without packets
}

# A SOCKS5 proxy on the host whose connections are made inside the stack.
# Add username = env("SOCKS_USER") and password = env("SOCKS_PASS") to
# require RFC 1929 authentication.
socks5 "proxy" {
  listen = "127.0.0.1:1080"
}

# Names that SOCKS5 and HTTP proxy clients ask for are looked up through the
# tunnel, by the DNS server B exposes at 10.99.0.2:53 (its reverse "dns");
# never by the host's resolver.
dns {
  servers = ["10.99.0.2:53"]
}

# An HTTP proxy on the host whose connections are made inside the stack:
# CONNECT to any port (curl --proxytunnel, https:// URLs) and absolute-URI
# requests for plain http://. Add username and password to require Basic
# authentication (Proxy-Authorization).
http_proxy "web" {
  listen = "127.0.0.1:3128"
}
