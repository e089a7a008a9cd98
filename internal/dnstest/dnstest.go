// Package dnstest is a small DNS server for tests, answering A and AAAA
// from a map, NXDOMAIN for other names, truncated UDP answers for chosen
// names (forcing TCP), or nothing at all, on any net.PacketConn and
// net.Listener (a tunnel stack's, typically).
package dnstest

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"

	"golang.org/x/net/dns/dnsmessage"
)

// Server is a small authoritative DNS server for tests, run on a peer
// stack's ListenPacket and Listen. Names not in records get NXDOMAIN.
type Server struct {
	Records  map[string][]netip.Addr // "web.ipipstack.test." → addresses
	Truncate map[string]bool         // names whose UDP answer is truncated
	Silent   bool                    // never answer (a dead server)

	mu      sync.Mutex
	queries []string // "udp A web.ipipstack.test."
}

// Asked returns the queries seen so far, as "udp A web.example.".
func (d *Server) Asked() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.queries...)
}

// answer builds the reply to query req, or nil to stay silent.
func (d *Server) answer(req []byte, transport string) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	d.mu.Lock()
	d.queries = append(d.queries, transport+" "+q.Type.String()[4:]+" "+q.Name.String())
	d.mu.Unlock()
	if d.Silent {
		return nil
	}
	name := strings.ToLower(q.Name.String())
	addrs, known := d.Records[name]
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	trunc := d.Truncate[name] && transport == "udp"
	rh.Truncated = trunc
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	if !trunc {
		rrh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
		for _, a := range addrs {
			switch {
			case q.Type == dnsmessage.TypeA && a.Is4():
				b.AResource(rrh, dnsmessage.AResource{A: a.As4()})
			case q.Type == dnsmessage.TypeAAAA && a.Is6():
				b.AAAAResource(rrh, dnsmessage.AAAAResource{AAAA: a.As16()})
			}
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// Serve answers queries on pc (UDP) and ln (TCP, RFC 1035 length
// prefixed) until they are closed, which is the caller's to do.
func (d *Server) Serve(pc net.PacketConn, ln net.Listener) {
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := d.answer(buf[:n], "udp"); out != nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					var l [2]byte
					if _, err := io.ReadFull(c, l[:]); err != nil {
						return
					}
					req := make([]byte, binary.BigEndian.Uint16(l[:]))
					if _, err := io.ReadFull(c, req); err != nil {
						return
					}
					out := d.answer(req, "tcp")
					if out == nil {
						continue
					}
					c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...))
				}
			}()
		}
	}()
}
