// Mid-stream failover, the other breaks: /v2 task events, non-streamed
// answers, an instance leaving the registry, a break inside a tool call.

package router

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llorch/llorch/registry"
)

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
	// Counted once the continuation has returned, which can be just
	// after the client read its last event.
	waitFor(t, 5*time.Second, "llorch_stream_resumes_total = 1", func() bool { return f.h.metricSum("llorch_stream_resumes_total") == 1 })
}
