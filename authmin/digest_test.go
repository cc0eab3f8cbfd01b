package authmin

import (
	"crypto/hmac"
	"crypto/sha256"
	"strings"
	"testing"
)

// digest is HMAC-SHA-256 under the process's compare key, computed by hand
// from precomputed pads: it must agree with crypto/hmac, and allocate
// nothing (it runs on every request).
func TestDigestIsHMACAndAllocationFree(t *testing.T) {
	for _, s := range []string{"", "a", "client-token-0123456789abcdef", strings.Repeat("x", MaxTokenBytes)} {
		m := hmac.New(sha256.New, compareKey)
		m.Write([]byte(s))
		if got := digest(s); !hmac.Equal(got[:], m.Sum(nil)) {
			t.Errorf("digest(%d bytes) differs from crypto/hmac", len(s))
		}
	}
	ts := NewTokenSet("current-token-0123456789abcdef0123", "previous-token-0123456789abcdef012")
	if n := testing.AllocsPerRun(100, func() { _, _ = ts.CheckIdentity("current-token-0123456789abcdef0123") }); n != 0 {
		t.Errorf("CheckIdentity allocates %.0f times per call, want 0", n)
	}
	if ok, id := ts.CheckIdentity("previous-token-0123456789abcdef012"); !ok || id != Identity("previous-token-0123456789abcdef012") {
		t.Errorf("previous token: %v %q", ok, id)
	}
	if ok, id := ts.CheckIdentity("nope"); ok || id != "" {
		t.Errorf("wrong token accepted: %q", id)
	}
}
