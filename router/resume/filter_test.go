package resume

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/llorch/llorch/internal/jsonscan"
)

// fixtures are llama-server's own streams for requests as Prepare sends
// them (recorded by TestRecordFixtures).
var fixtures = map[string]Kind{
	"llama-chat.sse": Chat, "llama-chat-nousage.sse": Chat, "llama-chat-ascii.sse": Chat,
	"llama-completion.sse": Completion, "llama-completion-ascii.sse": Completion,
}

func fixtureEvents(t testing.TB, file string) [][]byte {
	b, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	var evs [][]byte
	for _, ev := range strings.SplitAfter(string(b), "\n\n") {
		if strings.TrimSpace(ev) != "" {
			evs = append(evs, []byte(ev))
		}
	}
	return evs
}

// state is everything a Stream has recorded.
func state(s *Stream) string {
	ok, why := s.Resumable()
	return fmt.Sprintf("id=%q object=%q model=%q fp=%q created=%d text=%q tokens=%v done=%v usage=%v prompt=%d role=%v finish=%v resumable=%v %q",
		s.ID, s.Object, s.Model, s.SystemFingerprint, s.Created, s.Text, s.Tokens, s.Done, s.UsageSent, s.promptTokens, s.roleSent, s.sawFinish, ok, why)
}

// decoded is an event's data as a Go value (nil: not JSON).
func decoded(ev []byte) any {
	d, _, _ := eventData(ev)
	var v any
	if json.Unmarshal(d, &v) != nil {
		return nil
	}
	return v
}

// onlyLogprobsCut reports whether out is the engine's event ev with one
// piece removed, and that piece is exactly a logprobs member and a comma.
func onlyLogprobsCut(ev, out []byte) bool {
	d := len(ev) - len(out)
	if d <= 0 {
		return false
	}
	for k := 0; k <= len(out) && bytes.Equal(ev[:k], out[:k]); k++ {
		if !bytes.Equal(ev[k+d:], out[k:]) {
			continue
		}
		piece := strings.Trim(string(ev[k:k+d]), ",")
		var m map[string]json.RawMessage
		if len(piece) == d-1 && json.Unmarshal([]byte("{"+piece+"}"), &m) == nil && len(m) == 1 && m["logprobs"] != nil {
			return true
		}
	}
	return false
}

// On llama-server's real streams the client sees what it saw when every
// event was decoded and re-encoded: the same JSON, event for event, and
// the stream records the same text, token ids and state. The bytes now
// are the engine's own with the logprobs member cut (the re-encoding
// sorted keys and escaped <, > and &).
func TestFilterMatchesLegacyOnLlamaServerEvents(t *testing.T) {
	for file, kind := range fixtures {
		t.Run(file, func(t *testing.T) {
			now, was := &Stream{Kind: kind, injected: true}, &Stream{Kind: kind, injected: true}
			stripped, sameBytes := 0, 0
			for i, ev := range fixtureEvents(t, file) {
				got := now.Filter(bytes.Clone(ev))
				want := was.legacyFilter(bytes.Clone(ev))
				if a, b := state(now), state(was); a != b {
					t.Fatalf("event %d: state\n got %s\nwant %s", i, a, b)
				}
				if bytes.Equal(want, ev) {
					if !bytes.Equal(got, ev) {
						t.Fatalf("event %d changed: %q", i, got)
					}
					continue
				}
				stripped++
				if bytes.Equal(got, want) {
					sameBytes++
				}
				if !reflect.DeepEqual(decoded(got), decoded(want)) || decoded(got) == nil {
					t.Fatalf("event %d: the client sees\n%s\nwas\n%s", i, got, want)
				}
				if !onlyLogprobsCut(ev, got) || !bytes.HasPrefix(got, []byte("data: {")) || !bytes.HasSuffix(got, []byte("}\n\n")) {
					t.Fatalf("event %d: more than the logprobs member changed:\n%s\n%s", i, ev, got)
				}
			}
			if stripped == 0 || len(now.Tokens) == 0 || len(now.Text) == 0 || !now.Finished() {
				t.Fatalf("the fixture exercised nothing: %d stripped, %s", stripped, state(now))
			}
			t.Logf("%d events stripped of logprobs, %d byte-identical to the re-encoding", stripped, sameBytes)
		})
	}
}

// Events in other framings (no space after "data:", CRLF, several data
// lines) lose their logprobs too, as one "data: " line of compact JSON.
func TestFilterOtherFramings(t *testing.T) {
	const want = `data: {"choices":[{"index":0,"delta":{"content":"a"}}],"id":"x"}` + "\n\n"
	for _, ev := range []string{
		`data:{"choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[{"id":7}]}}],"id":"x"}` + "\n\n",
		`data: {"choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[{"id":7}]}}],"id":"x"}` + "\r\n\r\n",
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\ndata: \"logprobs\":{\"content\":[{\"id\":7}]}}],\"id\":\"x\"}\n\n",
		`data: {"choices":[{"index":0,"logprobs":{"content":[{"id":7}]},"delta":{"content":"a"}}],"id":"x"}`,
		"event: message\n" + `data: {"choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[{"id":7}]}}],"id":"x"}` + "\n\n",
	} {
		s := &Stream{Kind: Chat, injected: true}
		got := s.Filter([]byte(ev))
		if !reflect.DeepEqual(decoded(got), decoded([]byte(want))) || !bytes.HasPrefix(got, []byte("data: {")) || bytes.Count(got, []byte("\n")) != 2 {
			t.Errorf("%q:\n got %q\nwant %q", ev, got, want)
		}
		if string(s.Text) != "a" || len(s.Tokens) != 1 || s.Tokens[0] != 7 {
			t.Errorf("%q: %s", ev, state(s))
		}
	}
}

// plainKeys: no object in doc repeats a key or spells a field the filter
// reads in other case. Decoding into Go structs merges repeated objects,
// which the filter (last one wins) does not copy; engines repeat nothing.
func plainKeys(doc []byte) bool {
	names := []string{"id", "object", "model", "system_fingerprint", "created", "usage", "choices", "index", "delta",
		"text", "logprobs", "finish_reason", "role", "content", "reasoning_content", "tool_calls", "prompt_tokens"}
	var walk func(v []byte, k jsonscan.Kind) bool
	walk = func(v []byte, k jsonscan.Kind) bool {
		if k != jsonscan.Object && k != jsonscan.Array {
			return true
		}
		it := jsonscan.Elements(v)
		if k == jsonscan.Object {
			it = jsonscan.Members(v)
		}
		var keys []string
		for it.Next() {
			if k == jsonscan.Object {
				key, _ := jsonscan.Unquote(append(append([]byte{'"'}, it.Key()...), '"'))
				for _, prev := range keys {
					if strings.EqualFold(prev, string(key)) {
						return false
					}
				}
				for _, n := range names {
					if strings.EqualFold(n, string(key)) && n != string(key) {
						return false
					}
				}
				keys = append(keys, string(key))
			}
			if !walk(it.Value(), it.Kind()) {
				return false
			}
		}
		return true
	}
	t := jsonscan.Trim(doc)
	return len(t) > 0 && walk(t, jsonscan.KindOf(t[0]))
}

func FuzzFilterMatchesLegacy(f *testing.F) {
	for file := range fixtures {
		for i, ev := range fixtureEvents(f, file) {
			if i < 3 {
				d, _, _ := eventData(ev)
				f.Add(string(d), file[6] == 'c')
			}
		}
	}
	for _, d := range []string{`{"choices":[{"index":"0","text":"a"}]}`, `{"choices":[{"logprobs":{"content":[null,{"id":null},{"id":1.5}]}}]}`,
		`{"choices":[{},{}],"usage":{"prompt_tokens":3}}`, `{"choices":[{"delta":{"tool_calls":[],"reasoning_content":"x"}}]}`, `null`, `[1]`} {
		f.Add(d, true)
	}
	f.Fuzz(func(t *testing.T, data string, chat bool) {
		if !json.Valid([]byte(data)) || !plainKeys([]byte(data)) || strings.ContainsAny(data, "\r\n") {
			return
		}
		kind := Completion
		if chat {
			kind = Chat
		}
		ev := []byte("data: " + data + "\n\n")
		now, was := &Stream{Kind: kind, injected: true}, &Stream{Kind: kind, injected: true}
		got, want := now.Filter(bytes.Clone(ev)), was.legacyFilter(bytes.Clone(ev))
		if a, b := state(now), state(was); a != b {
			t.Fatalf("state\n got %s\nwant %s", a, b)
		}
		if !reflect.DeepEqual(decoded(got), decoded(want)) {
			t.Fatalf("the client sees\n%s\nwas\n%s", got, want)
		}
	})
}

// A content event is read and edited without allocating (the stream's
// text and token buffers aside, which grow by doubling).
func TestFilterAllocations(t *testing.T) {
	evs := fixtureEvents(t, "llama-chat.sse")
	ev := evs[1]
	if !bytes.Contains(ev, []byte(`"logprobs"`)) {
		t.Fatalf("not a content event: %s", ev)
	}
	s := &Stream{Kind: Chat, injected: true, Text: make([]byte, 0, 64), Tokens: make([]int, 0, 8)}
	s.Filter(bytes.Clone(evs[0]))
	buf := make([]byte, len(ev))
	n := testing.AllocsPerRun(200, func() {
		copy(buf, ev)
		s.Text, s.Tokens = s.Text[:0], s.Tokens[:0]
		if out := s.Filter(buf); bytes.Contains(out, []byte("logprobs")) {
			t.Fatal("not stripped")
		}
	})
	if n != 0 {
		t.Fatalf("Filter: %v allocations per event, want 0", n)
	}
}

// BenchmarkFilter runs a whole recorded stream per op, from Prepare (the
// stream's buffers are sized there) through every event.
func BenchmarkFilter(b *testing.B) {
	for _, file := range []string{"llama-chat.sse", "llama-completion-ascii.sse"} {
		evs := fixtureEvents(b, file)
		size := 0
		for _, ev := range evs {
			size += len(ev)
		}
		kind := fixtures[file]
		body := []byte(fmt.Sprintf(`{"model":"tiny","prompt":"x","messages":[],"max_tokens":%d,"stream":true}`, len(evs)))
		for _, impl := range []struct {
			name    string
			prepare func(Kind, []byte) ([]byte, *Stream, error)
			filter  func(*Stream, []byte) []byte
		}{{"scan", Prepare, (*Stream).Filter}, {"encoding-json", legacyPrepare, (*Stream).legacyFilter}} {
			b.Run(fmt.Sprintf("%s/%s-%devents", impl.name, strings.TrimSuffix(file, ".sse"), len(evs)), func(b *testing.B) {
				buf := make([]byte, 0, 4096)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					_, s, err := impl.prepare(kind, body)
					if err != nil {
						b.Fatal(err)
					}
					for _, ev := range evs {
						buf = append(buf[:0], ev...) // the relay's own event buffer
						impl.filter(s, buf)
					}
				}
			})
		}
	}
}
