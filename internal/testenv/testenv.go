// Package testenv finds and starts the real programs llorch's tests run
// against: a Consul agent (with ACLs on) and llama.cpp's llama-server. The
// binaries come from scripts/build-consul.sh and scripts/get-llama-server.sh,
// cached under $LLORCH_CACHE (default ~/.cache/llorch).
//
// When LLORCH_REQUIRE_INTEGRATION=1 (CI and `make test` as root set it), a
// missing binary fails the test instead of skipping it, so CI can never pass
// by testing nothing. Otherwise the skip message starts with SkipMarker and
// names the command that would enable the test; scripts/test.sh collects
// these from `go test -json` (internal/testreport) into a table.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// CacheDir is where the setup scripts put what they build.
func CacheDir() string {
	if d := os.Getenv("LLORCH_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "llorch-cache")
	}
	return filepath.Join(home, ".cache", "llorch")
}

// SkipMarker starts every skip message this package writes:
// "llorch-skip: WHAT | enable: COMMAND".
const SkipMarker = "llorch-skip: "

// skip fails the test when Required, else skips it with the marker.
func skip(t testing.TB, what, enable string) {
	t.Helper()
	if Required() {
		t.Fatalf("%s (LLORCH_REQUIRE_INTEGRATION=1; enable: %s)", what, enable)
	}
	t.Skip(SkipMarker + what + " | enable: " + enable)
}

// Required reports whether integration prerequisites must be present.
func Required() bool { return os.Getenv("LLORCH_REQUIRE_INTEGRATION") == "1" }

// Binary finds a cached program: $envVar if set, else <cache>/bin/<name>.
// Missing: the test is skipped, or failed when Required().
func Binary(t testing.TB, envVar, name, script string) string {
	t.Helper()
	p := os.Getenv(envVar)
	if p == "" {
		p = filepath.Join(CacheDir(), "bin", name)
	}
	if _, err := os.Stat(p); err != nil {
		skip(t, fmt.Sprintf("%s not found at %s", name, p), fmt.Sprintf("%s (or set %s)", script, envVar))
	}
	return p
}

// ConsulBinary is the Consul agent built by scripts/build-consul.sh.
func ConsulBinary(t testing.TB) string {
	return Binary(t, "LLORCH_CONSUL_BIN", "consul", "scripts/build-consul.sh")
}

// LlamaServer is the llama-server wrapper from scripts/get-llama-server.sh.
func LlamaServer(t testing.TB) string {
	return Binary(t, "LLORCH_LLAMA_SERVER", "llama-server", "scripts/get-llama-server.sh")
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// RequireRoot skips (or fails, when Required) tests that need root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skip(t, "needs root (network namespaces)", "sudo make test (or sudo make e2e)")
	}
}

// LookPath finds a system program or skips/fails like Binary; enable is
// the command that installs it (scripts/install-deps.sh lists them all).
func LookPath(t testing.TB, name, enable string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		skip(t, name+" not installed", enable)
	}
	return p
}

// Prometheus is the Prometheus (with Consul SD) from scripts/build-prometheus.sh.
func Prometheus(t testing.TB) string {
	return Binary(t, "LLORCH_PROMETHEUS_BIN", "prometheus", "scripts/build-prometheus.sh")
}
