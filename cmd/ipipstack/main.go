// Command ipipstack runs userspace IP-in-IP tunnels on gVisor's netstack
// and exposes them to the host through port forwards, a SOCKS5 proxy and a
// TUN device. Run `ipipstack --help` for its commands and exit statuses;
// the configuration file is documented in examples/README.md.
package main

import (
	"context"
	"os"

	"github.com/ipipstack/ipipstack/internal/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
