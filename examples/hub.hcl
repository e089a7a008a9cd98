# A hub routing between four peers (documentation addresses: adapt them).
# Each peer has its own tunnel, its own /30 and, behind it, a network of its
# own; with forwarding on, the hub's stack routes between the tunnels, so
# peer1's LAN can reach peer2's and the other peers reach the internet
# through peer3.
#
# The UDP peers all send to one port of the hub, 192.0.2.1:5555, as Linux
# peers set up the usual way do (ip fou add port 5555 ipproto 4 on each
# end): the tunnels share one socket, which hands each datagram to the
# tunnel whose remote sent it. Any number of tunnels may share a local;
# each needs a remote of its own, at most one may roam, and all must agree
# on df. Datagrams from no tunnel's remote are counted once, as wrong_peer
# of the socket (/status "sockets", ipipstack_socket_wrong_peer_total).

log {
  level  = "info"
  format = "json"
}

status {
  listen = "127.0.0.1:9100"
}

stack {
  forwarding         = true # route between tunnels (router mode)
  tcp_sack           = true
  tcp_congestion     = "cubic"
  reassembly_timeout = "30s"
}

# peer1: rootless UDP, with a LAN behind it.
tunnel "peer1" {
  transport = "udp"
  local     = "192.0.2.1:5555"
  remote    = "198.51.100.11:5555"
  addresses = ["10.99.1.1/30"]
  routes    = ["10.101.0.0/16"] # peer1's LAN
  # allowed_sources defaults to 10.99.1.0/30 and 10.101.0.0/16.
  capture = "peer1.pcap" # inner packets, for wireshark

  # What peer1 may reach through the hub. Without a filter block, with
  # forwarding on, a peer reaches every routed network and every address
  # and service of the hub (the ssh reverse below, bound to peer1's side,
  # would answer peer2 and peer3 too). Rules are tried in order, the first
  # match wins, then the default; replies to flows that left through this
  # tunnel always pass (the filter is stateful). Drops count as "filtered"
  # in the tunnel's drops (status and metrics).
  filter {
    default = "deny"
    rule {
      action       = "allow"
      protocol     = "tcp"
      destinations = ["10.99.1.1/32"] # the hub's ssh reverse forward
      ports        = ["22"]
    }
    rule {
      action       = "allow"
      protocol     = "tcp"
      destinations = ["10.102.0.0/16", "fd02::/48"] # peer2's LAN: web and an app range
      ports        = ["80", "443", "8000-8099"]
    }
    rule {
      action   = "allow"
      protocol = "icmp" # ping and ICMP errors everywhere
    }
    rule {
      action       = "deny"
      destinations = ["10.0.0.0/8", "fd00::/8"] # nothing else inside
    }
    rule {
      action = "allow" # the internet through peer3
    }
  }
}

# peer2: real IP-in-IP over IPv6 (next header 4/41, like Linux ip6tnl); needs
# CAP_NET_RAW. It carries IPv4 and IPv6 inner traffic.
tunnel "peer2" {
  transport   = "raw"
  local       = "2001:db8::1" # raw tunnels have no ports
  remote      = "2001:db8:2::2"
  addresses   = ["10.99.2.1/30", "fd99:2::1/64"]
  routes      = ["10.102.0.0/16", "fd02::/48"]
  encap_limit = 4       # RFC 2473 option (the default); the MTU is 1500 - 40 - 8 = 1452
  ttl         = 64      # a fixed outer hop limit instead of "inherit"
  tos         = "inherit"
}

# peer3: the upstream. Everything not routed elsewhere goes there. Its
# replies come from anywhere on the internet, so it must accept any inner
# source; then its outer address is its only credential, and it is pinned:
# roaming together with a catch-all allowed_sources would let anyone who
# can reach 192.0.2.1:5555 inject packets from any address and, once it
# answers the tunnel's echo request, take the hub's default route (check
# warns about that combination). A peer whose address really moves gets
# roaming = true and allowed_sources of its own networks only.
tunnel "peer3" {
  transport       = "udp"
  local           = "192.0.2.1:5555" # the same socket as peer1 and peer4
  remote          = "203.0.113.7:5555"
  addresses       = ["10.99.3.1/30"]
  default_route   = true          # 0.0.0.0/0 and ::/0
  allowed_sources = ["0.0.0.0/0"] # replies from anywhere on the internet
  path_mtu        = 1420          # the upstream path is itself a tunnel

  # The internet may only answer: flows the peers open through peer3 get
  # their replies, unsolicited packets are dropped.
  filter {
    default   = "deny"
    max_flows = 262144 # a busy upstream: about 25 MiB of flow table at most
  }
}

# peer4: a Linux peer whose FOU tunnel uses encap-sport auto, so its
# datagrams come from a port per flow; any_source_port takes them from
# every port of its address. Replies still go to port 5555.
#   ip link add hub type ipip remote 192.0.2.1 local 198.51.100.14 \
#     encap fou encap-sport auto encap-dport 5555
tunnel "peer4" {
  transport       = "udp"
  local           = "192.0.2.1:5555"
  remote          = "198.51.100.14:5555"
  any_source_port = true
  addresses       = ["10.99.4.1/30"]
  routes          = ["10.104.0.0/16"]
}

# SSH into the hub from any peer.
reverse "ssh" {
  protocol        = "tcp"
  listen          = "10.99.1.1:22"
  target          = "127.0.0.1:22"
  max_connections = 16
}

# The hub's own host reaches a web server in peer1's LAN.
forward "intranet" {
  listen = "127.0.0.1:8080"
  target = "10.101.0.10:80"
}
