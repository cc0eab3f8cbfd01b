package cli

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/llorch/llorch/authmin"
)

// stderrOf runs fn with os.Stderr captured.
func stderrOf(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	got := make(chan string)
	go func() { b, _ := io.ReadAll(r); got <- string(b) }()
	defer func() { os.Stderr = old }()
	fn()
	w.Close()
	return <-got
}

// The router refuses a non-loopback address without a token: exit 1 with
// the startup policy's own error (not any other failure, such as the
// Consul address or the listener).
func TestRouterRefusesNonLoopbackWithoutToken(t *testing.T) {
	t.Setenv("LLORCH_API_TOKEN", "")
	t.Setenv("LLORCH_API_TOKEN_FILE", "")
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
	code := 0
	out := stderrOf(t, func() { code = runRouter([]string{"-addr", "0.0.0.0:0"}) })
	if code != 1 || !strings.Contains(out, authmin.CodeNonLoopbackWithoutToken) || !strings.Contains(out, "cannot start") {
		t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 with %s", code, out, authmin.CodeNonLoopbackWithoutToken)
	}
}

func TestRouterFlags(t *testing.T) {
	if code := runRouter([]string{"-h"}); code != 0 {
		t.Errorf("-h: exit %d, want 0", code)
	}
	if code := runRouter([]string{"-retries", "many"}); code != 2 {
		t.Errorf("bad flag value: exit %d, want 2", code)
	}
	t.Setenv("LLORCH_RETRIES", "many")
	if code := runRouter(nil); code != 2 {
		t.Errorf("bad env value: exit %d, want 2", code)
	}
}
