//go:build linux

package endpoint

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// oobSize is the control buffer per message: room for a ToS / traffic
// class and a TTL / hop limit (or a GRO segment size), each an int.
const oobSize = 96

// mmsgBatch is the preallocated state of one recvmmsg or sendmmsg call.
// It is not safe for concurrent use: a reader owns one, and a writer takes
// the transport's cached one or makes its own (sockTransport.WriteBatch).
type mmsgBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	oob   []byte

	// The closures handed to RawConn.Read and Write, built once, and the
	// state they share with recv and send, so that a call allocates
	// nothing.
	n, got int
	errno  syscall.Errno
	recvFn func(fd uintptr) bool
	sendFn func(fd uintptr) bool
}

func newMmsgBatch(n int) *mmsgBatch {
	b := &mmsgBatch{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n*MaxSegments),
		names: make([]unix.RawSockaddrInet6, n),
		oob:   make([]byte, n*oobSize),
	}
	b.recvFn = func(fd uintptr) bool { return b.call(fd, unix.SYS_RECVMMSG) }
	b.sendFn = func(fd uintptr) bool { return b.call(fd, unix.SYS_SENDMMSG) }
	return b
}

// call makes one recvmmsg or sendmmsg call for the first b.n headers and
// reports false (wait and retry) on EAGAIN.
func (b *mmsgBatch) call(fd uintptr, trap uintptr) bool {
	r, _, e := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(b.n), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	b.got, b.errno = int(r), e
	return true
}

// sockConn is a non-blocking socket registered with the Go poller.
type sockConn struct {
	rc syscall.RawConn
	v6 bool
}

// recv reads a batch. msgs[i].Buffers[0] are the buffers to fill.
func (s *sockConn) recv(b *mmsgBatch, msgs []Message) (int, error) {
	n := min(len(msgs), len(b.hdrs))
	for i := 0; i < n; i++ {
		buf := msgs[i].Buffers[0]
		iov := &b.iovs[i]
		iov.Base = unsafe.SliceData(buf)
		iov.SetLen(len(buf))
		h := &b.hdrs[i].Hdr
		h.Iov = iov
		h.SetIovlen(1)
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Control = &b.oob[i*oobSize]
		h.SetControllen(oobSize)
		h.Flags = 0
		b.hdrs[i].Len = 0
	}
	b.n = n
	err := s.rc.Read(b.recvFn)
	got, errno := b.got, b.errno
	if err != nil {
		return 0, closedErr(err)
	}
	if errno != 0 {
		return 0, os.NewSyscallError("recvmmsg", errno)
	}
	for i := 0; i < got; i++ {
		m := &msgs[i]
		m.N = int(b.hdrs[i].Len)
		m.Addr = sockaddrToAddrPort(&b.names[i])
		m.HasTOS, m.GSOSize = false, 0
		h := &b.hdrs[i].Hdr
		parseControl(m, b.oob[i*oobSize:i*oobSize+int(h.Controllen)])
	}
	return got, nil
}

// send writes a batch; each message goes to msgs[i].Addr with control
// messages for its TOS and TTL when withCmsg is set.
func (s *sockConn) send(b *mmsgBatch, msgs []Message, withCmsg bool) (int, error) {
	sent := 0
	for sent < len(msgs) {
		n := min(len(msgs)-sent, len(b.hdrs))
		for i := 0; i < n; i++ {
			m := &msgs[sent+i]
			iovs := b.iovs[i*MaxSegments : (i+1)*MaxSegments]
			k := 0
			for _, seg := range m.Buffers {
				if len(seg) == 0 {
					continue
				}
				if k == MaxSegments {
					return sent, errors.New("endpoint: datagram has too many segments")
				}
				iovs[k].Base = unsafe.SliceData(seg)
				iovs[k].SetLen(len(seg))
				k++
			}
			h := &b.hdrs[i].Hdr
			h.Iov = &iovs[0]
			h.SetIovlen(k)
			h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			h.Namelen = putSockaddr(&b.names[i], m.Addr, s.v6)
			h.Control = nil
			h.SetControllen(0)
			if withCmsg {
				oob := b.oob[i*oobSize : (i+1)*oobSize]
				if l := putControl(oob, m, s.v6); l > 0 {
					h.Control = &oob[0]
					h.SetControllen(l)
				}
			}
		}
		b.n = n
		err := s.rc.Write(b.sendFn)
		got, errno := b.got, b.errno
		if err != nil {
			return sent, closedErr(err)
		}
		if errno != 0 {
			return sent, os.NewSyscallError("sendmmsg", errno)
		}
		sent += got
		if got < n {
			// The kernel stops at the first failing message and reports
			// the ones before it; report the failure of the next one.
			continue
		}
	}
	return sent, nil
}

func closedErr(err error) error {
	if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, unix.EBADF) {
		return ErrClosed
	}
	return err
}

func sockaddrToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
	}
	return netip.AddrPort{}
}

func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort, v6 bool) uint32 {
	if !v6 {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], ap.Port())
		sa4.Addr = ap.Addr().Unmap().As4()
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	return unix.SizeofSockaddrInet6
}

// parseControl reads the outer ToS / traffic class from received control
// messages without allocating.
func parseControl(m *Message, oob []byte) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return
		}
		data := oob[unix.SizeofCmsghdr:l]
		switch {
		case h.Level == unix.SOL_IP && h.Type == unix.IP_TOS && len(data) >= 1:
			m.TOS, m.HasTOS = data[0], true
		case h.Level == unix.SOL_IPV6 && h.Type == unix.IPV6_TCLASS && len(data) >= 4:
			m.TOS, m.HasTOS = uint8(*(*int32)(unsafe.Pointer(&data[0]))), true
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 4:
			// The UDP_GRO control message is an int (pitfall: the
			// UDP_SEGMENT one on send is a u16).
			m.GSOSize = int(*(*int32)(unsafe.Pointer(&data[0])))
		}
		adv := (l + unix.SizeofPtr - 1) &^ (unix.SizeofPtr - 1)
		if adv >= len(oob) {
			return
		}
		oob = oob[adv:]
	}
}

// putControl writes the TOS and TTL control messages for m and returns
// their length.
func putControl(oob []byte, m *Message, v6 bool) int {
	level, tosType, ttlType := int32(unix.SOL_IP), int32(unix.IP_TOS), int32(unix.IP_TTL)
	if v6 {
		level, tosType, ttlType = unix.SOL_IPV6, unix.IPV6_TCLASS, unix.IPV6_HOPLIMIT
	}
	space := unix.CmsgSpace(4)
	off := 0
	put := func(typ int32, v int32) {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
		h.Level, h.Type = level, typ
		h.SetLen(unix.CmsgLen(4))
		*(*int32)(unsafe.Pointer(&oob[off+unix.SizeofCmsghdr])) = v
		off += space
	}
	put(tosType, int32(m.TOS))
	if m.TTL != 0 {
		put(ttlType, int32(m.TTL))
	}
	if m.GSOSize > 0 {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		*(*uint16)(unsafe.Pointer(&oob[off+unix.SizeofCmsghdr])) = uint16(m.GSOSize)
		off += unix.CmsgSpace(2)
	}
	return off
}
