package router

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/llorch/llorch/internal/openaifixture"
)

// BenchmarkAddedLatency compares a request straight to the fixture with the
// same request through the router; the difference per op is what the
// router adds (auth, parse, placement, one more loopback hop, relay).
//
//	go test -run '^$' -bench AddedLatency -benchtime 2000x ./router/
func BenchmarkAddedLatency(b *testing.B) {
	fx, u := startFixture(b)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 16})
	h := newHarness(b, nil, inst(b, "a", "n1", testModel, u))
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, tc := range []struct {
		name   string
		stream bool
	}{{"json", false}, {"sse16", true}} {
		body := chatBody(testModel, tc.stream)
		for _, target := range []struct{ name, base string }{{"direct", u}, {"router", h.srv.URL}} {
			b.Run(tc.name+"/"+target.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					req, _ := http.NewRequest("POST", target.base+"/v1/chat/completions", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+clientToken)
					req.Header.Set("Content-Type", "application/json")
					resp, err := cl.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					n, err := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != 200 || n == 0 {
						b.Fatalf("status %d, %d bytes, %v", resp.StatusCode, n, err)
					}
				}
			})
		}
	}
}

// BenchmarkParallelStreams drives many concurrent streams through the router.
func BenchmarkParallelStreams(b *testing.B) {
	fx, u := startFixture(b)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 32})
	h := newHarness(b, nil, inst(b, "a", "n1", testModel, u))
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	body := chatBody(testModel, true)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("POST", h.srv.URL+"/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+clientToken)
			resp, err := cl.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
