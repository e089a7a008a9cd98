#!/usr/bin/env python3
"""A tiny DNS server for the README's two-peer walk-through.

Usage: tunnel-dns.py HOST:PORT NAME=IPv4 ...

It answers A queries for the NAMEs given with their addresses, AAAA
queries for them with no answer, and everything else with NXDOMAIN, over
UDP. B's reverse "dns" (examples/two-peers-b.hcl) exposes it inside the
tunnel as 10.99.0.2:53, which A's dns block asks. It is a demonstration,
not a resolver: no TCP, no recursion, no other record types.
"""
import socket
import sys


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    names = {}
    for arg in sys.argv[2:]:
        name, addr = arg.split("=", 1)
        wire = b"".join(bytes([len(l)]) + l.encode() for l in name.strip(".").split(".")) + b"\0"
        names[wire.lower()] = socket.inet_aton(addr)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    while True:
        q, peer = s.recvfrom(512)
        if len(q) < 17:
            continue
        end = 12  # the question's name ends at the first zero-length label
        while end < len(q) and q[end]:
            end += q[end] + 1
        if end + 5 > len(q):
            continue
        name, qtype = q[12:end + 1].lower(), q[end + 1:end + 3]
        addr = names.get(name)
        answer = b""
        if addr and qtype == b"\x00\x01":  # A, class IN, TTL 60
            answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + addr
        flags = b"\x81\x80" if addr else b"\x81\x83"  # response, RD, RA; NXDOMAIN if unknown
        header = q[:2] + flags + b"\x00\x01" + (b"\x00\x01" if answer else b"\x00\x00") + b"\x00\x00\x00\x00"
        s.sendto(header + q[12:end + 5] + answer, peer)


if __name__ == "__main__":
    main()
