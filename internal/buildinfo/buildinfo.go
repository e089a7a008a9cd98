// Package buildinfo reports what the running binary was built from: its
// version, VCS revision, the Go toolchain and the gVisor version, as
// recorded by the Go linker (runtime/debug.ReadBuildInfo) or stamped by
// `make build`.
//
// The version is, first found:
//   - the value stamped with -ldflags "-X
//     github.com/ipipstack/ipipstack/internal/buildinfo.version=v1.2.3"
//     (make build stamps `git describe --tags --always --dirty`);
//   - the module version, for `go install github.com/ipipstack/ipipstack/cmd/ipipstack@v1.2.3`;
//   - "devel-" and the first 12 hex digits of the VCS revision, plus
//     "-modified" for a tree with changes, for a plain `go build` in a
//     checkout (with VCS stamping, the default unless -buildvcs=false);
//   - "(devel)".
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

const (
	modulePath = "github.com/ipipstack/ipipstack"
	gvisorPath = "gvisor.dev/gvisor"
)

// version is stamped by the linker (see the package doc); "" if not.
var version string

// Info describes the running binary. Fields the build did not record are
// "unknown"; Revision and Time are "" when the build had no VCS stamping.
type Info struct {
	// Version is the binary's version; see the package doc.
	Version string `json:"version"`
	// Revision is the VCS commit, with "-dirty" if the tree was modified.
	Revision string `json:"revision,omitempty"`
	// Time is the commit time of Revision (RFC 3339).
	Time string `json:"vcs_time,omitempty"`
	// Modified reports a build from a tree with uncommitted changes.
	Modified bool `json:"modified,omitempty"`
	// GoVersion is the toolchain that built the binary ("go1.26.3").
	GoVersion string `json:"go_version"`
	// GVisor is the version of the gvisor.dev/gvisor module.
	GVisor string `json:"gvisor_version"`
}

// Get returns the Info of the running binary. In a test binary the main
// module is the test's, so Version is usually "(devel)" or "unknown".
func Get() Info {
	bi, ok := debug.ReadBuildInfo()
	return fromBuildInfo(bi, ok, version)
}

// fromBuildInfo is Get for the build info bi (valid if ok) and the
// linker-stamped version stamped.
func fromBuildInfo(bi *debug.BuildInfo, ok bool, stamped string) Info {
	info := Info{Version: "unknown", GoVersion: runtime.Version(), GVisor: "unknown"}
	if stamped != "" {
		info.Version = stamped
	}
	if !ok {
		return info
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	for _, d := range bi.Deps {
		if d.Path == gvisorPath {
			if d.Replace != nil {
				d = d.Replace
			}
			info.GVisor = d.Version
		}
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	switch v := bi.Main.Version; {
	case stamped != "":
	case bi.Main.Path == modulePath && v != "" && v != "(devel)":
		info.Version = v
	case info.Revision != "":
		info.Version = "devel-" + info.Revision[:min(12, len(info.Revision))]
		if info.Modified {
			info.Version += "-modified"
		}
	case bi.Main.Path == modulePath && v != "":
		info.Version = v
	}
	if info.Revision != "" && info.Modified {
		info.Revision += "-dirty"
	}
	return info
}
