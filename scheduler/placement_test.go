package scheduler

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/llorch/llorch/registry"
)

func chatBody(extra string, msgs ...[2]string) []byte {
	var parts []string
	for _, m := range msgs {
		parts = append(parts, fmt.Sprintf(`{"role":%q,"content":%q}`, m[0], m[1]))
	}
	return []byte(`{` + extra + `"messages":[` + strings.Join(parts, ",") + `]}`)
}

// The key and the block hashes come from the conversation, not its JSON:
// other field order, sampling settings or whitespace give the same; the
// next turn keeps the key and extends the hashes; another conversation on
// the same system prompt shares the leading blocks but not the key.
func TestPromptKeyCanonical(t *testing.T) {
	sys := [2]string{"system", strings.Repeat("You are a careful assistant. ", 20)}
	u1 := [2]string{"user", "What is the capital of France?"}
	a1 := [2]string{"assistant", "Paris."}
	u2 := [2]string{"user", "And of Italy?"}

	k1, h1 := PromptKey(chatBody(`"model":"m","stream":true,`, sys, u1))
	same := []byte(`{"messages" : [ {"content":` + fmt.Sprintf("%q", sys[1]) + `, "role":"system"},
		{"content":"What is the capital of France?","role":"user"}], "temperature":0.2, "model":"m"}`)
	k1b, h1b := PromptKey(same)
	if k1 == "" || k1 != k1b || !slices.Equal(h1, h1b) {
		t.Errorf("same conversation, other JSON: key %q vs %q, hashes equal %v", k1, k1b, slices.Equal(h1, h1b))
	}
	k2, h2 := PromptKey(chatBody(`"model":"m",`, sys, u1, a1, u2))
	if k2 != k1 {
		t.Errorf("second turn key %q, first %q: a conversation keeps its key", k2, k1)
	}
	if len(h2) < len(h1) || !slices.Equal(h2[:len(h1)-1], h1[:len(h1)-1]) {
		t.Errorf("second turn's blocks do not extend the first's")
	}
	// Conversations sharing a long system prompt share its key (they
	// can reuse it on one engine); without a long one, each has its own.
	k3, h3 := PromptKey(chatBody(``, sys, [2]string{"user", "Tell me a joke."}))
	if k3 != k1 || h3[0] != h1[0] {
		t.Errorf("other conversation, same long system prompt: key equal %v, first block shared %v", k3 == k1, h3[0] == h1[0])
	}
	short := [2]string{"system", "Be brief."}
	long1 := [2]string{"user", strings.Repeat("Tell me about rivers. ", 15)}
	long2 := [2]string{"user", strings.Repeat("Tell me about mountains. ", 15)}
	ka, _ := PromptKey(chatBody(``, short, long1))
	kb, _ := PromptKey(chatBody(``, short, long2))
	ka2, _ := PromptKey(chatBody(``, short, long1, [2]string{"assistant", "ok"}, [2]string{"user", "more"}))
	if ka == "" || ka == kb || ka != ka2 {
		t.Errorf("short system prompt: keys %q %q (later turn %q): want one per conversation, stable across turns", ka, kb, ka2)
	}
	// Only the turns up to the last user message are stable.
	k4, h4 := PromptKey(chatBody(``, sys, u1, a1, u2, [2]string{"assistant", strings.Repeat("partial ", 40)}))
	if k4 != k2 || !slices.Equal(h4, h2) {
		t.Errorf("a trailing assistant message changed the stable prefix")
	}
	// Content parts read like the string they hold.
	parts := []byte(`{"messages":[{"role":"system","content":[{"type":"text","text":` + fmt.Sprintf("%q", sys[1]) + `}]},{"role":"user","content":"What is the capital of France?"}]}`)
	if kp, _ := PromptKey(parts); kp == "" {
		t.Error("content parts: no key")
	}
	for _, bad := range []string{``, `{`, `{"messages":"x"}`, `{"prompt":3}`} {
		if k, h := PromptKey([]byte(bad)); k != "" || h != nil {
			t.Errorf("PromptKey(%q) = %q, %v; want none", bad, k, h)
		}
	}
	tk, th := PromptKey([]byte(`{"prompt":` + fmt.Sprintf("%q", strings.Repeat("abcdefgh", 40)) + `}`))
	if tk == "" || len(th) != 5 {
		t.Errorf("completions prompt: key %q, %d blocks", tk, len(th))
	}
}

// Consistent hashing with bounded load: a conversation's home is the same
// for two independent schedulers (two routers) given the same load; a home
// over (1+ε)× the mean passes the conversation to the next successor; and
// load stays within the bound over many conversations.
func TestCacheAffinityBoundedLoad(t *testing.T) {
	var list []registry.Instance
	for i := 0; i < 4; i++ {
		list = append(list, inst(fmt.Sprintf("i%d", i), fmt.Sprintf("n%d", i), "p", func(in *registry.Instance) { in.Slots = 100 }))
	}
	ix := index(list...)
	r1, r2 := def(t, NewPrefixTable(100)), def(t, NewPrefixTable(100))
	l := loads{}
	for k := 0; k < 200; k++ {
		req := Request{Model: "m", AffinityKey: fmt.Sprintf("conv-%d", k)}
		home := r1.Decide(req, ix, l).Ranked[0].ID
		if other := r2.Decide(req, ix, l).Ranked[0].ID; other != home {
			t.Fatalf("%s: router 1 → %s, router 2 → %s", req.AffinityKey, home, other)
		}
		// A little load elsewhere does not move it...
		l2 := loads{}
		for _, in := range list {
			l2[in.ID] = Load{Reported: true, SlotsBusy: 2}
		}
		l2[home] = Load{Reported: true, SlotsBusy: 3} // bound ⌈1.25 × 10/4⌉ = 4
		if got := r1.Decide(req, ix, l2).Ranked[0].ID; got != home {
			t.Fatalf("%s moved %s → %s with its home at 3 under the bound 4", req.AffinityKey, home, got)
		}
		// ...a home over the bound passes it on, the same way for both.
		l2[home] = Load{Reported: true, SlotsBusy: 6} // bound ⌈1.25 × 13/4⌉ = 5
		moved := r1.Decide(req, ix, l2).Ranked[0].ID
		if moved == home || moved != r2.Decide(req, ix, l2).Ranked[0].ID {
			t.Fatalf("%s over the bound: router 1 → %s, router 2 → %s (home %s)", req.AffinityKey, moved, r2.Decide(req, ix, l2).Ranked[0].ID, home)
		}
	}
	// Many conversations arriving one by one: no instance over the bound.
	l = loads{}
	for _, in := range list {
		l[in.ID] = Load{Reported: true}
	}
	for k := 0; k < 400; k++ {
		id := r1.Decide(Request{Model: "m", AffinityKey: fmt.Sprintf("c%d", k)}, ix, l).Ranked[0].ID
		ld := l[id]
		ld.SlotsBusy++
		l[id] = ld
	}
	for id, ld := range l {
		if ld.SlotsBusy > 125 {
			t.Errorf("%s carries %d of 400 (bound 1.25 × 100)", id, ld.SlotsBusy)
		}
	}
}

// Engine-reported figures are the capacity truth: an instance whose engine
// reports every slot busy is full even with nothing of this router in
// flight; and an engine whose reports stopped (stale) is ranked below any
// known load, never taken for idle.
func TestEngineLoadCapacityAndStale(t *testing.T) {
	a := inst("a", "n1", "p", func(in *registry.Instance) { in.Slots = 2 })
	b := inst("b", "n2", "p", func(in *registry.Instance) { in.Slots = 2 })
	ix := index(a, b)
	s := def(t, nil)
	full := loads{"a": {Reported: true, SlotsBusy: 2}, "b": {Reported: true, SlotsBusy: 1, Queue: 1}}
	if d := s.Decide(Request{Model: "m"}, ix, full); !d.Saturated {
		t.Errorf("engines report all slots busy: %+v, want saturated", d)
	}
	d := s.Decide(Request{Model: "m"}, ix, loads{"a": {Reported: true, SlotsBusy: 2}, "b": {Reported: true, SlotsBusy: 1}})
	if got, _ := d.Chosen(); got.ID != "b" || len(d.Ranked) != 1 {
		t.Errorf("a full by engine report: chose %v", ids(d.Ranked))
	}
	stale := loads{"a": {Stale: true}, "b": {Reported: true, SlotsBusy: 1, KVKnown: true, KVUsage: 0.5}}
	if got, _ := s.Decide(Request{Model: "m"}, ix, stale).Chosen(); got.ID != "b" {
		t.Errorf("stale a (load unknown) chosen over b with one busy slot")
	}
	// A stale instance's conversation goes elsewhere too: its bound
	// cannot be checked.
	for k := 0; k < 50; k++ {
		req := Request{Model: "m", AffinityKey: fmt.Sprint(k)}
		if got, _ := s.Decide(req, ix, stale).Chosen(); got.ID != "b" {
			t.Fatalf("conversation %d placed on stale a", k)
		}
	}
}
