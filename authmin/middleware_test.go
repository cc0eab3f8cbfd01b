package authmin

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

const goodToken = "0123456789abcdef0123456789abcdef-good"

type capture struct {
	logs  bytes.Buffer
	calls atomic.Int64
	ident atomic.Value
}

func (c *capture) handler(cfg MiddlewareConfig) http.Handler {
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: &c.logs, Level: hclog.Debug, JSONFormat: true})
	return Middleware(cfg, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.calls.Add(1)
		c.ident.Store(IdentityFrom(r.Context()))
		w.Write([]byte("ok"))
	}))
}

// do sends a request as if from peer (the middleware reads RemoteAddr).
func do(h http.Handler, peer, auth string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("GET", "/v1/models", nil)
	r.RemoteAddr = peer
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// wireError is the OpenAI envelope's member as a client reads it.
type wireError struct {
	Message   string `json:"message"`
	Type      string `json:"type"`
	Code      string `json:"code"`
	Param     any    `json:"param"`
	Retriable bool   `json:"retriable"`
}

func decode(t *testing.T, w *httptest.ResponseRecorder) wireError {
	t.Helper()
	var b struct{ Error *wireError }
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil || b.Error == nil {
		t.Fatalf("401 body is not the OpenAI envelope: %q", w.Body.String())
	}
	return *b.Error
}

// The predecessor's six auth scenarios (the sixth, registration without a
// token, is Consul's: see TestConsulWriteWithoutPermission).
func TestSixScenarios(t *testing.T) {
	tokens := NewTokenSet(goodToken)

	t.Run("loopback with AUTH_OPTIONAL passes without a token", func(t *testing.T) {
		c := &capture{}
		h := c.handler(MiddlewareConfig{Tokens: tokens, AuthOptional: true})
		for _, peer := range []string{"127.0.0.1:5000", "127.45.6.7:1", "[::1]:80"} {
			if w := do(h, peer, ""); w.Code != 200 {
				t.Errorf("%s: %d", peer, w.Code)
			}
		}
		if c.ident.Load() != IdentityLocalhost || !strings.Contains(c.logs.String(), `"identity":"localhost"`) {
			t.Errorf("identity = %v; log:\n%s", c.ident.Load(), c.logs.String())
		}
	})
	t.Run("loopback without AUTH_OPTIONAL needs a token", func(t *testing.T) {
		c := &capture{}
		w := do(c.handler(MiddlewareConfig{Tokens: tokens}), "127.0.0.1:5000", "")
		b := decode(t, w)
		if w.Code != 401 || b.Code != CodeMissingToken || b.Type != "authentication_error" || !strings.Contains(b.Message, "Authorization: Bearer") ||
			!strings.HasPrefix(w.Header().Get("WWW-Authenticate"), "Bearer") || c.calls.Load() != 0 {
			t.Errorf("%d %+v %q", w.Code, b, w.Header())
		}
	})
	t.Run("AUTH_OPTIONAL never applies to other peers", func(t *testing.T) {
		c := &capture{}
		h := c.handler(MiddlewareConfig{Tokens: tokens, AuthOptional: true})
		for _, peer := range []string{"10.0.0.9:5000", "[2001:db8::1]:80", "128.0.0.1:1"} {
			if w := do(h, peer, ""); w.Code != 401 {
				t.Errorf("%s: %d", peer, w.Code)
			}
		}
		// A forged X-Forwarded-For does not make a remote peer local.
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = "10.0.0.9:5000"
		r.Header.Set("X-Forwarded-For", "127.0.0.1")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 401 || c.calls.Load() != 0 {
			t.Errorf("forged XFF: %d", w.Code)
		}
	})
	t.Run("startup refusal", func(t *testing.T) {
		if err := CheckBind("0.0.0.0:8080", NewTokenSet()); err == nil || !strings.HasPrefix(err.Error(), CodeNonLoopbackWithoutToken+":") || !strings.Contains(err.Error(), "hint") {
			t.Errorf("no token: %v", err)
		}
		if err := CheckBind(":8080", NewTokenSet("short")); err == nil || !strings.Contains(err.Error(), "at least 32") {
			t.Errorf("short token: %v", err)
		}
		if err := CheckBind("127.0.0.1:8080", NewTokenSet()); err != nil {
			t.Errorf("loopback: %v", err)
		}
		if err := CheckBind("[::]:8080", NewTokenSet(goodToken)); err != nil {
			t.Errorf("good token: %v", err)
		}
	})
	t.Run("wrong token", func(t *testing.T) {
		c := &capture{}
		w := do(c.handler(MiddlewareConfig{Tokens: tokens}), "10.0.0.9:1", "Bearer wrong-token-value")
		b := decode(t, w)
		if w.Code != 401 || b.Code != CodeBadToken || b.Type != "authentication_error" || b.Retriable || c.calls.Load() != 0 {
			t.Errorf("%d %+v", w.Code, b)
		}
	})
	t.Run("correct token", func(t *testing.T) {
		c := &capture{}
		w := do(c.handler(MiddlewareConfig{Tokens: tokens}), "10.0.0.9:1", "Bearer "+goodToken)
		if w.Code != 200 || c.ident.Load() != Identity(goodToken) {
			t.Errorf("%d identity=%v", w.Code, c.ident.Load())
		}
	})
}

func TestTrustForwardedForUsesRightmostHop(t *testing.T) {
	c := &capture{}
	h := c.handler(MiddlewareConfig{Tokens: NewTokenSet(goodToken), AuthOptional: true, TrustForwardedFor: true})
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "10.0.0.2:1" // our proxy
	r.Header.Set("X-Forwarded-For", "127.0.0.1, 203.0.113.9")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 401 {
		t.Errorf("client-supplied left-most hop was trusted: %d", w.Code)
	}
	r.Header.Set("X-Forwarded-For", "203.0.113.9, 127.0.0.1")
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Errorf("proxy-appended loopback hop: %d", w.Code)
	}
}

func TestExempt(t *testing.T) {
	c := &capture{}
	h := c.handler(MiddlewareConfig{Tokens: NewTokenSet(goodToken), Exempt: func(r *http.Request) bool { return r.URL.Path == "/healthz" }})
	r := httptest.NewRequest("GET", "/healthz", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatal(w.Code)
	}
}

// No raw token ever appears in logs, bodies or headers, for good and bad
// credentials alike; fingerprints do.
func TestNoTokenLeaks(t *testing.T) {
	wrong := "WRONG-but-plausible-token-0123456789"
	c := &capture{}
	h := c.handler(MiddlewareConfig{Tokens: NewTokenSet(goodToken)})
	var out bytes.Buffer
	for _, auth := range []string{"Bearer " + goodToken, "Bearer " + wrong, "Bearer " + wrong + "\x01", "bearer " + wrong, "Basic " + wrong} {
		w := do(h, "10.1.1.1:1", auth)
		out.Write(w.Body.Bytes())
		for k, v := range w.Header() {
			out.WriteString(k + ": " + strings.Join(v, ",") + "\n")
		}
	}
	all := c.logs.String() + out.String()
	for _, secret := range []string{goodToken, wrong} {
		if strings.Contains(all, secret) {
			t.Fatalf("raw token %q leaked:\n%s", secret, all)
		}
	}
	if !strings.Contains(c.logs.String(), "token:"+TokenFP6(wrong)) || !strings.Contains(c.logs.String(), "token:"+TokenFP6(goodToken)) {
		t.Errorf("fingerprints missing from logs:\n%s", c.logs.String())
	}
}

func TestIsLoopback(t *testing.T) {
	for _, s := range []string{"127.0.0.1", "127.255.255.254:9", "::1", "[::1]:80", "localhost", "LOCALHOST:1", "::ffff:127.0.0.1"} {
		if !IsLoopback(s) {
			t.Errorf("%s should be loopback", s)
		}
	}
	for _, s := range []string{"", "0.0.0.0", "10.0.0.1:80", "::", "[::]:80", "localhost.example.com", "128.0.0.1"} {
		if IsLoopback(s) {
			t.Errorf("%s should not be loopback", s)
		}
	}
}

func TestLoadAndWatchTokenFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "api.token")
	tokA, tokB := strings.Repeat("a", 40), strings.Repeat("b", 40)
	if err := os.WriteFile(f, []byte(tokA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs})
	s, err := LoadTokenSet(f, "LLORCH_TEST_TOKEN_UNSET", time.Hour, log)
	if err != nil || !s.Check(tokA) {
		t.Fatalf("load: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Watch(ctx, f, log); close(done) }()
	defer func() { cancel(); <-done }()
	if err := os.WriteFile(f, []byte(tokB), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !s.Check(tokB) {
		if time.Now().After(deadline) {
			t.Fatal("new token not picked up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !s.Check(tokA) {
		t.Error("old token rejected during the grace period")
	}
	if strings.Contains(logs.String(), tokA) || strings.Contains(logs.String(), tokB) || !strings.Contains(logs.String(), "token:"+TokenFP6(tokB)) {
		t.Errorf("rotation log: %s", logs.String())
	}

	// Env fallback, and a bad file is an error naming it.
	t.Setenv("LLORCH_TEST_TOKEN", tokB)
	if s, err := LoadTokenSet("", "LLORCH_TEST_TOKEN", 0, nil); err != nil || !s.Check(tokB) {
		t.Errorf("env: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	if _, err := LoadTokenSet(empty, "", 0, nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty file: %v", err)
	}
	if _, err := LoadTokenSet(filepath.Join(dir, "none"), "", 0, nil); err == nil {
		t.Error("missing file: no error")
	}
}
