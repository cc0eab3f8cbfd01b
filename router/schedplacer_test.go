package router

import (
	"fmt"
	"strings"
	"testing"
)

// OpenAI requests go through the scheduler: the same X-Session-Id (or body
// "user") lands on the same instance every time, and different sessions
// spread over the instances.
func TestSchedulerSessionAffinityThroughRouter(t *testing.T) {
	var fx []*fixtureRef
	h0, u0 := startFixture(t)
	h1, u1 := startFixture(t)
	h2, u2 := startFixture(t)
	fx = append(fx, &fixtureRef{h0.Requests}, &fixtureRef{h1.Requests}, &fixtureRef{h2.Requests})
	h := newHarness(t, nil, inst(t, "a", "n1", testModel, u0), inst(t, "b", "n2", testModel, u1), inst(t, "c", "n3", testModel, u2))
	counts := func() string {
		var s []string
		for _, f := range fx {
			s = append(s, fmt.Sprint(f.n()))
		}
		return strings.Join(s, ",")
	}
	for i := 0; i < 6; i++ {
		if st, _, body := h.do("POST", "/v1/chat/completions", chatBody(testModel, false), "X-Session-Id", "session-42"); st != 200 {
			t.Fatalf("status %d: %s", st, body)
		}
	}
	got := counts()
	if got != "6,0,0" && got != "0,6,0" && got != "0,0,6" {
		t.Fatalf("one session spread over instances: %s", got)
	}
	for i := 0; i < 30; i++ {
		h.do("POST", "/v1/chat/completions", chatBody(testModel, false), "X-Session-Id", fmt.Sprintf("s-%d", i))
	}
	for _, f := range fx {
		if f.n() == 0 {
			t.Fatalf("30 sessions never reached one instance: %s", counts())
		}
	}
	// Pinning through the body's "user" works the same way.
	before := counts()
	body := `{"model":"` + testModel + `","user":"alice","messages":[{"role":"user","content":"hi"}]}`
	for i := 0; i < 4; i++ {
		h.do("POST", "/v1/chat/completions", body)
	}
	after := counts()
	changed := 0
	for i := range fx {
		if strings.Split(before, ",")[i] != strings.Split(after, ",")[i] {
			changed++
		}
	}
	if changed != 1 {
		t.Errorf("user alice spread: %s → %s", before, after)
	}
}

type fixtureRef struct{ n func() int64 }
