package cli

import (
	"testing"
)

// The router refuses a non-loopback address without a token and exits
// non-zero before listening.
func TestRouterRefusesNonLoopbackWithoutToken(t *testing.T) {
	t.Setenv("LLORCH_API_TOKEN", "")
	t.Setenv("LLORCH_API_TOKEN_FILE", "")
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
	if code := runRouter([]string{"-addr", "0.0.0.0:0"}); code == 0 {
		t.Fatal("router started on 0.0.0.0 without a token")
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
