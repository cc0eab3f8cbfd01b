package resume_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/llorch/llorch/engine/enginetest"
	"github.com/llorch/llorch/router/resume"
)

// fixtureRequests are the streams recorded in testdata: llama-server's own
// events for requests as Prepare sends them (token ids asked for), which
// the filter tests replay without an engine.
var fixtureRequests = []struct {
	file, path string
	kind       resume.Kind
	body       string
}{
	{"llama-chat.sse", "/v1/chat/completions", resume.Chat, `{"model":"tiny","messages":[{"role":"user","content":"Say <b>hi</b> & \"bye\"."}],"max_tokens":40,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`},
	{"llama-chat-nousage.sse", "/v1/chat/completions", resume.Chat, `{"model":"tiny","messages":[{"role":"user","content":"Go on."}],"max_tokens":12,"temperature":0,"stream":true}`},
	{"llama-completion.sse", "/v1/completions", resume.Completion, `{"model":"tiny","prompt":"Once upon a time","max_tokens":40,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`},
	{"llama-chat-ascii.sse", "/v1/chat/completions", resume.Chat, `{"model":"tiny","messages":[{"role":"user","content":"Spell it all."}],"max_tokens":120,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`},
	{"llama-completion-ascii.sse", "/v1/completions", resume.Completion, `{"model":"tiny","prompt":"<html>","max_tokens":120,"temperature":0,"stream":true}`},
}

// TestRecordFixtures rewrites testdata from a real llama-server; it runs
// only when LLORCH_RECORD_RESUME_FIXTURES is set (the fixtures are
// committed, so the replay tests need no engine).
func TestRecordFixtures(t *testing.T) {
	if os.Getenv("LLORCH_RECORD_RESUME_FIXTURES") == "" {
		t.Skip("set LLORCH_RECORD_RESUME_FIXTURES=1 to record from llama-server")
	}
	// The default model answers a fixed sentence and stops ("stop"); the
	// streaming one runs on through all of printable ASCII (quotes,
	// backslashes, <, & among it) until max_tokens ("length").
	e := enginetest.StartLlama(t, enginetest.LlamaSpec(t))
	s, _ := streamingModel(t)
	for i, fx := range fixtureRequests {
		if i >= 3 {
			e = s
		}
		up, _, err := resume.Prepare(fx.kind, []byte(fx.body))
		if err != nil {
			t.Fatal(err)
		}
		evs := events(t, e.Base, fx.path, up, 0, func(ev []byte) []byte { return ev })
		if len(evs) < 5 {
			t.Fatalf("%s: only %d events", fx.file, len(evs))
		}
		if err := os.WriteFile(filepath.Join("testdata", fx.file), bytes.Join(evs, nil), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
