package keys

import (
	"strings"
	"testing"
	"time"
)

func mkKey(t testing.TB, name, secret string) Key {
	t.Helper()
	return Key{Name: name, Digest: DigestOf(secret)}
}

func TestLookupFindsOnlyTheSecret(t *testing.T) {
	a, b := mkKey(t, "team-a", "secret-a"), mkKey(t, "team-b", "secret-b")
	a.Models = []string{"llama-*"}
	s, err := NewSet([]Key{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := s.Lookup("secret-a"); !ok || k.Name != "team-a" {
		t.Fatalf("secret-a: %v %v", k, ok)
	}
	for _, bad := range []string{"", "secret-", "secret-c", "secret-a ", DigestOf("secret-a"), strings.TrimPrefix(DigestOf("secret-a"), "sha256:")} {
		if k, ok := s.Lookup(bad); ok {
			t.Fatalf("%q found %s", bad, k.Name)
		}
	}
	k := s.Get("team-a")
	if !k.Allows("llama-7b") || k.Allows("mistral") || !s.Get("team-b").Allows("anything") {
		t.Fatal("model globs")
	}
	if k.Fingerprint() != DigestOf("secret-a")[7:13] {
		t.Fatal("fingerprint")
	}
}

func TestSetRejectsBadKeys(t *testing.T) {
	good := mkKey(t, "ok", "s")
	for name, k := range map[string]Key{
		"name":     {Name: "Team A", Digest: good.Digest},
		"digest":   {Name: "x", Digest: "s"},
		"raw hex":  {Name: "x", Digest: good.Digest[7:]},
		"glob":     {Name: "x", Digest: good.Digest, Models: []string{"["}},
		"priority": {Name: "x", Digest: good.Digest, Priority: "urgent"},
		"limit":    {Name: "x", Digest: good.Digest, RPM: -1},
	} {
		if _, err := NewSet([]Key{k}); err == nil {
			t.Errorf("%s: accepted %+v", name, k)
		}
	}
	if _, err := NewSet([]Key{good, mkKey(t, "ok", "t")}); err == nil {
		t.Error("duplicate name accepted")
	}
	if _, err := NewSet([]Key{good, mkKey(t, "other", "s")}); err == nil {
		t.Error("duplicate secret accepted")
	}
}

func TestParseFileYAMLAndJSONStrict(t *testing.T) {
	d := DigestOf("x")
	y := "keys:\n  - name: a\n    digest: " + d + "\n    rpm: 5\n    expires: 2030-01-02T03:04:05Z\n"
	f, err := ParseFile([]byte(y))
	if err != nil || len(f.Keys) != 1 || f.Keys[0].RPM != 5 || f.Keys[0].Expires.Year() != 2030 {
		t.Fatalf("yaml: %+v %v", f, err)
	}
	j := `{"keys":[{"name":"a","digest":"` + d + `","tpm":7}]}`
	if f, err := ParseFile([]byte(j)); err != nil || f.Keys[0].TPM != 7 {
		t.Fatalf("json: %+v %v", f, err)
	}
	if _, err := ParseFile([]byte("keys:\n  - name: a\n    digest: " + d + "\n    rpn: 5\n")); err == nil {
		t.Fatal("a misspelt limit was accepted")
	}
	// An empty file (one being rewritten in place) must not revoke every
	// key; "keys: []" says "none" on purpose.
	if _, err := ParseFile([]byte(" \n")); err == nil {
		t.Fatal("an empty keys file was accepted")
	}
	if f, err := ParseFile([]byte("keys: []\n")); err != nil || len(f.Keys) != 0 {
		t.Fatalf("keys: []: %+v %v", f, err)
	}
}

func TestUsableSaysWhy(t *testing.T) {
	past := time.Now().Add(-time.Minute)
	k := Key{Name: "a", Expires: &past}
	if c, _ := k.Usable(time.Now()); c != CodeKeyExpired {
		t.Fatal(c)
	}
	k.Disabled = true
	if c, _ := k.Usable(time.Now()); c != CodeKeyDisabled {
		t.Fatal(c)
	}
}

// fakeClock drives Limits in tests.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestRPMLimitAtTheRightCountWithRetryAfter(t *testing.T) {
	clk := &fakeClock{time.Unix(1_000_000, 0)}
	l := NewLimits(time.Minute)
	l.now = clk.now
	k := &Key{Name: "a", RPM: 10}
	for i := 0; i < 10; i++ {
		a, ref := l.Admit(k)
		if ref != nil {
			t.Fatalf("request %d refused: %v", i+1, ref)
		}
		a.Charge(0)
		clk.t = clk.t.Add(time.Second)
	}
	_, ref := l.Admit(k)
	if ref == nil || ref.Limit != "rpm" {
		t.Fatalf("11th request: %v", ref)
	}
	// The first request leaves the window 60 s after it was made, 50 s
	// from now (to the resolution of a bucket, 1 s).
	if ref.RetryAfter < 49*time.Second || ref.RetryAfter > 51*time.Second {
		t.Fatalf("Retry-After %v, want about 50s", ref.RetryAfter)
	}
	clk.t = clk.t.Add(ref.RetryAfter)
	if _, ref := l.Admit(k); ref != nil {
		t.Fatalf("after Retry-After: %v", ref)
	}
	// ... and only one.
	a, _ := l.Admit(k)
	if a != nil {
		t.Fatal("over the limit yet admitted")
	}
}

func TestRefundCostsNothing(t *testing.T) {
	l := NewLimits(time.Minute)
	k := &Key{Name: "a", RPM: 1, Concurrent: 1}
	a, ref := l.Admit(k)
	if ref != nil {
		t.Fatal(ref)
	}
	a.Refund()
	a, ref = l.Admit(k)
	if ref != nil {
		t.Fatalf("after a refund: %v", ref)
	}
	a.Charge(5)
	if _, ref := l.Admit(k); ref == nil {
		t.Fatal("second request within the minute admitted")
	}
}

func TestTPMChargesAfterTheAnswer(t *testing.T) {
	clk := &fakeClock{time.Unix(2_000_000, 0)}
	l := NewLimits(time.Minute)
	l.now = clk.now
	k := &Key{Name: "a", TPM: 100}
	for i := 0; i < 3; i++ { // 3 × 40 tokens: the third is admitted at 80 < 100
		a, ref := l.Admit(k)
		if ref != nil {
			t.Fatalf("request %d: %v", i+1, ref)
		}
		a.Charge(40)
	}
	_, ref := l.Admit(k)
	if ref == nil || ref.Limit != "tpm" || ref.RetryAfter <= 0 || ref.RetryAfter > time.Minute+time.Minute/slots {
		t.Fatalf("at 120 of 100 tokens: %v", ref)
	}
}

func TestConcurrentAndRouterShare(t *testing.T) {
	l := NewLimits(time.Minute)
	k := &Key{Name: "a", Concurrent: 4, RPM: 10}
	var held []*Admission
	for i := 0; i < 4; i++ {
		a, ref := l.Admit(k)
		if ref != nil {
			t.Fatalf("%d: %v", i, ref)
		}
		held = append(held, a)
	}
	if _, ref := l.Admit(k); ref == nil || ref.Limit != "concurrent" {
		t.Fatalf("5th at once: %v", ref)
	}
	held[0].Charge(0)
	if _, ref := l.Admit(k); ref != nil {
		t.Fatalf("after one ended: %v", ref)
	}
	// Two routers: each takes half of everything.
	l2 := NewLimits(time.Minute)
	l2.SetRouters(2)
	n := 0
	for {
		a, ref := l2.Admit(&Key{Name: "b", RPM: 10})
		if ref != nil {
			if !strings.Contains(ref.Error(), "share is 5") {
				t.Fatalf("refusal does not name the share: %v", ref)
			}
			break
		}
		a.Charge(0)
		n++
	}
	if n != 5 {
		t.Fatalf("admitted %d of rpm 10 on one of 2 routers, want 5", n)
	}
}

func TestAskUsageAndMeterHide(t *testing.T) {
	out, asked := AskUsage([]byte(`{"model":"m","stream":true}`))
	if asked || string(out) != `{"stream_options":{"include_usage":true},"model":"m","stream":true}` {
		t.Fatalf("%s %v", out, asked)
	}
	if out, asked := AskUsage([]byte(`{"stream_options":{"include_usage":true}}`)); !asked || !strings.Contains(string(out), "true") {
		t.Fatal("client's own include_usage")
	}
	out, _ = AskUsage([]byte(`{"stream_options":{"x":1},"model":"m"}`))
	if !strings.Contains(string(out), `"include_usage":true`) || !strings.Contains(string(out), `"x":1`) {
		t.Fatalf("merge: %s", out)
	}
	var sb strings.Builder
	m := &Meter{Hide: true}
	w := m.Writer(&sb, true)
	for _, ev := range []string{
		"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\": {\\\"prompt_tokens\\\":99}\"}}]}\n\n",
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
		"data: [DONE]\n\n",
	} {
		if _, err := w.Write([]byte(ev)); err != nil {
			t.Fatal(err)
		}
	}
	if p, c, ok := m.Usage(); !ok || p != 3 || c != 4 {
		t.Fatalf("usage %d %d %v", p, c, ok)
	}
	if strings.Contains(sb.String(), "completion_tokens") || !strings.Contains(sb.String(), "[DONE]") {
		t.Fatalf("relayed: %q", sb.String())
	}
	m2 := &Meter{}
	w = m2.Writer(&sb, false)
	w.Write([]byte(`{"choices":[{"message":{"content":"x"}}],`))
	w.Write([]byte(`"usage":{"prompt_tokens":5,"completion_tokens":6}}`))
	if p, c, ok := m2.Usage(); !ok || p != 5 || c != 6 {
		t.Fatalf("body usage %d %d %v", p, c, ok)
	}
}
