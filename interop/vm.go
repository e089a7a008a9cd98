//go:build linux

package interop

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// initScript is the VM's /init: it mounts the pseudo file systems, loads
// the modules in /etc/modules-load, turns the console's echo off, says
// "@@INIT ready RELEASE" and leaves a shell on the console for VM.Run,
// without prompts (the console is a tty, so the shell is interactive).
// Debian's static busybox runs its own applets before $PATH, so `ip` is
// a shell function (in $ENV) that calls iproute2's: only that one knows
// fou, encap and encaplimit. Job control is off: with it, a background
// job could leave the shell outside the tty's foreground process group,
// its next read fails and it exits (seen with `tftp ... &`). Should the
// shell exit anyway, init says so on the console and starts another. A
// module that fails to load is reported on the console and not fatal: the
// test that needs it fails with the console lines in its message.
const initScript = `#!/bin/busybox sh
export PATH=/usr/local/sbin:/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
dmesg -n 1
while read m; do insmod "$m" || echo "@@INIT insmod $m failed"; done < /etc/modules-load
stty -echo 2>/dev/null
echo "@@INIT ready $(uname -r)"
export PS1= PS2= ENV=/etc/shrc
echo 'set +m; ip() { /usr/local/sbin/ip "$@"; }' > /etc/shrc
while :; do sh; echo "@@INIT shell exited with status $?, starting another"; done
`

// BootOptions say where and how the VM runs.
type BootOptions struct {
	// Netns is the network namespace (`ip netns` name) qemu runs in;
	// Tap is the tap device there that becomes the VM's eth0. Both must
	// exist; the caller removes them.
	Netns, Tap string
	// MAC is eth0's address; "" means 52:54:00:12:34:56.
	MAC string
	// ReadyTimeout bounds the boot under TCG; 0 means 90 s (it takes
	// 7 to 15 s on 2 busy cores). A KVM attempt gets kvmProbe first.
	ReadyTimeout time.Duration
	// Logf, if set, gets a line per boot attempt.
	Logf func(format string, args ...any)
}

// VM is a running qemu. Run and Close may be called from any goroutine;
// Run calls are serialised.
type VM struct {
	// Accel is "kvm" or "tcg".
	Accel string
	// Release is the booted kernel's `uname -r`.
	Release string

	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{} // closed when qemu has exited
	runMu  sync.Mutex    // serialises Run

	// mu guards the fields below.
	mu      sync.Mutex
	lines   []string      // every console line so far, without "\r\n"
	changed chan struct{} // closed and replaced when lines grow or qemu exits
	exitErr error
	seq     int
}

// kvmProbe is how long a KVM boot may take before Boot falls back to
// TCG. Under KVM /init is ready in a second or two; on the CI machine KVM
// starts but the guest never prints a line.
const kvmProbe = 6 * time.Second

// consoleTail is how many console lines an error shows.
const consoleTail = 25

// Boot starts img in qemu inside opts.Netns and waits until /init is ready.
// It tries KVM (`-accel kvm -cpu host`) when /dev/kvm opens, and uses TCG
// when KVM fails to start or to boot within kvmProbe.
func Boot(img *Image, opts BootOptions) (*VM, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if opts.MAC == "" {
		opts.MAC = "52:54:00:12:34:56"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 90 * time.Second
	}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		vm, err := boot(img, opts, "kvm", kvmProbe)
		if err == nil {
			return vm, nil
		}
		logf("interop: KVM did not boot, falling back to TCG: %v", err)
	}
	return boot(img, opts, "tcg", opts.ReadyTimeout)
}

func boot(img *Image, opts BootOptions, accel string, timeout time.Duration) (*VM, error) {
	args := []string{"netns", "exec", opts.Netns, "qemu-system-x86_64",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "pc", "-m", "256", "-smp", "1",
		"-kernel", img.Kernel, "-initrd", img.Initramfs,
		// panic=-1 with -no-reboot: if /init dies, qemu exits.
		"-append", "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init",
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-netdev", "tap,id=net0,ifname=" + opts.Tap + ",script=no,downscript=no,vhost=off",
		// Every offload off, both ways: the guest computes each checksum
		// and sends no GSO frames, so the tap carries wire packets.
		"-device", "virtio-net-pci,netdev=net0,mac=" + opts.MAC +
			",csum=off,gso=off,guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off" +
			",host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,mrg_rxbuf=off",
	}
	if accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg")
	}
	cmd := exec.Command("ip", args...)
	// `ip netns exec` execs qemu in its own process, so qemu dies with
	// the test even when the test binary is killed before its cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("interop: qemu stdin: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("interop: qemu stdout: %w", err)
	}
	cmd.Stderr = cmd.Stdout // qemu's own errors go to the console log too
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("interop: start qemu-system-x86_64 (Debian package qemu-system-x86) in %s: %w", opts.Netns, err)
	}
	vm := &VM{Accel: accel, cmd: cmd, stdin: stdin, exited: make(chan struct{}), changed: make(chan struct{})}
	go vm.readConsole(stdout)
	m, err := vm.waitLine(regexp.MustCompile(`^@@INIT ready (\S+)`), 0, timeout, "/init to say it is ready ("+accel+")")
	if err != nil {
		vm.Close()
		return nil, err
	}
	vm.Release = m[1]
	// /init reports modules that failed; the tests need all of them.
	if bad := vm.grep("@@INIT insmod"); bad != "" {
		vm.Close()
		return nil, fmt.Errorf("interop: VM (%s): %s", accel, bad)
	}
	return vm, nil
}

// readConsole collects qemu's output line by line until it exits.
func (vm *VM) readConsole(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r")
		vm.mu.Lock()
		vm.lines = append(vm.lines, l)
		close(vm.changed)
		vm.changed = make(chan struct{})
		vm.mu.Unlock()
	}
	err := vm.cmd.Wait()
	vm.mu.Lock()
	vm.exitErr = fmt.Errorf("qemu exited: %v", err)
	close(vm.changed)
	vm.changed = make(chan struct{})
	vm.mu.Unlock()
	close(vm.exited)
}

// waitLine waits up to timeout for a console line from index from on that
// matches re, and returns its submatches. The error names what, and shows
// the last console lines.
func (vm *VM) waitLine(re *regexp.Regexp, from int, timeout time.Duration, what string) ([]string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		vm.mu.Lock()
		for ; from < len(vm.lines); from++ {
			if m := re.FindStringSubmatch(vm.lines[from]); m != nil {
				vm.mu.Unlock()
				return m, nil
			}
		}
		changed, exitErr := vm.changed, vm.exitErr
		vm.mu.Unlock()
		if exitErr != nil {
			return nil, fmt.Errorf("interop: waiting for %s: %v; last console lines:\n%s", what, exitErr, vm.Tail(consoleTail))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("interop: waiting for %s: no answer within %v; last console lines:\n%s", what, timeout, vm.Tail(consoleTail))
		}
	}
}

// grep returns the console lines that contain s, joined by newlines.
func (vm *VM) grep(s string) string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	var out []string
	for _, l := range vm.lines {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Tail returns the last n console lines.
func (vm *VM) Tail(n int) string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	l := vm.lines
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return "  | " + strings.Join(l, "\n  | ")
}

// ErrExit is wrapped by Run's error when the command ran but exited with
// a non-zero status.
var ErrExit = errors.New("non-zero exit status")

// Run runs one line of shell in the VM and returns its output (stdout and
// stderr, as the console shows them). It waits at most timeout; a command
// that exits non-zero gives an error wrapping ErrExit, with its output.
// cmd must be one line; end it with & to leave it running.
func (vm *VM) Run(cmd string, timeout time.Duration) (string, error) {
	if strings.ContainsAny(cmd, "\n\r") {
		return "", fmt.Errorf("interop: VM command %q spans lines", cmd)
	}
	vm.runMu.Lock()
	defer vm.runMu.Unlock()
	vm.mu.Lock()
	vm.seq++
	seq := vm.seq
	from := len(vm.lines)
	vm.mu.Unlock()
	// The marker is printed by the shell after cmd, on a line of its own.
	if _, err := fmt.Fprintf(vm.stdin, "%s\necho \"@@RC $? #%d\"\n", cmd, seq); err != nil {
		return "", fmt.Errorf("interop: VM command %q: write to console: %w", cmd, err)
	}
	m, err := vm.waitLine(regexp.MustCompile(`^(.*)@@RC (\d+) #`+strconv.Itoa(seq)+`$`), from, timeout, fmt.Sprintf("VM command %q", cmd))
	if err != nil {
		return "", err
	}
	vm.mu.Lock()
	var out []string
	for _, l := range vm.lines[from:] {
		if strings.HasSuffix(l, "@@RC "+m[2]+" #"+strconv.Itoa(seq)) {
			if m[1] != "" {
				out = append(out, m[1]) // output without a final newline
			}
			break
		}
		out = append(out, l)
	}
	vm.mu.Unlock()
	output := strings.Join(out, "\n")
	if m[2] != "0" {
		return output, fmt.Errorf("interop: VM command %q: %w %s; output:\n%s", cmd, ErrExit, m[2], output)
	}
	return output, nil
}

// Close stops qemu and waits for it to exit.
func (vm *VM) Close() error {
	vm.stdin.Close()
	if vm.cmd.Process != nil {
		vm.cmd.Process.Kill()
	}
	select {
	case <-vm.exited:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("interop: qemu (pid %d) did not exit within 10 s of SIGKILL", vm.cmd.Process.Pid)
	}
	return nil
}
