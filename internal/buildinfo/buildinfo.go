// Package buildinfo reports what the running binary was built from: the
// module version, the Go toolchain and the gVisor version, as recorded by
// the Go linker (runtime/debug.ReadBuildInfo).
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

const (
	modulePath = "github.com/ipipstack/ipipstack"
	gvisorPath = "gvisor.dev/gvisor"
)

// Info describes the running binary. Fields the build did not record are
// "unknown"; Revision is "" when the build had no VCS stamping.
type Info struct {
	// Version is the main module's version: a tag or pseudo-version for
	// `go install ...@version`, "(devel)" for a build in a work tree.
	Version string `json:"version"`
	// Revision is the VCS commit, with "-dirty" if the tree was modified.
	Revision string `json:"revision,omitempty"`
	// GoVersion is the toolchain that built the binary ("go1.26.3").
	GoVersion string `json:"go_version"`
	// GVisor is the version of the gvisor.dev/gvisor module.
	GVisor string `json:"gvisor_version"`
}

// Get returns the Info of the running binary. In a test binary the main
// module is the test's, so Version is usually "(devel)" or "unknown".
func Get() Info {
	info := Info{Version: "unknown", GoVersion: runtime.Version(), GVisor: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	if bi.Main.Path == modulePath && bi.Main.Version != "" {
		info.Version = bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == gvisorPath {
			if d.Replace != nil {
				d = d.Replace
			}
			info.GVisor = d.Version
		}
	}
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if info.Revision != "" && dirty {
		info.Revision += "-dirty"
	}
	return info
}
