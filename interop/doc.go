// Package interop tests ipipstack's tunnels against a real Linux kernel:
// Debian's stock kernel booted in qemu-system-x86_64, whose own ipip, sit,
// ip6tnl and FOU devices are the peers of the project's stack.
//
// # Usage
//
//	make interop
//
// which runs, as root,
//
//	go test -tags interop -count=1 -v ./interop/
//
// The package's library part prepares and runs the VM:
//
//   - [PrepareImage] fetches the kernel package that Debian's
//     linux-image-amd64 depends on with `apt-get download` (never installing
//     it), unpacks it with `dpkg-deb -x` into a cache directory keyed by the
//     package's version, and builds a gzip'd initramfs from static busybox,
//     the host's iproute2 `ip` with its shared libraries (found with ldd),
//     the tunnel and virtio modules with their dependencies (read from the
//     modules' own .modinfo, since the package ships no modules.dep) and an
//     /init script. Both are reused between runs; a fresh machine builds them.
//   - [Boot] starts qemu inside a network namespace the caller made, on a tap
//     device there, with virtio-net's offloads off so that the packets on
//     the tap carry final checksums as on a wire. It tries KVM briefly and
//     falls back to TCG (on the CI machine /dev/kvm exists but `-cpu host`
//     fails). The VM is driven through its serial console on qemu's stdio:
//     [VM.Run] sends one shell command and waits, with a timeout, for its
//     exit status; every wait's error names what it waited for and shows
//     the last console lines.
//
// The tests (interop_test.go, build tag interop, so that `make test` does
// not boot a VM) configure every tunnel kind in the one VM at once, on
// different outer addresses and ports (kinds_test.go), and run the
// project's stack in the namespace against each: pings, fragmented pings,
// TCP and UDP both ways, and the outer headers compared field by field
// with the kernel's (capture_test.go). A router inside the VM narrows the
// outer path for the path MTU tests (router_test.go), and the
// `ipipstack run` binary is driven through its forwards (binary_test.go).
// The path MTU, inner IPv6 and raw-demultiplexing behaviours that issue 16
// found broken against Linux 6.1 are tested there too, and pass.
//
// Host packages: qemu-system-x86 (without recommends), busybox-static and
// iproute2; the kernel is only downloaded.
package interop
