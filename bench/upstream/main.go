// Command upstream is the benchmark's OpenAI upstream: the test fixture
// served as its own process, so the load generator, the proxies and the
// upstream never share a Go runtime.
package main

import (
	"crypto/tls"
	"flag"
	"log"
	"net/http"
	"time"

	"github.com/llorch/llorch/internal/openaifixture"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	tokens := flag.Int("tokens", 8, "tokens per completion")
	delay := flag.Duration("token-delay", 0, "pause before each token")
	cert := flag.String("tls-cert", "", "PEM certificate: serve HTTPS (HTTP/1.1 only) with tls-key")
	key := flag.String("tls-key", "", "PEM private key of tls-cert")
	flag.Parse()
	fx := openaifixture.New("bench")
	fx.SetBehavior(openaifixture.Behavior{Tokens: *tokens, TokenDelay: *delay})
	srv := &http.Server{Addr: *addr, Handler: fx, ReadHeaderTimeout: 10 * time.Second}
	if *cert == "" && *key == "" {
		log.Fatal(srv.ListenAndServe())
	}
	if *cert == "" || *key == "" {
		log.Fatal("upstream: -tls-cert and -tls-key go together")
	}
	// HTTP/1.1 only, as llama-server serves TLS: neither proxy gets to
	// multiplex onto the engine, so both pay the same per-connection way.
	srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	log.Fatal(srv.ListenAndServeTLS(*cert, *key))
}
