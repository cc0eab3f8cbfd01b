package resume

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

var prepareCases = []string{
	`{"model":"m","messages":[],"stream":true}`,
	`{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}`,
	`{"model":"m","messages":[],"stream":true,"stream_options":{"INCLUDE_USAGE":true,"include_usage":null}}`,
	`{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":1}}`,
	`{"model":"m","messages":[],"stream":true,"stream_options":null,"n":1}`,
	`{"model":"m","messages":[],"stream":true,"n":null}`,
	`{"model":"m","messages":[],"stream":true,"n":2}`,
	`{"model":"m","messages":[],"stream":true,"n":1.0}`,
	`{"model":"m","messages":[],"stream":false}`,
	`{"model":"m","messages":[],"stream":"true"}`,
	`{"model":"m","messages":[],"stream":true,"stream":false}`,
	`{"logprobs":false,"model":"m","stream":true,"top_logprobs":3}`,
	`{"model":"m","stream":true,"logprobs":true}`,
	`{"model":"m","stream":true,"logprobs":null}`,
	`{"model":"m","stream":true,"logprobs":0}`,
	`{"model":"m","stream":true,"logprobs":false,"logprobs":true}`,
	`{"stream":true}`, `{"stream":true,"logprobs":null}`,
	" {\n \"stream\" : true ,\n \"prompt\" : \"<b>&amp;</b>\" , \"logprobs\" : null\n }\n",
	`{"prompt":"a","stream":true,"logprobs":2}`,
	`[1]`, `null`, `{"stream":true`, ``, `{"stream":true} x`,
}

// The body sent upstream is the JSON the re-encoding sent (the same
// members and values), and the same requests are refused.
func TestPrepareMatchesLegacy(t *testing.T) {
	for _, body := range prepareCases {
		for _, kind := range []Kind{Chat, Completion} {
			samePrepare(t, kind, body)
		}
	}
}

func samePrepare(t *testing.T, kind Kind, body string) {
	t.Helper()
	got, gs, gerr := Prepare(kind, []byte(body))
	want, ws, werr := legacyPrepare(kind, []byte(body))
	if (gerr == nil) != (werr == nil) {
		t.Fatalf("%s %s: error %v, was %v", kind, body, gerr, werr)
	}
	if gerr != nil {
		if !errors.Is(gerr, ErrNotResumable) {
			t.Fatalf("%s %s: %v is not ErrNotResumable", kind, body, gerr)
		}
		return
	}
	var g, w map[string]any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s %s: upstream body %s: %v", kind, body, got, err)
	}
	_ = json.Unmarshal(want, &w)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("%s %s:\n got %s\nwant %s", kind, body, got, want)
	}
	if gs.clientUsage != ws.clientUsage || gs.injected != ws.injected || gs.Kind != ws.Kind {
		t.Fatalf("%s %s: stream %+v, was %+v", kind, body, gs, ws)
	}
}

// The client's bytes are kept: only the logprobs members move.
func TestPrepareSplices(t *testing.T) {
	for _, tc := range []struct {
		kind       Kind
		body, want string
	}{
		{Chat, `{"model":"m","stream":true}`, `{"model":"m","stream":true,"logprobs":true,"top_logprobs":1}`},
		{Chat, `{"logprobs":false, "model":"m","top_logprobs":null,"stream":true }`, `{"model":"m","stream":true ,"logprobs":true,"top_logprobs":1}`},
		{Completion, " {\"prompt\":\"<b>\\u00e9</b>\",\"stream\":true,\"top_logprobs\":2}\n", " {\"prompt\":\"<b>\\u00e9</b>\",\"stream\":true,\"top_logprobs\":2,\"logprobs\":1}\n"},
		{Completion, `{"logprobs":null,"stream":true}`, `{"stream":true,"logprobs":1}`},
	} {
		got, _, err := Prepare(tc.kind, []byte(tc.body))
		if err != nil || string(got) != tc.want {
			t.Errorf("%s:\n got %s (%v)\nwant %s", tc.body, got, err, tc.want)
		}
	}
}

func FuzzPrepareMatchesLegacy(f *testing.F) {
	for _, c := range prepareCases {
		f.Add(c, true)
	}
	f.Fuzz(func(t *testing.T, body string, chat bool) {
		kind := Completion
		if chat {
			kind = Chat
		}
		samePrepare(t, kind, body)
	})
}

func BenchmarkPrepare(b *testing.B) {
	for _, n := range []int{1, 200} {
		body := []byte(`{"model":"tiny","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"` +
			strings.Repeat(`Tell me about \"llorch\". `, n) + `"}],"max_tokens":60,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`)
		for _, impl := range []struct {
			name    string
			prepare func(Kind, []byte) ([]byte, *Stream, error)
		}{{"scan", Prepare}, {"encoding-json", legacyPrepare}} {
			b.Run(fmt.Sprintf("%s/%dB", impl.name, len(body)), func(b *testing.B) {
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					if _, _, err := impl.prepare(Chat, body); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
