//go:build linux

package interop

import (
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// cpioFile is one entry of an initramfs.
type cpioFile struct {
	// Name is the absolute path inside the image ("/init").
	Name string
	// Mode is the file's type and permission bits (cpioReg|0o755).
	Mode uint32
	// Data is a regular file's content.
	Data []byte
	// Major and Minor are a device node's numbers.
	Major, Minor uint32
}

// File type bits of the cpio "newc" mode field (stat(2)'s S_IF*).
const (
	cpioDir = 0o040000
	cpioReg = 0o100000
	cpioChr = 0o020000
)

// writeCPIO writes files as a cpio archive in the "newc" format the kernel
// unpacks into its initramfs (Documentation/driver-api/early-userspace/
// buffer-format.rst): each entry is a 110-byte ASCII header, the NUL-ended
// name and the data, both padded to 4 bytes, and a "TRAILER!!!" entry ends
// the archive. Parent directories that files lacks are added (mode 0755),
// entries are written in path order, and mtimes are 0 so that the same files
// give the same bytes.
func writeCPIO(w io.Writer, files []cpioFile) error {
	byName := map[string]cpioFile{}
	for _, f := range files {
		if !strings.HasPrefix(f.Name, "/") {
			return fmt.Errorf("interop: cpio entry %q is not an absolute path", f.Name)
		}
		byName[f.Name] = f
		for d := path.Dir(f.Name); d != "/"; d = path.Dir(d) {
			if _, ok := byName[d]; !ok {
				byName[d] = cpioFile{Name: d, Mode: cpioDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names) // parents sort before their children
	ino := uint32(1)
	for _, n := range names {
		f := byName[n]
		if err := writeCPIOEntry(w, ino, f.Name[1:], f.Mode, f.Major, f.Minor, f.Data); err != nil {
			return err
		}
		ino++
	}
	return writeCPIOEntry(w, 0, "TRAILER!!!", 0, 0, 0, nil)
}

func writeCPIOEntry(w io.Writer, ino uint32, name string, mode, major, minor uint32, data []byte) error {
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+4+len(data)+3)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	buf = append(buf, data...)
	buf = pad4(buf)
	_, err := w.Write(buf)
	return err
}

// pad4 pads b with NULs to a multiple of 4 bytes; the header is 110 bytes,
// so offsets within the archive and within buf agree modulo 4 as long as
// every entry starts aligned, which pad4 keeps true.
func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
