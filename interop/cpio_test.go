//go:build linux

package interop

import (
	"bytes"
	"strings"
	"testing"
)

// TestWriteCPIO checks the newc archive byte for byte against headers
// written out by hand: the parent directory is added, names and data are
// padded to 4 bytes, and the trailer ends it.
func TestWriteCPIO(t *testing.T) {
	var buf bytes.Buffer
	if err := writeCPIO(&buf, []cpioFile{{Name: "/a/b", Mode: cpioReg | 0o644, Data: []byte("hi")}}); err != nil {
		t.Fatal(err)
	}
	//          magic   ino      mode     uid      gid      nlink    mtime    size     devmaj   devmin   rdevmaj  rdevmin  namesize check
	want := "070701" + "00000001" + "000041ED" + "00000000" + "00000000" + "00000002" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000002" + "00000000" +
		"a\x00" + // 110+2 = 112: aligned
		"070701" + "00000002" + "000081A4" + "00000000" + "00000000" + "00000001" + "00000000" + "00000002" + "00000000" + "00000000" + "00000000" + "00000000" + "00000004" + "00000000" +
		"a/b\x00" + "\x00\x00" + // 110+4 = 114, padded to 116
		"hi" + "\x00\x00" + // 118, padded to 120
		"070701" + "00000000" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "0000000B" + "00000000" +
		"TRAILER!!!\x00" + "\x00\x00\x00" // 121, padded to 124
	if got := buf.String(); got != want {
		t.Errorf("writeCPIO(/a/b) =\n%q\nwant\n%q", got, want)
	}
	if err := writeCPIO(&buf, []cpioFile{{Name: "relative"}}); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("writeCPIO(relative name) error = %v, want one about absolute paths", err)
	}
}
