package authmin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// Hostile Authorization headers seen in the wild or built to hit edge
// cases; the corpus seeds both fuzz targets.
var hostileHeaders = []string{
	"", "Bearer", "Bearer ", "bearer x", "Bearer\tx", "Bearer  x  ", "Bearer x\x00y",
	"Bearer x\r\nX-Injected: 1", "Bearer \xff\xfe", "Bearer " + strings.Repeat("A", 8193),
	"Basic Zm9vOmJhcg==", "Bearer Bearer x", " \t Bearer x", "Bearer x\u2028y", "Bearer \u00a0x",
	"Bearer " + goodToken, "Bearer " + goodToken + " ", "Bearer " + goodToken[:len(goodToken)-1],
}

func FuzzParseBearer(f *testing.F) {
	for _, h := range hostileHeaders {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, header string) {
		tok, err := ParseBearer(header)
		if err != nil {
			if tok != "" {
				t.Fatalf("error %v with a token", err)
			}
			return
		}
		if tok == "" || len(tok) > MaxTokenBytes || tok != strings.TrimSpace(tok) {
			t.Fatalf("accepted bad token %q", tok)
		}
		for i := 0; i < len(tok); i++ {
			if tok[i] < 0x20 || tok[i] == 0x7f {
				t.Fatalf("accepted control character in %q", tok)
			}
		}
		if !strings.HasPrefix(strings.TrimSpace(header), "Bearer ") {
			t.Fatalf("accepted a header without the Bearer prefix: %q", header)
		}
	})
}

// allowedMessages are the only 401 messages the middleware writes: each is
// fixed text, so nothing from the request can be echoed.
var allowedMessages = func() map[string]bool {
	m := map[string]bool{"missing bearer token; " + hintSend: true, "invalid bearer token; " + hintCheck: true}
	for _, e := range []error{ErrNotBearer, ErrEmptyToken, ErrTooLong, ErrControlChar} {
		m["malformed bearer token: "+e.Error()+"; "+hintSend] = true
	}
	return m
}()

func FuzzMiddleware(f *testing.F) {
	for _, h := range hostileHeaders {
		f.Add(h, "10.0.0.1:1")
		f.Add(h, "127.0.0.1:1")
	}
	for _, peer := range []string{"", "[::1]:1", "::ffff:127.0.0.1", "127.0.0.1", "localhost:1", "[::ffff:7f00:1]:1", "0.0.0.0:1", "garbage"} {
		f.Add("Bearer wrong", peer)
		f.Add("", peer)
	}
	tokens := NewTokenSet(goodToken)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	h := Middleware(MiddlewareConfig{Tokens: tokens}, ok)
	// With the loopback bypass on, a tokenless loopback request may pass,
	// but a wrong or malformed credential never does, from any peer.
	hOpt := Middleware(MiddlewareConfig{Tokens: tokens, AuthOptional: true}, ok)
	f.Fuzz(func(t *testing.T, header, peer string) {
		r := httptest.NewRequest("GET", "/v1/models", nil)
		r.RemoteAddr = peer
		r.Header["Authorization"] = []string{header}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		tok, err := ParseBearer(header)
		valid := err == nil && tok == goodToken
		if !valid && !errors.Is(err, ErrMissing) {
			r := httptest.NewRequest("GET", "/v1/models", nil)
			r.RemoteAddr = peer
			r.Header["Authorization"] = []string{header}
			w := httptest.NewRecorder()
			hOpt.ServeHTTP(w, r)
			if w.Code != http.StatusUnauthorized {
				t.Fatalf("AuthOptional, peer %q, header %q: status %d for a wrong credential", peer, header, w.Code)
			}
		}
		if (w.Code == http.StatusNoContent) != valid {
			t.Fatalf("header %q: status %d, valid=%v", header, w.Code, valid)
		}
		if valid {
			return
		}
		if w.Code != http.StatusUnauthorized {
			t.Fatalf("status %d for a bad credential", w.Code)
		}
		var b struct{ Error wireError }
		if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil || !allowedMessages[b.Error.Message] || b.Error.Type != "authentication_error" {
			t.Fatalf("unexpected 401 body %q", w.Body.String())
		}
		// The body is one of the fixed messages above; the headers are
		// exactly these, so nothing the client sent can come back.
		want := http.Header{"Www-Authenticate": {`Bearer realm="llorch"`}, "Content-Type": {"application/json"},
			"Content-Length": {strconv.Itoa(w.Body.Len())}}
		if len(w.Header()) != len(want) {
			t.Fatalf("401 headers %q", w.Header())
		}
		for k, v := range want {
			if got := w.Header().Values(k); len(got) != 1 || got[0] != v[0] {
				t.Fatalf("401 header %s = %q", k, got)
			}
		}
	})
}
