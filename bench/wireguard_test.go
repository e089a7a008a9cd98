package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// wgNet adapts wireguard-go's netstack to the stream benchmark.
type wgNet struct{ n *netstack.Net }

func (w wgNet) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return w.n.DialContext(ctx, network, address)
}

func (w wgNet) Listen(network, address string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	return w.n.ListenTCPAddrPort(ap)
}

func wgKeys(tb testing.TB) (priv, pub [32]byte) {
	if _, err := rand.Read(priv[:]); err != nil {
		tb.Fatal(err)
	}
	priv[0] &= 248
	priv[31] = priv[31]&127 | 64
	p, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		tb.Fatal(err)
	}
	copy(pub[:], p)
	return priv, pub
}

// newWireguardPair joins two wireguard-go netstack devices over loopback
// UDP with MTU 1420, the way wireguard-go's own netstack examples do.
func newWireguardPair(tb testing.TB) (a, b wgNet) {
	tb.Helper()
	privA, pubA := wgKeys(tb)
	privB, pubB := wgKeys(tb)
	portA, portB := freePort(tb).Port(), freePort(tb).Port()
	mk := func(addr string, priv, peerPub [32]byte, port, peerPort uint16, peerAddr string) *netstack.Net {
		tun, tnet, err := netstack.CreateNetTUN([]netip.Addr{netip.MustParseAddr(addr)}, nil, 1420)
		if err != nil {
			tb.Fatal(err)
		}
		dev := device.NewDevice(tun, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
		cfg := fmt.Sprintf("private_key=%s\nlisten_port=%d\npublic_key=%s\nallowed_ip=%s/32\nendpoint=127.0.0.1:%d\n",
			hex.EncodeToString(priv[:]), port, hex.EncodeToString(peerPub[:]), peerAddr, peerPort)
		if err := dev.IpcSet(cfg); err != nil {
			tb.Fatal(err)
		}
		if err := dev.Up(); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(dev.Close)
		return tnet
	}
	return wgNet{mk("10.98.0.1", privA, pubB, portA, portB, "10.98.0.2")}, wgNet{mk("10.98.0.2", privB, pubA, portB, portA, "10.98.0.1")}
}

func BenchmarkBaselineWireguardNetstack(b *testing.B) {
	a, bb := newWireguardPair(b)
	streamBench(b, a, bb, "10.98.0.2:5001", 1, nil)
}
