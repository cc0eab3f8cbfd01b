package router

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llorch/llorch/engine/enginetest"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/registry"
)

// resumeFleet is two real llama-servers serving a model that streams for
// seconds on one thread (the sizes) behind the router.
type resumeFleet struct {
	h     *harness
	procs map[string]*enginetest.Proc // instance id → engine
	insts map[string]registry.Instance
}

func newResumeFleet(t *testing.T) *resumeFleet {
	o := ggufgen.DefaultOptions()
	o.Embd, o.Layers, o.FF, o.Heads, o.KVHeads, o.StopAfter = 512, 8, 2048, 8, 8, 0
	model := ggufgen.TestModel(t, o)
	f := &resumeFleet{procs: map[string]*enginetest.Proc{}, insts: map[string]registry.Instance{}}
	var insts []registry.Instance
	for _, id := range []string{"llama-a", "llama-b"} {
		spec := enginetest.LlamaSpec(t)
		spec.Model, spec.Ctx, spec.Slots, spec.APIKey = model, 1024, 1, engineToken
		p := enginetest.StartLlama(t, spec)
		in := inst(t, id, "node-"+id, testModel, p.Base)
		in.Engine, in.APIs = "llamacpp", []string{"/v1/chat/completions", "/v1/completions"}
		insts = append(insts, in)
		f.procs[id] = p
		f.insts[id] = in
	}
	f.h = newHarness(t, func(c *Config) {
		c.FirstByteTimeout, c.IdleStreamTimeout = 60*time.Second, 60*time.Second // a loaded CI machine
	}, insts...)
	return f
}

// busy returns the engine that is generating now (its slot is processing).
func (f *resumeFleet) busy(t *testing.T) (string, *enginetest.Proc) {
	t.Helper()
	for id, p := range f.procs {
		if processing(p) {
			return id, p
		}
	}
	t.Fatal("no engine is generating")
	return "", nil
}

const resumeMaxTokens = 160

func chatParams() openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model: testModel,
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("You answer in full sentences."),
			openai.UserMessage("Tell me how llorch keeps a stream alive."),
		},
		MaxTokens: openai.Int(resumeMaxTokens), Temperature: openai.Float(0),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	}
}

// chatRun streams the chat through the router with the official SDK; kill,
// when set, runs once after the given number of chunks.
func chatRun(t *testing.T, f *resumeFleet, killAfter int, kill func()) (content string, chunks int, acc openai.ChatCompletionAccumulator) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := sdkClient(f.h.srv.URL, clientToken)
	st := cl.Chat.Completions.NewStreaming(ctx, chatParams())
	ids := map[string]bool{}
	for st.Next() {
		c := st.Current()
		ids[c.ID] = true
		acc.AddChunk(c)
		chunks++
		if chunks == killAfter && kill != nil {
			kill()
		}
	}
	if err := st.Err(); err != nil {
		t.Fatalf("stream through the router failed after %d chunks: %v", chunks, err)
	}
	if len(ids) != 1 {
		t.Fatalf("the stream changed its id: %v", ids)
	}
	if len(acc.Choices) != 1 {
		t.Fatalf("choices: %+v", acc.Choices)
	}
	return acc.Choices[0].Message.Content, chunks, acc
}

// Killing the engine that serves a stream mid-answer: the official SDK
// receives exactly the content of an unbroken run, one stream id, the
// last engine's finish reason and usage that counts the prompt once and
// every completion token.
func TestStreamSurvivesItsEngine(t *testing.T) {
	f := newResumeFleet(t)
	want, _, ref := chatRun(t, f, 0, nil)
	if ref.Usage.CompletionTokens != resumeMaxTokens || ref.Choices[0].FinishReason != "length" {
		t.Fatalf("reference run: usage %+v finish %q", ref.Usage, ref.Choices[0].FinishReason)
	}
	var killed string
	got, chunks, acc := chatRun(t, f, 12, func() {
		id, p := f.busy(t)
		killed = id
		p.Kill()
	})
	if got != want {
		t.Fatalf("content after the engine died differs from the unbroken run\n got %q\nwant %q", got, want)
	}
	if acc.Usage.PromptTokens != ref.Usage.PromptTokens || acc.Usage.CompletionTokens != ref.Usage.CompletionTokens ||
		acc.Usage.TotalTokens != ref.Usage.TotalTokens {
		t.Fatalf("usage %+v, want %+v", acc.Usage, ref.Usage)
	}
	if acc.Choices[0].FinishReason != "length" {
		t.Fatalf("finish_reason %q", acc.Choices[0].FinishReason)
	}
	// Counted once the continuation has returned, which can be just
	// after the client read its last event.
	waitFor(t, 5*time.Second, "llorch_stream_resumes_total = 1", func() bool { return f.h.metricSum("llorch_stream_resumes_total") == 1 })
	t.Logf("killed %s after 12 of %d chunks; %d bytes identical", killed, chunks, len(got))
}

// The same for /v1/completions, read as raw SSE: one id, the text of the
// unbroken run, one [DONE].
func TestCompletionStreamSurvivesItsEngine(t *testing.T) {
	f := newResumeFleet(t)
	body := `{"model":"tiny","prompt":"The router keeps streams alive because","max_tokens":160,"temperature":0,"stream":true}`
	run := func(kill bool) (string, int) {
		resp := f.h.doStream(t, "/v1/completions", body)
		defer resp.Body.Close()
		var sb strings.Builder
		ids := map[string]bool{}
		done, n := 0, 0
		readSSEFunc(t, resp.Body, func(data string) {
			if data == "[DONE]" {
				done++
				return
			}
			var c struct {
				ID      string `json:"id"`
				Choices []struct {
					Text string `json:"text"`
				} `json:"choices"`
				Error json.RawMessage `json:"error"`
			}
			if err := json.Unmarshal([]byte(data), &c); err != nil || len(c.Error) > 0 {
				t.Fatalf("bad event %q (%v)", data, err)
			}
			ids[c.ID] = true
			for _, ch := range c.Choices {
				sb.WriteString(ch.Text)
			}
			n++
			if kill && n == 12 {
				_, p := f.busy(t)
				p.Kill()
			}
		})
		if done != 1 || len(ids) != 1 {
			t.Fatalf("[DONE] %d times, ids %v", done, ids)
		}
		return sb.String(), n
	}
	want, _ := run(false)
	got, n := run(true)
	if got != want {
		t.Fatalf("completion after the engine died differs (%d events)\n got %q\nwant %q", n, got, want)
	}
}

// A stream that cannot be continued (the client asked for logprobs) still
// ends with the clean error event when its engine dies, never a resume.
func TestUnresumableStreamEndsWithErrorEvent(t *testing.T) {
	f := newResumeFleet(t)
	body := `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":160,"temperature":0,"stream":true,"logprobs":true}`
	resp := f.h.doStream(t, "/v1/chat/completions", body)
	defer resp.Body.Close()
	n, sawError := 0, false
	readSSEFunc(t, resp.Body, func(data string) {
		if strings.Contains(data, `"WORKER_RESET"`) {
			sawError = true
			return
		}
		n++
		if n == 12 {
			_, p := f.busy(t)
			p.Kill()
		}
	})
	if !sawError {
		t.Fatal("no error event after the engine died")
	}
	waitFor(t, 5*time.Second, "llorch_stream_resumes_total = 1 (not_resumable)", func() bool { return f.h.metricSum("llorch_stream_resumes_total") == 1 })
}

func (h *harness) doStream(t *testing.T, path, body string) *http.Response {
	t.Helper()
	req := h.req("POST", path, body)
	resp, err := h.cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
	}
	return resp
}

// readSSEFunc calls fn with each event's data as it arrives.
func readSSEFunc(t *testing.T, r io.Reader, fn func(data string)) {
	t.Helper()
	buf := make([]byte, 0, 64<<10)
	tmp := make([]byte, 4<<10)
	for {
		n, err := r.Read(tmp)
		buf = append(buf, tmp[:n]...)
		for {
			i := strings.Index(string(buf), "\n\n")
			if i < 0 {
				break
			}
			ev := string(buf[:i])
			buf = buf[i+2:]
			for _, line := range strings.Split(ev, "\n") {
				if d, ok := strings.CutPrefix(line, "data: "); ok {
					fn(d)
				}
			}
		}
		if err != nil {
			return
		}
	}
}

func processing(p *enginetest.Proc) bool {
	req, _ := http.NewRequest("GET", p.Base+"/slots", nil)
	req.Header.Set("Authorization", "Bearer "+engineToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var slots []struct {
		IsProcessing bool `json:"is_processing"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&slots)
	for _, s := range slots {
		if s.IsProcessing {
			return true
		}
	}
	return false
}
