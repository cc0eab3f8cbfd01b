package authmin

import (
	"strings"
	"testing"
)

// Every decision names who it was about: token:<fp6> or localhost.
func TestIdentityLogged(t *testing.T) {
	c := &capture{}
	h := c.handler(MiddlewareConfig{Tokens: NewTokenSet(goodToken), AuthOptional: true})
	if w := do(h, "127.0.0.1:9", ""); w.Code != 200 || c.ident.Load() != IdentityLocalhost {
		t.Fatalf("loopback bypass: %d identity=%v", w.Code, c.ident.Load())
	}
	if !strings.Contains(c.logs.String(), `"identity":"localhost"`) {
		t.Errorf("loopback bypass not logged as identity=localhost:\n%s", c.logs.String())
	}
	// A malformed credential is fingerprinted on the part after the scheme,
	// the value `llorch token fp` prints for the file it came from.
	bad := "Bearer " + goodToken + "\x00"
	if w := do(h, "10.0.0.1:9", bad); w.Code != 401 {
		t.Fatalf("control character accepted: %d", w.Code)
	}
	if !strings.Contains(c.logs.String(), Identity(goodToken+"\x00")) {
		t.Errorf("malformed credential not fingerprinted:\n%s", c.logs.String())
	}
}
