// Command upstream is the benchmark's OpenAI upstream: the test fixture
// served as its own process, so the load generator, the proxies and the
// upstream never share a Go runtime.
package main

import (
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
	flag.Parse()
	fx := openaifixture.New("bench")
	fx.SetBehavior(openaifixture.Behavior{Tokens: *tokens, TokenDelay: *delay})
	srv := &http.Server{Addr: *addr, Handler: fx, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
