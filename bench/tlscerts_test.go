package main

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// The bench certificate verifies for both names the proxies check (the
// router an engine's IP, nginx "localhost") against the bench CA, the load
// client speaks HTTP/1.1 even to a server offering h2, and with keep-alive
// off every request is a new connection.
func TestBenchCertificateAndClient(t *testing.T) {
	tf, err := writeTLSFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(tf.Cert, tf.Key)
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 1 {
			http.Error(w, "want HTTP/1.1, got "+r.Proto, http.StatusBadRequest)
		}
	}))
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	port := srv.URL[strings.LastIndexByte(srv.URL, ':'):]
	for _, keep := range []bool{true, false} {
		cl := newTLSClient(4, tf.pool, keep)
		conns.Store(0)
		for _, host := range []string{"127.0.0.1", "localhost"} {
			for i := 0; i < 3; i++ {
				resp, err := cl.Get("https://" + host + port + "/")
				if err != nil {
					t.Fatalf("%s (keep-alive %v): %v", host, keep, err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.ProtoMajor != 1 {
					t.Fatalf("%s: %s %s", host, resp.Proto, resp.Status)
				}
			}
		}
		cl.CloseIdleConnections()
		if n := conns.Load(); keep && n > 2 || !keep && n != 6 {
			t.Errorf("keep-alive %v: %d connections for 6 requests to 2 names", keep, n)
		}
	}
	// A client not trusting the bench CA is refused: the client verifies.
	if _, err := newTLSClient(1, nil, true).Get(srv.URL); err == nil {
		t.Error("a client without the bench CA got through")
	}
}
