package router

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/engine/enginetest"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/registry"
	"github.com/llorch/llorch/router/enginestate"
)

// realPair is two real llama-servers (one slot each) serving a model that
// never stops on its own, so a long request holds a slot for as long as
// the test needs.
type realPair struct {
	procs []*enginetest.Proc
	insts []registry.Instance
}

func startRealPair(t *testing.T) realPair {
	t.Helper()
	o := ggufgen.DefaultOptions()
	o.StopAfter = 0
	o.Embd, o.FF, o.Layers = 128, 256, 2
	model := ggufgen.TestModel(t, o)
	var rp realPair
	for i := range 2 {
		spec := enginetest.LlamaSpec(t)
		spec.Model, spec.Slots, spec.Ctx, spec.APIKey = model, 1, 2048, engineToken
		p := enginetest.StartLlama(t, spec)
		in := inst(t, fmt.Sprintf("e%d", i+1), fmt.Sprintf("n%d", i+1), testModel, p.Base)
		in.Engine, in.Slots, in.APIs = "llamacpp", 1, []string{"/v1/chat/completions", "/v1/completions"}
		rp.procs, rp.insts = append(rp.procs, p), append(rp.insts, in)
	}
	return rp
}

// counters reads every engine's prompt-cache counters.
func (rp realPair) counters(t *testing.T) []engine.CacheStats {
	t.Helper()
	a, _ := engine.Get("llamacpp")
	out := make([]engine.CacheStats, len(rp.procs))
	for i, p := range rp.procs {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		l, err := a.Load(ctx, nil, p.Base, p.Spec)
		cancel()
		if err != nil || !l.Cache.Counters {
			t.Fatalf("engine %d load: %+v %v", i, l, err)
		}
		out[i] = l.Cache
	}
	return out
}

// servedBy is the engine whose prompt counter moved between before and
// after (exactly one must have), with the tokens it served from cache.
func servedBy(t *testing.T, before, after []engine.CacheStats) (int, float64) {
	t.Helper()
	who := -1
	for i := range before {
		if after[i].PromptTokens > before[i].PromptTokens {
			if who >= 0 {
				t.Fatalf("two engines processed the request")
			}
			who = i
		}
	}
	if who < 0 {
		t.Fatal("no engine processed the request")
	}
	return who, after[who].CachedTokens - before[who].CachedTokens
}

type turn struct{ role, content string }

// chat sends the conversation through h and returns the answer and the
// engine-reported cached prompt tokens of this answer.
func chat(t *testing.T, h *harness, conv []turn) (string, int) {
	t.Helper()
	var msgs []map[string]string
	for _, m := range conv {
		msgs = append(msgs, map[string]string{"role": m.role, "content": m.content})
	}
	body, _ := json.Marshal(map[string]any{"model": testModel, "messages": msgs, "max_tokens": 6, "temperature": 0})
	status, _, resp := h.do("POST", "/v1/chat/completions", string(body))
	if status != 200 {
		t.Fatalf("chat: status %d: %s", status, resp)
	}
	var ans struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
		Usage struct {
			Details struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if err := json.Unmarshal([]byte(resp), &ans); err != nil || len(ans.Choices) != 1 {
		t.Fatalf("chat answer %q: %v", resp, err)
	}
	return ans.Choices[0].Message.Content, ans.Usage.Details.Cached
}

func pollingConfig(c *Config) {
	c.EnginePoll, c.EngineStaleAfter = 20*time.Millisecond, 200*time.Millisecond
}

// waitLoad waits until h's engine view of inst shows busy slots.
func waitLoad(t *testing.T, h *harness, id string, busy int) {
	t.Helper()
	waitFor(t, 5*time.Second, fmt.Sprintf("%s reported with %d busy", id, busy), func() bool {
		s := h.rt.engines.Get(id)
		return s.Freshness == enginestate.Fresh && s.Report.Load.SlotsBusy == busy && s.Report.OthersHeld <= busy
	})
}

// On two real llama-servers: a conversation's second turn goes to the
// engine that served its first, which serves the shared prefix from its
// cache; with that engine's slot held by someone else's request (seen only
// in the engine's own report), the turn goes to the other engine; and a
// second router, sharing nothing with the first, places the conversation
// on the same engine.
func TestRealLlamaConversationAffinity(t *testing.T) {
	rp := startRealPair(t)
	r1 := newHarness(t, pollingConfig, rp.insts...)
	r2 := newHarness(t, pollingConfig, rp.insts...)
	// Between turns (a person reads the answer) both routers' reports
	// catch up: a report taken while a turn ran shows its slot busy.
	settle := func() {
		for _, in := range rp.insts {
			waitLoad(t, r1, in.ID, 0)
			waitLoad(t, r2, in.ID, 0)
		}
	}
	settle()
	sys := turn{"system", strings.Repeat("You answer questions about geography briefly. ", 8)}

	homes := map[int]bool{}
	for k := 0; k < 6; k++ {
		// Each conversation its own system prompt: conversations sharing
		// one share its cache key and engine (TestPromptKeyCanonical).
		conv := []turn{{"system", fmt.Sprintf("Guide %d. ", k) + sys.content}, {"user", fmt.Sprintf("Conversation %d: name a river in a country of your choice.", k)}}
		c0 := rp.counters(t)
		a1, _ := chat(t, r1, conv)
		c1 := rp.counters(t)
		home, _ := servedBy(t, c0, c1)
		homes[home] = true
		settle()

		// Turn two through the other router: same engine, prefix cached.
		conv = append(conv, turn{"assistant", a1}, turn{"user", "And its length?"})
		_, cachedAns := chat(t, r2, conv)
		c2 := rp.counters(t)
		got, cached := servedBy(t, c1, c2)
		if got != home {
			t.Fatalf("conversation %d: turn 1 on engine %d (router 1), turn 2 on engine %d (router 2)", k, home, got)
		}
		if cached <= 0 || cachedAns <= 0 {
			t.Fatalf("conversation %d: turn 2 on its home engine, but the engine served %v prompt tokens from cache (answer says %d)", k, cached, cachedAns)
		}
		t.Logf("conversation %d: engine %d, turn 2 with %v prompt tokens from cache", k, home, cached)
		settle()
	}
	if len(homes) != 2 {
		t.Errorf("six conversations with their own system prompts all on one engine: consistent hashing is not spreading them")
	}

	// Saturate a conversation's home from outside both routers (another
	// client's long request straight to the engine): only the engine's
	// report shows it.
	conv := []turn{sys, {"user", "Conversation S: name a mountain."}}
	c0 := rp.counters(t)
	a1, _ := chat(t, r1, conv)
	home, _ := servedBy(t, c0, rp.counters(t))
	settle()
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan struct{})
	go func() {
		defer close(held)
		body := `{"model":"tiny","prompt":"hold","max_tokens":1500}`
		req, _ := http.NewRequestWithContext(ctx, "POST", rp.procs[home].Base+"/v1/completions", bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer "+engineToken)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	defer func() { cancel(); <-held }()
	waitLoad(t, r1, rp.insts[home].ID, 1)
	conv = append(conv, turn{"assistant", a1}, turn{"user", "How high is it?"})
	c1 := rp.counters(t)
	chat(t, r1, conv)
	if got, _ := servedBy(t, c1, rp.counters(t)); got == home {
		t.Fatalf("engine %d reports its one slot busy, yet the turn went there", home)
	}
}
