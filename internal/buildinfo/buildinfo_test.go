package buildinfo

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFromBuildInfo(t *testing.T) {
	gv := &debug.Module{Path: gvisorPath, Version: "v0.0.0-20260905035102-160fafc42237"}
	vcs := func(rev, time, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev},
			{Key: "vcs.time", Value: time}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "0c07afc3b2d1e4f5a6b7c8d9e0f1a2b3c4d5e6f7"
	tests := []struct {
		name    string
		bi      debug.BuildInfo
		stamped string // the -ldflags -X value
		want    Info
	}{{
		name: "go install @v1.2.3",
		bi:   debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: modulePath, Version: "v1.2.3"}, Deps: []*debug.Module{gv}},
		want: Info{Version: "v1.2.3", GoVersion: "go1.26.8", GVisor: gv.Version},
	}, {
		name: "go build in a clean checkout",
		bi: debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: modulePath, Version: "(devel)"},
			Deps: []*debug.Module{gv}, Settings: vcs(rev, "2026-12-06T12:00:00Z", "false")},
		want: Info{Version: "devel-0c07afc3b2d1", Revision: rev, Time: "2026-12-06T12:00:00Z", GoVersion: "go1.26.8", GVisor: gv.Version},
	}, {
		name: "go build with changes",
		bi: debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: modulePath, Version: "(devel)"},
			Deps: []*debug.Module{gv}, Settings: vcs(rev, "2026-12-06T12:00:00Z", "true")},
		want: Info{Version: "devel-0c07afc3b2d1-modified", Revision: rev + "-dirty", Time: "2026-12-06T12:00:00Z", Modified: true,
			GoVersion: "go1.26.8", GVisor: gv.Version},
	}, {
		name:    "make build stamps the version",
		bi:      debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: modulePath, Version: "(devel)"}, Deps: []*debug.Module{gv}, Settings: vcs(rev, "2026-12-06T12:00:00Z", "false")},
		stamped: "v1.2.3-4-g0c07afc",
		want:    Info{Version: "v1.2.3-4-g0c07afc", Revision: rev, Time: "2026-12-06T12:00:00Z", GoVersion: "go1.26.8", GVisor: gv.Version},
	}, {
		name: "no VCS, no stamp",
		bi:   debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: modulePath, Version: "(devel)"}, Deps: []*debug.Module{gv}},
		want: Info{Version: "(devel)", GoVersion: "go1.26.8", GVisor: gv.Version},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fromBuildInfo(&tt.bi, true, tt.stamped)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("fromBuildInfo mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// The LICENSE is the Apache License 2.0 word for word (the SHA-256 of
// https://www.apache.org/licenses/LICENSE-2.0.txt), and the README says so.
func TestLicense(t *testing.T) {
	b, err := os.ReadFile("../../LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	if got, want := hex.EncodeToString(sum[:]), "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"; got != want {
		t.Errorf("LICENSE SHA-256 = %s, want %s (the Apache License 2.0 text)", got, want)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "Licensed under the Apache License, Version 2.0") {
		t.Error("README.md has no license notice")
	}
}
