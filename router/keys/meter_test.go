package keys

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/llorch/llorch/internal/jsonscan"
)

// legacyAskUsage and legacyEvent are the meter as it was, on
// encoding/json: the reference the scanning one is compared with.
func legacyAskUsage(body []byte) (out []byte, clientAsked bool) {
	var probe struct {
		StreamOptions map[string]json.RawMessage `json:"stream_options"`
	}
	if err := json.Unmarshal(body, &probe); err != nil {
		return body, false
	}
	if v, ok := probe.StreamOptions["include_usage"]; ok && string(bytes.TrimSpace(v)) == "true" {
		return body, true
	}
	if probe.StreamOptions == nil {
		i := bytes.IndexByte(body, '{')
		rest := bytes.TrimLeft(body[i+1:], " \t\r\n")
		sep := ","
		if len(rest) > 0 && rest[0] == '}' {
			sep = ""
		}
		out = make([]byte, 0, len(body)+40)
		out = append(out, body[:i+1]...)
		out = append(out, `"stream_options":{"include_usage":true}`+sep...)
		return append(out, body[i+1:]...), false
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(body, &all); err != nil {
		return body, false
	}
	probe.StreamOptions["include_usage"] = json.RawMessage("true")
	so, _ := json.Marshal(probe.StreamOptions)
	all["stream_options"] = so
	b, err := json.Marshal(all)
	if err != nil {
		return body, false
	}
	return b, false
}

func legacyEvent(m *Meter, ev []byte) (drop bool) {
	if !bytes.Contains(ev, usageField) {
		return false
	}
	var chunk struct {
		Choices *[]json.RawMessage `json:"choices"`
		Usage   *wireUsage         `json:"usage"`
	}
	if json.Unmarshal(sseData(ev), &chunk) != nil || chunk.Usage == nil {
		return false
	}
	m.prompt, m.completion, m.seen = chunk.Usage.PromptTokens, chunk.Usage.CompletionTokens, true
	return m.Hide && chunk.Choices != nil && len(*chunk.Choices) == 0
}

var askCases = []string{
	`{"model":"m","stream":true}`, `{}`, ` { } `, `{"stream_options":{"include_usage":true}}`,
	`{"stream_options":{"include_usage":false},"model":"m"}`, `{"model":"m","stream_options":{"x":1}}`,
	`{"stream_options":{}}`, `{"stream_options":{ "include_usage" : null , "x":[1]} ,"model":"<b>&"}`,
	`{"stream_options":5}`, `{"stream_options":"x"}`, `[1]`, `{"a":`, `{"a":1}x`,
	`{"stream_options":{"include_usage":true,"include_usage":false}}`,
}

// askComparable: bodies where the old AskUsage was right. It mishandled
// a null stream_options (the member it added was overridden by the null),
// case variants of the key (which engines do not read) and repeated
// stream_options (merged, where engines take the last).
func askComparable(body []byte) bool {
	it := jsonscan.Members(body)
	n := 0
	for it.Next() {
		k, _ := jsonscan.Unquote(append(append([]byte{'"'}, it.Key()...), '"'))
		if strings.EqualFold(string(k), "stream_options") {
			if string(k) != "stream_options" || it.Kind() == jsonscan.Null {
				return false
			}
			n++
		}
	}
	return it.Err() == nil && n <= 1
}

func sameAsk(t *testing.T, body []byte) {
	t.Helper()
	got, gAsked := AskUsage(body)
	if !askComparable(body) {
		if !json.Valid(got) && json.Valid(body) {
			t.Fatalf("%s: upstream body %s is not JSON", body, got)
		}
		return
	}
	want, wAsked := legacyAskUsage(body)
	var g, w any
	gerr, werr := json.Unmarshal(got, &g), json.Unmarshal(want, &w)
	if gAsked != wAsked || (gerr == nil) != (werr == nil) || !reflect.DeepEqual(g, w) {
		t.Fatalf("%s:\n got %s %v\nwant %s %v", body, got, gAsked, want, wAsked)
	}
}

func TestAskUsageMatchesLegacy(t *testing.T) {
	for _, c := range askCases {
		sameAsk(t, []byte(c))
	}
	// The client's bytes are kept; the engine reads the member added.
	for body, want := range map[string]string{
		`{"model":"m","stream_options":{"x":1}}`:                 `{"model":"m","stream_options":{"x":1,"include_usage":true}}`,
		`{"stream_options":{"include_usage":false},"model":"m"}`: `{"stream_options":{"include_usage":true},"model":"m"}`,
		`{"stream_options":null,"model":"m"}`:                    `{"stream_options":{"include_usage":true},"model":"m"}`,
		`{"model":"m","stream_options":null}`:                    `{"stream_options":{"include_usage":true},"model":"m"}`,
		` {"stream_options":null} `:                              ` {"stream_options":{"include_usage":true}} `,
		`{"Stream_Options":{"include_usage":true}}`:              `{"stream_options":{"include_usage":true},"Stream_Options":{"include_usage":true}}`,
		`null`: `null`,
	} {
		if got, _ := AskUsage([]byte(body)); string(got) != want {
			t.Errorf("%s:\n got %s\nwant %s", body, got, want)
		}
	}
}

func FuzzAskUsageMatchesLegacy(f *testing.F) {
	for _, c := range askCases {
		f.Add(c)
	}
	f.Fuzz(func(t *testing.T, body string) { sameAsk(t, []byte(body)) })
}

var eventCases = []string{
	"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
	"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\": {\\\"prompt_tokens\\\":99}\"}}]}\n\n",
	"data: {\"choices\":[{\"x\":1}],\"usage\":{\"prompt_tokens\":3}}\n\n",
	"data: {\"choices\":null,\"usage\":{\"completion_tokens\":1.5}}\n\n",
	"data: {\"usage\":{\"prompt_tokens\":1},\"usage\":{\"completion_tokens\":2}}\n\n",
	"data: {\"usage\":{\"prompt_tokens\":1},\"usage\":null}\n\n",
	"data: {\"Usage\":{\"Prompt_Tokens\":7},\"choices\":5}\n\n",
	"data: {\"choices\":[],\n" + "data: \"usage\":{\"prompt_tokens\":3}}\r\n\r\n",
	"data: {\"usage\":\"x\"}\n\n", "data: [DONE]\n\n", "data: null\n\n", ": usage\n\n",
}

func sameEvent(t *testing.T, ev []byte, hide bool) {
	t.Helper()
	now, was := &Meter{Hide: hide}, &Meter{Hide: hide}
	gd, wd := now.Event(ev), legacyEvent(was, ev)
	if gd != wd || now.prompt != was.prompt || now.completion != was.completion || now.seen != was.seen {
		t.Fatalf("%q: drop %v %d/%d %v, was drop %v %d/%d %v", ev, gd, now.prompt, now.completion, now.seen, wd, was.prompt, was.completion, was.seen)
	}
	var b1, b2 Meter
	b1.Chunk(sseData(ev))
	b2.Chunk(sseData(ev))
	b2.parseBodyLegacy()
	if p1, c1, ok1 := b1.Usage(); p1 != b2.prompt || c1 != b2.completion || ok1 != b2.seen {
		t.Fatalf("%q as a body: %d/%d %v, was %d/%d %v", ev, p1, c1, ok1, b2.prompt, b2.completion, b2.seen)
	}
}

func (m *Meter) parseBodyLegacy() {
	var resp struct {
		Usage *wireUsage `json:"usage"`
	}
	if json.Unmarshal(m.body.Bytes(), &resp) == nil && resp.Usage != nil {
		m.prompt, m.completion, m.seen = resp.Usage.PromptTokens, resp.Usage.CompletionTokens, true
	}
}

func TestEventMatchesLegacy(t *testing.T) {
	for _, ev := range eventCases {
		sameEvent(t, []byte(ev), true)
		sameEvent(t, []byte(ev), false)
	}
}

func FuzzEventMatchesLegacy(f *testing.F) {
	for _, ev := range eventCases {
		f.Add(ev, true)
	}
	f.Fuzz(func(t *testing.T, ev string, hide bool) { sameEvent(t, []byte(ev), hide) })
}

// The meter adds one allocation to a streamed request (the upstream
// body) and none per event.
func TestMeterAllocations(t *testing.T) {
	body := []byte(`{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true}`)
	if n := testing.AllocsPerRun(100, func() { AskUsage(body) }); n > 1 {
		t.Errorf("AskUsage: %v allocations, want 1", n)
	}
	ev := []byte("data: {\"choices\":[],\"created\":1,\"id\":\"x\",\"usage\":{\"completion_tokens\":20,\"prompt_tokens\":74,\"total_tokens\":94}}\n\n")
	m := &Meter{Hide: true}
	if n := testing.AllocsPerRun(100, func() {
		if !m.Event(ev) {
			t.Fatal("usage chunk not hidden")
		}
	}); n != 0 {
		t.Errorf("Event: %v allocations, want 0", n)
	}
}

func BenchmarkAskUsage(b *testing.B) {
	body := []byte(`{"model":"tiny","messages":[{"role":"user","content":"` + strings.Repeat("Tell me about llorch. ", 200) + `"}],"stream":true}`)
	for _, impl := range []struct {
		name string
		ask  func([]byte) ([]byte, bool)
	}{{"scan", AskUsage}, {"encoding-json", legacyAskUsage}} {
		b.Run(fmt.Sprintf("%s/%dB", impl.name, len(body)), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				impl.ask(body)
			}
		})
	}
}
