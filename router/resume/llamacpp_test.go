package resume_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llorch/llorch/engine/enginetest"
	"github.com/llorch/llorch/internal/ggufgen"
	"github.com/llorch/llorch/router/resume"
)

// noKeepAlive: a cut stream leaves the engine a connection it closes later;
// every test request gets a fresh one.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// streamingModel streams for a while on one thread and never stops by
// itself, so every cut lands mid-answer.
func streamingModel(t *testing.T) (a, b *enginetest.Proc) {
	o := ggufgen.DefaultOptions()
	o.Embd, o.Layers, o.FF, o.Heads, o.KVHeads, o.StopAfter, o.Vocab = 256, 4, 1024, 4, 4, 0, 512
	model := ggufgen.TestModel(t, o)
	start := func() *enginetest.Proc {
		spec := enginetest.LlamaSpec(t)
		spec.Model, spec.Ctx, spec.Slots = model, 1024, 1
		return enginetest.StartLlama(t, spec)
	}
	return start(), start()
}

// events posts body to base+path and returns its SSE events, stopping
// (closing the connection, as a dying engine would look) after cut content
// events when cut > 0.
func events(t *testing.T, base, path string, body []byte, cut int, each func(ev []byte) []byte) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := noKeepAlive.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
	}
	br := bufio.NewReader(resp.Body)
	var out [][]byte
	var cur []byte
	n := 0
	for {
		line, err := br.ReadBytes('\n')
		cur = append(cur, line...)
		if len(bytes.TrimSpace(line)) == 0 && len(bytes.TrimSpace(cur)) > 0 {
			out = append(out, each(cur))
			cur = nil
			n++
			if cut > 0 && n >= cut {
				return out
			}
		}
		if err != nil {
			return out
		}
	}
}

// content concatenates the client-visible text of chat or completion events.
func content(t *testing.T, evs [][]byte) (text string, finish string, usage map[string]int) {
	t.Helper()
	var sb strings.Builder
	for _, ev := range evs {
		d := bytes.TrimSpace(bytes.TrimPrefix(bytes.TrimSpace(ev), []byte("data:")))
		if bytes.Equal(d, []byte("[DONE]")) {
			continue
		}
		var c struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
				Text         string          `json:"text"`
				FinishReason *string         `json:"finish_reason"`
				Logprobs     json.RawMessage `json:"logprobs"`
			} `json:"choices"`
			Usage map[string]any `json:"usage"`
		}
		if err := json.Unmarshal(d, &c); err != nil {
			t.Fatalf("event does not parse: %q: %v", ev, err)
		}
		for _, ch := range c.Choices {
			if len(ch.Logprobs) > 0 && string(ch.Logprobs) != "null" {
				t.Fatalf("injected logprobs reached the client: %s", ev)
			}
			sb.WriteString(ch.Delta.Content)
			sb.WriteString(ch.Text)
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
		if c.Usage != nil {
			usage = map[string]int{}
			for k, v := range c.Usage {
				if f, ok := v.(float64); ok {
					usage[k] = int(f)
				}
			}
		}
	}
	return sb.String(), finish, usage
}

// A stream cut after k events and continued on another instance gives the
// client exactly the text of the unbroken run, for chat and completions,
// at several cut points, with usage counting the prompt once.
func TestContinueIsExact(t *testing.T) {
	a, b := streamingModel(t)
	cases := []struct {
		path string
		kind resume.Kind
		body string
	}{
		{"/v1/chat/completions", resume.Chat, `{"model":"tiny","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Tell me about llorch."}],"max_tokens":60,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`},
		{"/v1/completions", resume.Completion, `{"model":"tiny","prompt":"Once upon a time","max_tokens":60,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`},
	}
	for _, tc := range cases {
		up, s, err := resume.Prepare(tc.kind, []byte(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		if err := (resume.LlamaCpp{}).Check(tc.kind, []byte(tc.body)); err != nil {
			t.Fatal(err)
		}
		ref := events(t, a.Base, tc.path, up, 0, s.Filter)
		want, wantFinish, wantUsage := content(t, ref)
		if len(want) < 20 || wantFinish != "length" || wantUsage["completion_tokens"] != 60 {
			t.Fatalf("%s: reference run too short or unfinished: %q finish=%q usage=%v", tc.path, want, wantFinish, wantUsage)
		}
		for _, cut := range []int{2, 7, 23, 41} {
			t.Run(fmt.Sprintf("%s/cut%d", tc.kind.String(), cut), func(t *testing.T) {
				up, s, _ := resume.Prepare(tc.kind, []byte(tc.body))
				got := events(t, a.Base, tc.path, up, cut, s.Filter)
				if ok, why := s.Resumable(); !ok {
					t.Fatalf("not resumable after %d events: %s", cut, why)
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				err := resume.LlamaCpp{}.Continue(ctx, resume.Call{Base: b.Base}, []byte(tc.body), s, func(ev []byte) error {
					got = append(got, ev)
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				text, finish, u := content(t, got)
				if text != want {
					t.Fatalf("continued text differs from the unbroken run\n got %q\nwant %q", text, want)
				}
				if finish != wantFinish {
					t.Fatalf("finish_reason %q, want %q", finish, wantFinish)
				}
				if u["prompt_tokens"] != wantUsage["prompt_tokens"] || u["completion_tokens"] != wantUsage["completion_tokens"] || u["total_tokens"] != wantUsage["total_tokens"] {
					t.Fatalf("usage %v, want %v", u, wantUsage)
				}
			})
		}
	}
}

// Requests the router cannot continue exactly are refused by Prepare or
// Check, never resumed wrongly.
func TestNotResumable(t *testing.T) {
	for _, body := range []string{
		`{"messages":[],"stream":false}`,
		`{"messages":[],"stream":true,"n":2}`,
		`{"messages":[],"stream":true,"logprobs":true}`,
	} {
		if _, _, err := resume.Prepare(resume.Chat, []byte(body)); err == nil {
			t.Errorf("Prepare accepted %s", body)
		}
	}
	for _, body := range []string{
		`{"messages":[],"stream":true,"tools":[{"type":"function","function":{"name":"f"}}]}`,
		`{"messages":[],"stream":true,"response_format":{"type":"json_object"}}`,
	} {
		if err := (resume.LlamaCpp{}).Check(resume.Chat, []byte(body)); err == nil {
			t.Errorf("Check accepted %s", body)
		}
	}
	s := &resume.Stream{Kind: resume.Chat}
	s.Filter([]byte(`data: {"id":"x","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]},"finish_reason":null}]}` + "\n\n"))
	if ok, why := s.Resumable(); ok || !strings.Contains(why, "tool call") {
		t.Fatalf("a stream inside a tool call is resumable (%v, %q)", ok, why)
	}
}
