package router

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/openai/openai-go/v3/option"

	"github.com/llorch/llorch/internal/openaifixture"
	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
	"github.com/llorch/llorch/registry"
)

// tlsRouter serves a router over TLS on loopback, as `llorch router` does
// (rt.Serve), and returns its https:// URL.
func tlsRouter(t *testing.T, mut func(*Config), insts ...registry.Instance) (*Router, string) {
	t.Helper()
	cfg := testConfig()
	mut(&cfg)
	log := hclog.New(&hclog.LoggerOptions{Name: "router", Level: hclog.Warn, Output: testWriter{t}})
	rt, err := New(cfg, registry.NewStatic(insts...), nil, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = rt.Run(ctx) }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := rt.HTTPServer()
	serveDone := make(chan struct{})
	go func() { defer close(serveDone); _ = rt.Serve(srv, ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-serveDone; cancel(); <-runDone })
	waitFor(t, 5*time.Second, "first snapshot", rt.Ready)
	return rt, "https://" + ln.Addr().String()
}

func trusting(t *testing.T, caPEM []byte, h2 bool) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA PEM")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func chatReq(t *testing.T, url string, stream bool) *http.Request {
	t.Helper()
	r, err := http.NewRequest("POST", url+"/v1/chat/completions", strings.NewReader(chatBody(testModel, stream)))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Authorization", "Bearer "+clientToken)
	r.Header.Set("Content-Type", "application/json")
	return r
}

// A non-loopback address needs TLS, or allow-plaintext said out loud.
func TestNonLoopbackNeedsTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "test-ca")
	f := ca.WriteFiles(t, t.TempDir(), "router", "router", "127.0.0.1")
	cfg := testConfig()
	cfg.Addr, cfg.APIToken = "0.0.0.0:8080", strings.Repeat("k", 32)
	_, err := New(cfg, staticEmpty(), nil, nil, nil)
	if err == nil || !strings.HasPrefix(strings.TrimPrefix(err.Error(), "router: "), CodeNonLoopbackPlaintext+":") || !strings.Contains(err.Error(), "LLORCH_TLS_CERT_FILE") {
		t.Fatalf("plain non-loopback bind: got %v, want %s with a hint", err, CodeNonLoopbackPlaintext)
	}
	allowed := cfg
	allowed.AllowPlaintext = true
	if _, err := New(allowed, staticEmpty(), nil, nil, nil); err != nil {
		t.Fatalf("allow-plaintext: %v", err)
	}
	withTLS := cfg
	withTLS.TLSCertFile, withTLS.TLSKeyFile = f.Cert, f.Key
	rt, err := New(withTLS, staticEmpty(), nil, nil, nil)
	if err != nil || !rt.TLS() {
		t.Fatalf("TLS on a non-loopback address: %v (TLS %v)", err, rt != nil && rt.TLS())
	}
	loop := testConfig() // loopback stays plaintext without any flag
	if rt, err := New(loop, staticEmpty(), nil, nil, nil); err != nil || rt.TLS() {
		t.Fatalf("loopback plaintext: %v", err)
	}

	for name, mut := range map[string]func(*Config){
		"cert without key": func(c *Config) { c.TLSCertFile = f.Cert },
		"min version 1.1":  func(c *Config) { c.TLSMinVersion = "1.1" },
		"engine key alone": func(c *Config) { c.EngineKeyFile = f.Key },
	} {
		c := testConfig()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate passed", name)
		}
	}
	bad := testConfig()
	bad.TLSCertFile, bad.TLSKeyFile = f.Cert, f.Cert // a certificate is no key
	if _, err := New(bad, staticEmpty(), nil, nil, nil); err == nil || !strings.Contains(err.Error(), "listener") {
		t.Errorf("mismatched pair: got %v, want a listener error", err)
	}
}

// The official SDK over HTTPS; HTTP/2 for a client offering it, HTTP/1.1
// for one that does not, both streaming; the minimum version holds.
func TestRouterServesTLS(t *testing.T) {
	_, u := startFixture(t)
	ca := tlstest.NewCA(t, "test-ca")
	f := ca.WriteFiles(t, t.TempDir(), "router", "router", "127.0.0.1")
	_, url := tlsRouter(t, func(c *Config) { c.TLSCertFile, c.TLSKeyFile, c.TLSMinVersion = f.Cert, f.Key, "1.3" }, inst(t, "a", "n1", testModel, u))

	exerciseSDK(t, url, testModel, option.WithHTTPClient(trusting(t, ca.PEM, false)))

	for _, c := range []struct {
		h2    bool
		proto string
	}{{true, "HTTP/2.0"}, {false, "HTTP/1.1"}} {
		resp, err := trusting(t, ca.PEM, c.h2).Do(chatReq(t, url, true))
		if err != nil {
			t.Fatalf("h2=%v: %v", c.h2, err)
		}
		evs := readSSE(t, resp.Body)
		resp.Body.Close()
		if resp.Proto != c.proto || resp.StatusCode != 200 || len(evs) != 10 || evs[len(evs)-1].data != "[DONE]" {
			t.Errorf("h2=%v: %s %d, %d events; want %s 200 with 8 tokens, the finish and [DONE]", c.h2, resp.Proto, resp.StatusCode, len(evs), c.proto)
		}
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	if conn, err := tls.Dial("tcp", strings.TrimPrefix(url, "https://"), &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12}); err == nil {
		conn.Close()
		t.Error("TLS 1.2 handshake accepted with tls-min-version 1.3")
	}
	if _, err := http.Get(url + "/healthz"); err == nil { // the system roots do not know the test CA
		t.Error("a client that does not trust the CA got through")
	}
}

// Replacing the files changes the certificate new handshakes get, within
// the watch's poll, while a stream opened before finishes on the old one.
func TestRouterCertReload(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 30, TokenDelay: 100 * time.Millisecond}) // a 3 s stream
	ca := tlstest.NewCA(t, "test-ca")
	dir := t.TempDir()
	f := ca.WriteFiles(t, dir, "router", "router-one", "127.0.0.1")
	_, url := tlsRouter(t, func(c *Config) { c.TLSCertFile, c.TLSKeyFile = f.Cert, f.Key }, inst(t, "a", "n1", testModel, u))
	addr := strings.TrimPrefix(url, "https://")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	servedCN := func() string {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool}) // a new config: no session resumption
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if cn := servedCN(); cn != "router-one" {
		t.Fatalf("served %q, want router-one", cn)
	}

	resp, err := trusting(t, ca.PEM, true).Do(chatReq(t, url, true))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first event: %q %v", line, err)
	}

	// Replace as a template renderer does: write aside, rename over.
	c2, k2 := ca.Issue(t, "router-two", "127.0.0.1")
	for _, w := range []struct {
		path string
		b    []byte
	}{{f.Key, k2}, {f.Cert, c2}} {
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, w.b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, w.path); err != nil {
			t.Fatal(err)
		}
	}
	// The watch polls every second: 5 polls of margin for a busy machine.
	deadline := time.Now().Add(5 * time.Second)
	for servedCN() != "router-two" {
		if time.Now().After(deadline) {
			t.Fatal("new handshakes still get the old certificate 5 s after the files changed")
		}
		time.Sleep(100 * time.Millisecond)
	}

	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("the open stream broke after the reload: %v", err)
	}
	if resp.TLS == nil || resp.TLS.PeerCertificates[0].Subject.CommonName != "router-one" {
		t.Error("the open stream's connection is not the one made with the old certificate")
	}
	text := ""
	for _, ev := range readSSE(t, strings.NewReader(string(rest))) {
		var ch struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if json.Unmarshal([]byte(ev.data), &ch) == nil && len(ch.Choices) == 1 {
			text += ch.Choices[0].Delta.Content
		}
	}
	if !strings.HasSuffix(string(rest), "data: [DONE]\n\n") || !strings.HasSuffix(openaifixture.Text(30), text) || len(text) == 0 {
		t.Errorf("open stream after the reload: ended %q; want the rest of the answer and [DONE]", tail(string(rest)))
	}
}

func tail(s string) string {
	if len(s) > 200 {
		return s[len(s)-200:]
	}
	return s
}

// tlsEngine is the fixture served over TLS with a certificate for
// 127.0.0.1 signed by ca; clientCAs non-nil makes it require client
// certificates.
func tlsEngine(t *testing.T, ca *tlstest.CA, clientCAs *x509.CertPool) (*openaifixture.Server, registry.Instance) {
	t.Helper()
	fx := openaifixture.New(testModel)
	hs := httptest.NewUnstartedServer(fx)
	c, k := ca.Issue(t, "engine", "127.0.0.1")
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	if clientCAs != nil {
		hs.TLS.ClientCAs, hs.TLS.ClientAuth = clientCAs, tls.RequireAndVerifyClientCert
	}
	hs.StartTLS()
	t.Cleanup(hs.Close)
	in := inst(t, "tls-a", "n1", testModel, hs.URL)
	in.TLS = true
	return fx, in
}

// Engines announcing tls=1 are reached over HTTPS and verified against the
// engine CA; a plain one beside them keeps working (a fleet mid-migration);
// mTLS presents the router's client certificate.
func TestRouterToEngineTLS(t *testing.T) {
	engCA := tlstest.NewCA(t, "engine-ca")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "engine-ca.crt")
	if err := os.WriteFile(caFile, engCA.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	fxTLS, tlsInst := tlsEngine(t, engCA, nil)
	_, u := startFixture(t)
	plain := inst(t, "plain-b", "n2", testModel, u)
	h := newHarness(t, func(c *Config) { c.EngineCAFile = caFile }, tlsInst, plain)
	for i := 0; i < 6; i++ {
		if st, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false)); st != 200 {
			t.Fatalf("mixed fleet, request %d: %d %s", i, st, body)
		}
	}
	if fxTLS.Requests() == 0 {
		t.Error("the TLS instance got no request: placement or HTTPS to it is broken")
	}

	// mTLS: an engine requiring a client certificate signed by the CA.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(engCA.PEM)
	_, mtlsInst := tlsEngine(t, engCA, pool)
	cli := engCA.WriteFiles(t, dir, "router-client", "llorch-router")
	hm := newHarness(t, func(c *Config) { c.EngineCAFile, c.EngineCertFile, c.EngineKeyFile = caFile, cli.Cert, cli.Key }, mtlsInst)
	if st, _, body := hm.do("POST", "/v1/chat/completions", chatBody(testModel, true)); st != 200 || !strings.Contains(body, "[DONE]") {
		t.Fatalf("mTLS with the client certificate: %d %s", st, body)
	}
	hn := newHarness(t, func(c *Config) { c.EngineCAFile = caFile }, mtlsInst)
	assertTLSRefused(t, hn, "mTLS engine, no client certificate")
}

// assertTLSRefused: every attempt fails its handshake; the client gets 503
// ENGINE_TLS_FAILED each time (the only instance is never ejected for
// good: a one-instance model is never emptied, and ejection backs off).
func assertTLSRefused(t *testing.T, h *harness, what string) {
	t.Helper()
	for i := 0; i < 4; i++ {
		st, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false))
		var env struct{ Error wireError }
		_ = json.Unmarshal([]byte(body), &env)
		if st != 503 || env.Error.Code != CodeEngineTLS || !env.Error.Retriable || !strings.Contains(env.Error.Message, "TLS") {
			t.Fatalf("%s, request %d: %d %s; want 503 %s", what, i, st, body, CodeEngineTLS)
		}
	}
}

// The wrong CA: the attempt fails cleanly with ENGINE_TLS_FAILED, the
// instance's ejection is bounded by eject-backoff-max, and a plain
// instance of the model takes the requests meanwhile.
func TestRouterToEngineWrongCA(t *testing.T) {
	engCA, other := tlstest.NewCA(t, "engine-ca"), tlstest.NewCA(t, "other-ca")
	caFile := filepath.Join(t.TempDir(), "other.crt")
	if err := os.WriteFile(caFile, other.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	_, tlsInst := tlsEngine(t, engCA, nil)
	h := newHarness(t, func(c *Config) { c.EngineCAFile = caFile }, tlsInst)
	assertTLSRefused(t, h, "wrong engine CA")

	_, u := startFixture(t)
	h2 := newHarness(t, func(c *Config) { c.EngineCAFile = caFile }, tlsInst, inst(t, "plain-b", "n2", testModel, u))
	for i := 0; i < 6; i++ {
		if st, _, body := h2.do("POST", "/v1/chat/completions", chatBody(testModel, false)); st != 200 {
			t.Fatalf("wrong CA beside a plain instance, request %d: %d %s", i, st, body)
		}
	}
	if d := h2.rt.state.EjectedFor(tlsInst.ID); d > h2.rt.cfg.EjectBackoffMax {
		t.Errorf("TLS-failing instance ejected for %s, over eject-backoff-max %s", d, h2.rt.cfg.EjectBackoffMax)
	}
}
