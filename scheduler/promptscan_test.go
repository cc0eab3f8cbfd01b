package scheduler

import (
	"slices"
	"strings"
	"testing"
)

var long = strings.Repeat("You are a careful assistant. ", 20)

var promptBodies = []string{
	`{"model":"m","messages":[{"role":"system","content":"` + long + `"},{"role":"user","content":"hi"}]}`,
	`{"model":"m","messages":[{"role":"user","content":"` + long + `"},{"role":"assistant","content":"ok"},{"role":"user","content":"more"}]}`,
	`{"messages":[{"role":"user","content":"short"}]}`,
	`{"messages":[{"role":"assistant","content":"` + long + `"}]}`,
	`{"messages":[{"Role":"user","CONTENT":"` + long + `","name":"bob"}]}`,
	`{"messages":[{"role":"user","content":"` + long + `"},{"role":"user","content":null,"tool_calls":null}]}`,
	`{"messages":[null,{"role":"user","content":"` + long + `"}]}`,
	`{"messages":[{"role":"\u0075ser","content":"caf\u00e9 ` + long + `"}]}`,
	`{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}],"messages":[{"role":"user","content":"` + long + `"}]}`,
	`{"messages":[],"prompt":"` + long + `"}`,
	`{"prompt":"` + long + `"}`,
	`{"prompt":["` + long + `"]}`,
	`{"prompt":null}`,
	`{"messages":"nope"}`,
	`{"messages":[{"role":"user","content":[{"type":"text","text":"` + long + `"}]}]}`,
	`{"messages":[{"role":"user","content":"` + long + `","tool_calls":[{"id":"1"}]}]}`,
	`{"messages":[{"role":1,"content":"x"}]}`,
	`{"messages":[{"role":"user","content":"` + long + `"}]`,
	`not json`,
	`{}`,
}

// The scanning path gives PromptKey's decoded answer on every shape it
// takes, and hands the others to the decoder.
func TestPromptKeyScanMatchesDecoding(t *testing.T) {
	scanned := 0
	for _, b := range promptBodies {
		k, h := promptKeyDecoded([]byte(b))
		sk, sh, ok := promptKeyScan([]byte(b))
		if !ok {
			continue
		}
		scanned++
		if sk != k || !slices.Equal(sh, h) {
			t.Errorf("%.80s: scan %q %v, decode %q %v", b, sk, sh, k, h)
		}
	}
	if scanned < 12 {
		t.Errorf("only %d of %d bodies took the scanning path", scanned, len(promptBodies))
	}
}

func TestPromptKeyScanAllocations(t *testing.T) {
	body := []byte(promptBodies[0])
	if k, _ := PromptKey(body); k == "" {
		t.Fatal("no key for a long system prompt")
	}
	// The key and the hashes.
	if n := testing.AllocsPerRun(100, func() { PromptKey(body) }); n > 2 {
		t.Errorf("PromptKey allocates %.0f times, want ≤ 2", n)
	}
	short := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	if n := testing.AllocsPerRun(100, func() { PromptKey(short) }); n > 0 {
		t.Errorf("PromptKey on a short prompt allocates %.0f times, want 0", n)
	}
}

func FuzzPromptKeyScanMatchesDecoding(f *testing.F) {
	for _, b := range promptBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sk, sh, ok := promptKeyScan(b)
		if !ok {
			return
		}
		k, h := promptKeyDecoded(b)
		if sk != k || !slices.Equal(sh, h) {
			t.Fatalf("%q: scan %q %v, decode %q %v", b, sk, sh, k, h)
		}
	})
}
