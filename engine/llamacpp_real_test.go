package engine_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/engine/enginetest"
	"github.com/llorch/llorch/internal/ggufgen"
)

// TestLlamaCppRealServer runs the adapter's own command line against the
// real llama-server and the generated model: Ready, Version and Load (idle,
// then busy) read from the live engine, with the API key enforced.
func TestLlamaCppRealServer(t *testing.T) {
	a, _ := engine.Get("llamacpp")
	spec := enginetest.LlamaSpec(t)
	// A model that never stops keeps slots busy long enough to observe.
	o := ggufgen.DefaultOptions()
	o.StopAfter = 0
	o.Embd, o.FF, o.Layers = 256, 512, 4 // slower tokens: a wider window to see busy slots
	spec.Model = ggufgen.TestModel(t, o)
	spec.APIKey = "test-key-0123456789"
	p := enginetest.StartLlama(t, spec)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := a.Version(ctx, nil, p.Base, spec)
	if err != nil || !strings.HasPrefix(v, "b") {
		t.Errorf("Version = %q, %v", v, err)
	}
	l, err := a.Load(ctx, nil, p.Base, spec)
	if want := (engine.Load{Known: true, SlotsFree: 2, Cache: engine.CacheStats{Counters: true}}); err != nil || l != want {
		t.Errorf("idle Load = %+v, %v; want %+v", l, err, want)
	}

	// Three long requests on two slots: two busy, one deferred.
	var wg sync.WaitGroup
	reqCtx, stop := context.WithCancel(ctx)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := `{"model":"tiny","prompt":"hi","max_tokens":400}`
			req, _ := http.NewRequestWithContext(reqCtx, "POST", p.Base+"/v1/completions", bytes.NewBufferString(body))
			req.Header.Set("Authorization", "Bearer "+spec.APIKey)
			req.Header.Set("Content-Type", "application/json")
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	var busy engine.Load
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		busy, err = a.Load(ctx, nil, p.Base, spec)
		if err == nil && busy.SlotsBusy == 2 && busy.QueueLen >= 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	wg.Wait()
	if busy.SlotsBusy != 2 || busy.SlotsFree != 0 || busy.QueueLen < 1 {
		t.Errorf("busy Load = %+v, want 2 busy, 0 free, >=1 queued", busy)
	}

	wrong := spec
	wrong.APIKey = "wrong"
	if _, err := a.Load(ctx, nil, p.Base, wrong); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("Load with a wrong key: %v, want 401", err)
	}
}
