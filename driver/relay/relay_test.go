package relay

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/internal/tlsfiles/tlstest"
)

func TestRelayDemandsTokenAndStreams(t *testing.T) {
	const token = "relay-test-token-0123456789abcdef"
	sawAuth := make(chan string, 4)
	clientGotFirst := make(chan struct{})
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawAuth <- r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json") // not an event stream: the relay must flush anyway
		fl := w.(http.Flusher)
		io.WriteString(w, "data: first\n\n")
		fl.Flush()
		// The second chunk comes only after the client saw the first: a
		// relay that buffers would hold the first until the timeout.
		select {
		case <-clientGotFirst:
		case <-time.After(10 * time.Second):
		}
		io.WriteString(w, "data: second\n\n")
	}))
	defer engine.Close()
	tf := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tf, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Start("127.0.0.1:0", strings.TrimPrefix(engine.URL, "http://"), tf, TLS{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	base := "http://" + r.Addr

	for _, hdr := range []string{"", "Bearer wrong-token", "Basic abc"} {
		req, _ := http.NewRequest("GET", base+"/api/tags", nil)
		if hdr != "" {
			req.Header.Set("Authorization", hdr)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: status %d, want 401", hdr, resp.StatusCode)
		}
	}
	select {
	case a := <-sawAuth:
		t.Fatalf("an unauthenticated request reached the engine (Authorization %q)", a)
	default:
	}

	req, _ := http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+token)
	start := time.Now()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("with the token: status %d", resp.StatusCode)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(clientGotFirst)
	if waited := time.Since(start); waited >= 10*time.Second {
		t.Errorf("the first chunk arrived after %s, only with the second: the relay buffers", waited)
	}
	if a := <-sawAuth; a != "" {
		t.Errorf("the engine saw Authorization %q; the relay must strip the token", a)
	}
}

// With a certificate and a client CA the relay serves HTTPS and lets only
// clients holding a certificate from that CA complete the handshake; the
// token is still demanded after it.
func TestRelayMTLS(t *testing.T) {
	const token = "relay-test-token-0123456789abcdef"
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer engine.Close()
	dir := t.TempDir()
	tf := filepath.Join(dir, "token")
	if err := os.WriteFile(tf, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := tlstest.NewCA(t, "fleet-ca")
	srv := ca.WriteFiles(t, dir, "relay", "engine-1", "127.0.0.1")
	cli := ca.WriteFiles(t, dir, "router", "llorch-router")
	r, err := Start("127.0.0.1:0", strings.TrimPrefix(engine.URL, "http://"), tf, TLS{CertFile: srv.Cert, KeyFile: srv.Key, ClientCAFile: srv.CA}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	get := func(cfg *tls.Config, auth string) (int, error) {
		tr := &http.Transport{TLSClientConfig: cfg}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "https://"+r.Addr+"/api/tags", nil)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if _, err := get(&tls.Config{RootCAs: pool}, token); err == nil {
		t.Error("no client certificate, yet the relay answered")
	}
	pair, err := tls.LoadX509KeyPair(cli.Cert, cli.Key)
	if err != nil {
		t.Fatal(err)
	}
	withCert := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}
	if st, err := get(withCert, token); err != nil || st != 200 {
		t.Errorf("client certificate and token: %d %v, want 200", st, err)
	}
	if st, err := get(withCert.Clone(), ""); err != nil || st != http.StatusUnauthorized {
		t.Errorf("client certificate without token: %d %v, want 401", st, err)
	}
	other := tlstest.NewCA(t, "other")
	oc, ok := other.Issue(t, "intruder")
	opair, _ := tls.X509KeyPair(oc, ok)
	if _, err := get(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{opair}}, token); err == nil {
		t.Error("a certificate from another CA got through")
	}
}
