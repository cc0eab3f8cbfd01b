package router

import (
	"sync"
	"testing"

	"github.com/llorch/llorch/engine"
)

// llama-server closes a connection after each streamed (chunked) answer
// without saying so (no Connection: close). Rounds of concurrent streams
// leave several such connections idle at once; the next requests must not
// fail on them (a replay dials afresh, and the endpoint is learnt so they
// are no longer pooled).
func TestRealLlamaServerConnectionsAfterStreams(t *testing.T) {
	base, logs := startLlamaServer(t)
	in := inst(t, "llama-1", "n1", testModel, base)
	in.Engine, in.APIs = "llamacpp", engine.LlamaCpp{}.APIs()
	h := newHarness(t, nil, in)
	body := `{"model":"tiny","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`
	sbody := `{"model":"tiny","max_tokens":4,"stream":true,"messages":[{"role":"user","content":"hi"}]}`
	var mu sync.Mutex
	failed := 0
	run := func(round int, b string) {
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if st, _, out := h.do("POST", "/v1/chat/completions", b); st != 200 {
					mu.Lock()
					failed++
					mu.Unlock()
					t.Logf("round %d request %d: %d %s", round, i, st, out)
				}
			}()
		}
		wg.Wait()
	}
	for round := range 6 {
		run(round, sbody) // four streams: four connections llama-server closes
		run(round, body)  // then four requests that would reuse them
	}
	if failed > 0 {
		t.Fatalf("%d of 48 requests failed\n%s", failed, logs.String()[max(0, logs.Len()-2000):])
	}
}
