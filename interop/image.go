//go:build linux

package interop

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Image is a kernel and an initramfs ready for Boot.
type Image struct {
	// Package and PackageVersion name the Debian kernel package
	// ("linux-image-6.1.0-57-amd64", "6.1.192-3").
	Package, PackageVersion string
	// Release is the kernel's `uname -r` ("6.1.0-57-amd64").
	Release string
	// Kernel and Initramfs are the files' paths, inside the cache.
	Kernel, Initramfs string
}

// Modules are the kernel modules the VM loads, by name; PrepareImage adds
// their dependencies. Those built into the kernel are skipped.
var Modules = []string{
	// The tunnels and their common code.
	"tunnel4", "tunnel6", "ip_tunnel", "ipip", "sit", "ip6_tunnel",
	"udp_tunnel", "ip6_udp_tunnel", "fou", "fou6",
	// The network card (virtio_pci finds it, virtio_net drives it).
	"virtio_pci", "virtio_net",
	// The links of the router the path MTU tests put on the outer path.
	"veth",
}

// CacheDir is where PrepareImage keeps the kernel package and the
// initramfs: $XDG_CACHE_HOME/ipipstack-interop, or ~/.cache/ipipstack-interop.
func CacheDir() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("interop: no cache directory (set XDG_CACHE_HOME): %w", err)
	}
	return filepath.Join(dir, "ipipstack-interop"), nil
}

// PrepareImage returns the VM's kernel and initramfs, building what the
// cache lacks: the kernel package that Debian's linux-image-amd64 depends on
// is downloaded with `apt-get download` and unpacked with `dpkg-deb -x`
// into cache/PACKAGE_VERSION (never installed); the initramfs is rebuilt
// when its inputs (init script, busybox, ip and its libraries, modules)
// change. logf, if not nil, is told about the slow steps.
func PrepareImage(cache string, logf func(format string, args ...any)) (*Image, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	pkg, err := kernelPackage()
	if err != nil {
		return nil, err
	}
	version, err := packageVersion(pkg)
	if err != nil {
		return nil, err
	}
	img := &Image{Package: pkg, PackageVersion: version}
	dir := filepath.Join(cache, pkg+"_"+version)
	root := filepath.Join(dir, "root")
	if _, err := os.Stat(filepath.Join(dir, "unpacked")); err != nil {
		logf("interop: downloading and unpacking %s %s into %s", pkg, version, dir)
		if err := fetchKernel(dir, pkg, version); err != nil {
			return nil, err
		}
	}
	releases, err := os.ReadDir(filepath.Join(root, "lib/modules"))
	if err != nil || len(releases) != 1 {
		return nil, fmt.Errorf("interop: %s: want exactly one lib/modules/RELEASE directory (%d, %v); delete %s to fetch the package again",
			root, len(releases), err, dir)
	}
	img.Release = releases[0].Name()
	img.Kernel = filepath.Join(root, "boot", "vmlinuz-"+img.Release)
	if _, err := os.Stat(img.Kernel); err != nil {
		return nil, fmt.Errorf("interop: kernel of %s: %w; delete %s to fetch the package again", pkg, err, dir)
	}
	files, err := initramfsFiles(root, img.Release)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s %o %d %d %d\n", f.Name, f.Mode, f.Major, f.Minor, len(f.Data))
		h.Write(f.Data)
	}
	img.Initramfs = filepath.Join(dir, "initramfs-"+hex.EncodeToString(h.Sum(nil))[:16]+".cpio.gz")
	if _, err := os.Stat(img.Initramfs); err == nil {
		return img, nil
	}
	logf("interop: building %s", img.Initramfs)
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := writeCPIO(zw, files); err != nil {
		return nil, fmt.Errorf("interop: initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("interop: initramfs: %w", err)
	}
	tmp := img.Initramfs + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("interop: initramfs: %w", err)
	}
	if err := os.Rename(tmp, img.Initramfs); err != nil {
		return nil, fmt.Errorf("interop: initramfs: %w", err)
	}
	return img, nil
}

// kernelPackage returns the versioned kernel package that the
// linux-image-amd64 metapackage depends on.
func kernelPackage() (string, error) {
	out, err := exec.Command("apt-cache", "depends", "linux-image-amd64").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("interop: apt-cache depends linux-image-amd64: %v: %s (run apt-get update as root)", err, bytes.TrimSpace(out))
	}
	m := regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-[0-9]\S*)`).FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("interop: apt-cache depends linux-image-amd64 names no linux-image-N package:\n%s", out)
	}
	return string(m[1]), nil
}

// packageVersion returns the candidate version of a Debian package.
func packageVersion(pkg string) (string, error) {
	out, err := exec.Command("apt-cache", "show", "--no-all-versions", pkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("interop: apt-cache show %s: %v: %s (run apt-get update as root)", pkg, err, bytes.TrimSpace(out))
	}
	m := regexp.MustCompile(`(?m)^Version:\s*(\S+)`).FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("interop: apt-cache show %s has no Version field", pkg)
	}
	return string(m[1]), nil
}

// fetchKernel downloads pkg=version and unpacks it into dir/root, then
// marks dir complete with dir/unpacked; the .deb is deleted.
func fetchKernel(dir, pkg, version string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("interop: clear %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("interop: %w", err)
	}
	get := exec.Command("apt-get", "download", "-q", pkg+"="+version)
	get.Dir = dir
	if out, err := get.CombinedOutput(); err != nil {
		return fmt.Errorf("interop: apt-get download %s=%s in %s: %v: %s (run apt-get update; the host needs network access to the Debian mirror once)",
			pkg, version, dir, err, bytes.TrimSpace(out))
	}
	debs, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("interop: apt-get download left %d %s .deb files in %s, want 1", len(debs), pkg, dir)
	}
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], filepath.Join(dir, "root")).CombinedOutput(); err != nil {
		return fmt.Errorf("interop: dpkg-deb -x %s: %v: %s", debs[0], err, bytes.TrimSpace(out))
	}
	if err := os.Remove(debs[0]); err != nil {
		return fmt.Errorf("interop: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "unpacked"), []byte(pkg+" "+version+"\n"), 0o644)
}

// initramfsFiles lists the initramfs: /init, static busybox, iproute2's
// ip with its libraries, and the modules (with their dependencies, in
// load order, listed in /etc/modules-load).
func initramfsFiles(root, release string) ([]cpioFile, error) {
	var files []cpioFile
	add := func(name string, mode uint32, host string) error {
		b, err := os.ReadFile(host)
		if err != nil {
			return fmt.Errorf("interop: initramfs: %w", err)
		}
		files = append(files, cpioFile{Name: name, Mode: cpioReg | mode, Data: b})
		return nil
	}
	files = append(files,
		cpioFile{Name: "/init", Mode: cpioReg | 0o755, Data: []byte(initScript)},
		// The kernel opens /dev/console for init before init can mount
		// devtmpfs; without the node init has no stdin, stdout or stderr.
		cpioFile{Name: "/dev/console", Mode: cpioChr | 0o600, Major: 5, Minor: 1},
	)
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("interop: busybox not found (install Debian package busybox-static): %w", err)
	}
	if static, err := isStatic(busybox); err != nil || !static {
		return nil, fmt.Errorf("interop: %s is not a static binary (install Debian package busybox-static; %v)", busybox, err)
	}
	if err := add("/bin/busybox", 0o755, busybox); err != nil {
		return nil, err
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		return nil, fmt.Errorf("interop: ip not found (install Debian package iproute2): %w", err)
	}
	// iproute2's ip, not busybox's applet: only it knows fou, encap and
	// ip6tnl's encaplimit. PATH in /init puts /usr/local/sbin first.
	if err := add("/usr/local/sbin/ip", 0o755, ip); err != nil {
		return nil, err
	}
	libs, err := sharedLibs(ip)
	if err != nil {
		return nil, err
	}
	for _, l := range libs {
		if err := add(l, 0o755, l); err != nil {
			return nil, err
		}
	}
	mods, err := moduleOrder(filepath.Join(root, "lib/modules", release), Modules)
	if err != nil {
		return nil, err
	}
	var load strings.Builder
	for _, m := range mods {
		name := "/lib/modules/" + filepath.Base(m)
		if err := add(name, 0o644, m); err != nil {
			return nil, err
		}
		load.WriteString(name + "\n")
	}
	files = append(files, cpioFile{Name: "/etc/modules-load", Mode: cpioReg | 0o644, Data: []byte(load.String())})
	return files, nil
}

// isStatic reports whether the ELF file has no program interpreter.
func isStatic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// sharedLibs returns the absolute paths of the shared libraries and the
// dynamic loader that ldd lists for bin.
func sharedLibs(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("interop: ldd %s: %v: %s", bin, err, bytes.TrimSpace(out))
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
		for _, field := range strings.Fields(sc.Text()) {
			if strings.HasPrefix(field, "/") {
				libs = append(libs, field)
				break
			}
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("interop: ldd %s lists no libraries:\n%s", bin, out)
	}
	return libs, nil
}

// moduleOrder returns the .ko files of the wanted modules and of their
// dependencies, each after those it depends on. Modules built into the
// kernel (modules.builtin) are left out. The package ships no
// modules.dep (depmod makes it on installation), so dependencies are read
// from each module's .modinfo section ("depends=a,b").
func moduleOrder(dir string, want []string) ([]string, error) {
	files := map[string]string{} // module name -> path
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasSuffix(p, ".ko") {
			files[modName(filepath.Base(p))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("interop: modules: %w", err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(filepath.Base(l))] = true
		}
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		name = modName(name)
		switch {
		case state[name] == 2, builtin[name]:
			return nil
		case state[name] == 1:
			return fmt.Errorf("interop: modules: dependency cycle at %s", name)
		}
		p, ok := files[name]
		if !ok {
			return fmt.Errorf("interop: module %s (needed by %s) is neither in %s nor built in", name, from, dir)
		}
		state[name] = 1
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, p)
		return nil
	}
	for _, w := range want {
		if err := visit(w, "interop.Modules"); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// modName is the module name of a file or name: without ".ko", with '_'
// for '-' (the kernel treats them alike).
func modName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(s, ".ko"), "-", "_")
}

// moduleDepends reads "depends=" from the .modinfo section of a .ko.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("interop: module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("interop: module %s has no .modinfo section", path)
	}
	b, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("interop: module %s: .modinfo: %w", path, err)
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, errors.New("interop: module " + path + " has no depends= in .modinfo")
}
