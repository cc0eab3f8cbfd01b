package router

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
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
	if n := f.h.metricSum("llorch_stream_resumes_total"); n != 1 {
		t.Fatalf("llorch_stream_resumes_total = %v, want 1", n)
	}
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
	if got := f.h.metricSum("llorch_stream_resumes_total"); got != 1 {
		t.Fatalf("resumes counted %v, want 1 (not_resumable)", got)
	}
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

// A break inside a tool-call delta cannot be continued exactly: the client
// gets what was sent, once, then the clean error event; no other instance
// is asked to continue.
func TestBreakInsideToolCallEndsCleanly(t *testing.T) {
	dying := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		fl := w.(http.Flusher)
		chunk := func(delta string) {
			io.WriteString(w, `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"tiny","choices":[{"index":0,"delta":`+delta+`,"finish_reason":null,"logprobs":{"content":[{"id":7,"token":"x","logprob":0}]}}]}`+"\n\n")
			fl.Flush()
		}
		chunk(`{"role":"assistant","content":"Let me "}`)
		chunk(`{"content":"check. "}`)
		chunk(`{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"q\":"}}]}`)
		panic(http.ErrAbortHandler)
	})
	var asked atomic.Int64
	// b fails chat requests before the first byte (so whichever instance
	// placement ranks first, the stream ends up on a) and counts
	// continuation calls, which must never come.
	other := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// /slots and /metrics are the router's engine-load polls.
		if p := r.URL.Path; p != "/v1/chat/completions" && p != "/slots" && p != "/metrics" {
			asked.Add(1)
		}
		w.WriteHeader(http.StatusBadGateway)
	})
	a, b := httptest.NewServer(dying), httptest.NewServer(other)
	defer a.Close()
	defer b.Close()
	ia, ib := inst(t, "a", "n1", testModel, a.URL), inst(t, "b", "n2", testModel, b.URL)
	ia.Engine, ib.Engine = "llamacpp", "llamacpp"
	h := newHarness(t, nil, ia, ib)
	var content strings.Builder
	var errEvents int
	{
		resp := h.doStream(t, "/v1/chat/completions", `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true}`)
		readSSEFunc(t, resp.Body, func(data string) {
			if strings.Contains(data, `"WORKER_RESET"`) {
				errEvents++
				return
			}
			var c struct {
				Choices []struct {
					Delta struct {
						Content string `json:"content"`
					} `json:"delta"`
					Logprobs json.RawMessage `json:"logprobs"`
				} `json:"choices"`
			}
			if err := json.Unmarshal([]byte(data), &c); err != nil {
				t.Fatalf("bad event %q", data)
			}
			for _, ch := range c.Choices {
				if len(ch.Logprobs) > 0 {
					t.Fatalf("injected logprobs reached the client: %s", data)
				}
				content.WriteString(ch.Delta.Content)
			}
		})
		resp.Body.Close()
	}
	if errEvents != 1 {
		t.Fatalf("error events: %d", errEvents)
	}
	if content.String() != "Let me check. " {
		t.Fatalf("client content %q", content.String())
	}
	if asked.Load() != 0 {
		t.Fatalf("another instance was asked to continue a tool call (%d requests)", asked.Load())
	}
}

// A /v2 task's token events continue on another instance when its engine
// dies: indexes go on without gap or repeat, the text is the unbroken
// run's, and the task ends with "end", not "error".
func TestTaskSurvivesItsEngine(t *testing.T) {
	f := newResumeFleet(t)
	body := `{"model_ref":"tiny","messages":[{"role":"user","content":"Tell me how llorch keeps a task alive."}],"max_tokens":160,"temperature":0}`
	run := func(kill bool) (string, int, []string) {
		st, _, sub, raw := f.h.submit(t, body)
		if st != 202 {
			t.Fatalf("submit: %d %s", st, raw)
		}
		resp, err := f.h.cl.Do(f.h.req("GET", "/v2/tasks/"+sub.TaskID+"/events", ""))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var text strings.Builder
		var kinds []string
		next := 0
		readSSEEvents(t, resp.Body, func(name, data string) {
			if name != "token" {
				kinds = append(kinds, name)
				return
			}
			var tok struct {
				T string `json:"t"`
				I int    `json:"i"`
			}
			if err := json.Unmarshal([]byte(data), &tok); err != nil {
				t.Fatalf("token event %q: %v", data, err)
			}
			if tok.I != next {
				t.Fatalf("token index %d, want %d (gap or repeat)", tok.I, next)
			}
			next++
			text.WriteString(tok.T)
			if kill && next == 12 {
				_, p := f.busy(t)
				p.Kill()
			}
		})
		return text.String(), next, kinds
	}
	want, n, kinds := run(false)
	if n == 0 || kinds[len(kinds)-1] != "end" {
		t.Fatalf("reference task: %d tokens, events %v", n, kinds)
	}
	got, m, kinds := run(true)
	if kinds[len(kinds)-1] != "end" {
		t.Fatalf("task after the engine died ended with %v", kinds)
	}
	if got != want || m != n {
		t.Fatalf("task text after the engine died differs (%d vs %d tokens)\n got %q\nwant %q", m, n, got, want)
	}
}

// readSSEEvents calls fn with each event's name and data as it arrives.
func readSSEEvents(t *testing.T, r io.Reader, fn func(name, data string)) {
	t.Helper()
	br := bufio.NewReader(r)
	name, data := "", ""
	for {
		line, err := br.ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "" && (name != "" || data != ""):
			fn(name, data)
			name, data = "", ""
		case strings.HasPrefix(line, "event: "):
			name = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = line[len("data: "):]
		}
		if err != nil {
			return
		}
	}
}

// A non-streamed answer whose engine dies mid-generation has sent the
// client nothing: it is re-run on another instance, counted as a retry,
// and the client gets the whole answer.
func TestNonStreamedAnswerSurvivesItsEngine(t *testing.T) {
	f := newResumeFleet(t)
	body := `{"model":"tiny","messages":[{"role":"user","content":"Tell me a long story."}],"max_tokens":160,"temperature":0}`
	var want string
	for i, kill := range []bool{false, true} {
		killed := make(chan bool, 1)
		if kill {
			go func() { // not the test goroutine: no t.Fatal here
				for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
					for _, p := range f.procs {
						if processing(p) {
							time.Sleep(300 * time.Millisecond) // well inside a 160-token answer
							p.Kill()
							killed <- true
							return
						}
					}
				}
				killed <- false
			}()
		} else {
			killed <- true
		}
		st, _, raw := f.h.do("POST", "/v1/chat/completions", body)
		if !<-killed {
			t.Fatal("no engine was generating the answer")
		}
		var r struct {
			Choices []struct {
				Message struct {
					Content string `json:"content"`
				} `json:"message"`
			} `json:"choices"`
		}
		if st != 200 || json.Unmarshal([]byte(raw), &r) != nil || len(r.Choices) != 1 {
			t.Fatalf("run %d: %d %s", i, st, raw)
		}
		if !kill {
			want = r.Choices[0].Message.Content
			continue
		}
		if r.Choices[0].Message.Content != want {
			t.Fatalf("answer after the engine died differs\n got %q\nwant %q", r.Choices[0].Message.Content, want)
		}
	}
	if n := f.h.metricSum("llorch_router_retries_total"); n < 1 {
		t.Fatalf("retries counted %v, want ≥ 1", n)
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

// An instance that leaves the registry mid-stream (its node failed: the
// connection may hang rather than reset) breaks the stream at once, and it
// continues on the other instance with the unbroken run's content.
func TestStreamContinuesWhenInstanceLeaves(t *testing.T) {
	f := newResumeFleet(t)
	want, _, _ := chatRun(t, f, 0, nil)
	var gone string
	got, _, _ := chatRun(t, f, 12, func() {
		id, _ := f.busy(t)
		gone = id
		var rest []registry.Instance
		for other, in := range f.insts {
			if other != id {
				rest = append(rest, in)
			}
		}
		f.h.src.Set(rest...)
	})
	if got != want {
		t.Fatalf("content after %s left the registry differs\n got %q\nwant %q", gone, got, want)
	}
	// The engine that left is healthy and would have finished the answer
	// itself: one resume shows the router broke the stream when the
	// registry said the instance was gone.
	if n := f.h.metricSum("llorch_stream_resumes_total"); n != 1 {
		t.Fatalf("llorch_stream_resumes_total = %v, want 1", n)
	}
}
