package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/engine/enginetest"
)

// TestLlamaCppCacheCountersReal: the adapter's prompt-cache counters move
// the way the real llama-server's cache does. The same long prompt sent
// twice is evaluated once: the second time the engine serves it from the
// slot's cache, the cached counter grows by about the prompt, and the answer
// says so in usage.prompt_tokens_details.cached_tokens.
func TestLlamaCppCacheCountersReal(t *testing.T) {
	a, _ := engine.Get("llamacpp")
	spec := enginetest.LlamaSpec(t)
	spec.Slots = 1
	p := enginetest.StartLlama(t, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	prompt := strings.Repeat("the quick brown fox jumps over the lazy dog. ", 6)
	var lastCached int
	send := func() {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"model": "tiny", "prompt": prompt, "max_tokens": 4})
		req, _ := http.NewRequestWithContext(ctx, "POST", p.Base+"/v1/completions", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var ans struct {
			Usage struct {
				Details struct {
					Cached int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
		}
		err = json.NewDecoder(resp.Body).Decode(&ans)
		resp.Body.Close()
		if resp.StatusCode != 200 || err != nil {
			t.Fatalf("completion: status %d, %v", resp.StatusCode, err)
		}
		lastCached = ans.Usage.Details.Cached
	}
	before, err := a.Load(ctx, nil, p.Base, spec)
	if err != nil || !before.Cache.Counters {
		t.Fatalf("Load before: %+v %v; want cache counters", before, err)
	}
	send()
	first, _ := a.Load(ctx, nil, p.Base, spec)
	send()
	second, _ := a.Load(ctx, nil, p.Base, spec)
	evaluated := first.Cache.PromptTokens - before.Cache.PromptTokens
	if evaluated < 50 || first.Cache.CachedTokens != before.Cache.CachedTokens {
		t.Errorf("first send: %v prompt tokens, %v cached; want a long prompt, none cached", evaluated, first.Cache.CachedTokens-before.Cache.CachedTokens)
	}
	cached := second.Cache.CachedTokens - first.Cache.CachedTokens
	if cached < evaluated*0.8 {
		t.Errorf("second send: %v of %v prompt tokens served from cache; want most", cached, evaluated)
	}
	if r, ok := second.Cache.HitRate(); !ok || r <= 0 {
		t.Errorf("hit rate %v %v, want > 0", r, ok)
	}
	if lastCached <= 0 {
		t.Errorf("second answer's usage.prompt_tokens_details.cached_tokens = %d, want > 0 (this llama-server's n_prompt_tokens_cache in /slots reads 0 once a slot is idle)", lastCached)
	}
}
