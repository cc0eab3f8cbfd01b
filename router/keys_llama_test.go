package router

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llorch/llorch/engine/enginetest"
	"github.com/llorch/llorch/router/keys"
)

// engineUsage records the usage llama-server itself reports in every
// answer, read from the raw bytes between the router and the engine.
type engineUsage struct {
	mu                 sync.Mutex
	answers, withUsage int
	prompt, completion int64
}

func (e *engineUsage) read(body []byte) {
	var last *struct {
		PromptTokens     int64 `json:"prompt_tokens"`
		CompletionTokens int64 `json:"completion_tokens"`
	}
	parse := func(b []byte) {
		var v struct {
			Usage *struct {
				PromptTokens     int64 `json:"prompt_tokens"`
				CompletionTokens int64 `json:"completion_tokens"`
			} `json:"usage"`
		}
		if json.Unmarshal(b, &v) == nil && v.Usage != nil {
			last = v.Usage
		}
	}
	if bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) {
		parse(body)
	} else {
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if d, ok := bytes.CutPrefix(sc.Bytes(), []byte("data: ")); ok {
				parse(d)
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.answers++
	if last != nil {
		e.withUsage++
		e.prompt += last.PromptTokens
		e.completion += last.CompletionTokens
	}
}

// The usage a key is charged and reported is exactly what the engine said:
// a fixed workload (plain, streamed with and without the client asking for
// usage, chat and completions) through the router to the real
// llama-server, compared with the engine's own usage numbers read off the
// wire between them.
func TestKeysUsageMatchesRealLlamaServer(t *testing.T) {
	p := enginetest.StartLlama(t, enginetest.LlamaSpec(t))
	target, _ := url.Parse(p.Base)
	eng := &engineUsage{}
	tap := httputil.NewSingleHostReverseProxy(target)
	tap.FlushInterval = -1
	// llama-server drops idle connections; a fresh one per request keeps
	// the tap from replaying onto a closed one.
	tap.Transport = &http.Transport{DisableKeepAlives: true}
	tap.ModifyResponse = func(resp *http.Response) error {
		if path := resp.Request.URL.Path; path != "/v1/chat/completions" && path != "/v1/completions" {
			// The router's engine-load poller (GET /slots, /metrics every
			// EnginePoll) passes the tap too; those are not answers.
			return nil
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode == 200 {
			eng.read(b)
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		return nil
	}
	tapSrv := httptest.NewServer(tap)
	t.Cleanup(tapSrv.Close)

	// A fast load poll: the poller's GETs interleave with the workload,
	// and neither the tap's count nor the key's usage may take them in.
	fastPoll := func(c *Config) { c.EnginePoll, c.EngineStaleAfter = 20*time.Millisecond, time.Second }
	h := newKeyHarness(t, fastPoll, keys.Key{Name: "team-a", Digest: keys.DigestOf(secretA), TPM: 1_000_000, RPM: 1000})
	in := inst(t, "llama-1", "n1", testModel, tapSrv.URL)
	in.Engine, in.APIs = "llamacpp", []string{"/v1/chat/completions", "/v1/completions"}
	h.src.Set(in)
	waitFor(t, 5*time.Second, "the llama instance", func() bool { return len(h.rt.Snapshot().Instances) == 1 })

	msg := func(i int) string {
		return `[{"role":"user","content":"count to ` + strings.Repeat("ten ", i+1) + `"}]`
	}
	work := []struct{ path, body string }{}
	for i := 0; i < 3; i++ {
		work = append(work,
			struct{ path, body string }{"/v1/chat/completions", `{"model":"tiny","max_tokens":8,"temperature":0,"messages":` + msg(i) + `}`},
			struct{ path, body string }{"/v1/chat/completions", `{"model":"tiny","max_tokens":8,"temperature":0,"stream":true,"messages":` + msg(i) + `}`},
			struct{ path, body string }{"/v1/completions", `{"model":"tiny","max_tokens":6,"temperature":0,"prompt":"once upon a time ` + strings.Repeat("x ", i) + `"}`})
	}
	work = append(work, struct{ path, body string }{"/v1/chat/completions",
		`{"model":"tiny","max_tokens":8,"temperature":0,"stream":true,"stream_options":{"include_usage":true},"messages":` + msg(5) + `}`})
	for _, w := range work {
		st, _, b := h.as(secretA, w.path, w.body)
		if st != 200 {
			t.Fatalf("%s %s: %d %s", w.path, w.body, st, b)
		}
		asked := strings.Contains(w.body, "include_usage")
		if strings.Contains(w.body, `"stream":true`) && !asked && strings.Contains(b, `"choices":[]`) {
			t.Fatalf("the client saw the usage chunk it did not ask for:\n%s", b)
		}
		if asked && !strings.Contains(b, `"completion_tokens"`) {
			t.Fatalf("the client asked for usage and got none:\n%s", b)
		}
	}
	rows := h.rt.keys.Usage.Report("team-a", "", 0)
	eng.mu.Lock()
	defer eng.mu.Unlock()
	t.Logf("engine reported %d answers, %d prompt + %d completion tokens; router: %+v", eng.answers, eng.prompt, eng.completion, rows)
	if eng.answers != len(work) || eng.withUsage != len(work) || eng.prompt == 0 || eng.completion == 0 {
		t.Fatalf("the tap saw %d answers, %d with usage (%d/%d tokens), of %d", eng.answers, eng.withUsage, eng.prompt, eng.completion, len(work))
	}
	if len(rows) != 1 || rows[0].Requests != int64(len(work)) || rows[0].PromptTokens != eng.prompt || rows[0].CompletionTokens != eng.completion || rows[0].Errors != 0 {
		t.Fatalf("router usage %+v, engine said %d answers, %d prompt, %d completion tokens", rows, eng.answers, eng.prompt, eng.completion)
	}
}
