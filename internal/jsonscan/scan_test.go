package jsonscan

import (
	"encoding/json"
	"strings"
	"testing"
)

// walk collects key=value pairs (raw) of an object, or the error.
func walk(doc string) ([]string, error) {
	it := Members([]byte(doc))
	var out []string
	for it.Next() {
		out = append(out, string(it.Key())+"="+string(it.Value())+":"+it.Kind().String())
	}
	return out, it.Err()
}

func TestMembers(t *testing.T) {
	got, err := walk(" {\"model\" : \"m\",\"stream\":true, \"n\":-1.5e+3,\"messages\":[{\"a\":[1,{}]}],\"x\":null,\"o\":{\"k\":\"v\"}} \n")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`model="m":string`, `stream=true:bool`, `n=-1.5e+3:number`, `messages=[{"a":[1,{}]}]:array`, `x=null:null`, `o={"k":"v"}:object`}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	if got, err := walk(`{}`); err != nil || len(got) != 0 {
		t.Fatalf("empty object: %v %v", got, err)
	}
	for _, bad := range []string{``, ` `, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1 "b":2}`, `{"a":1}x`, `{"a":1}{}`,
		`{"a":tru}`, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":1e}`, `{"a":"\x"}`, `{"a":"\u12"}`, "{\"a\":\"\x01\"}",
		`{"a":[1,]}`, `{"a":[1}`, `{"a":{"b":1]}`, `{a:1}`, `{"a":1]`, "{\"a\":\"x\"\u00a0}"} {
		if _, err := walk(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
		if json.Valid([]byte(bad)) {
			t.Errorf("test case %q is valid JSON", bad)
		}
	}
	for _, notObj := range []string{`[]`, `1`, `"x"`, `null`, ` [ {} ] `} {
		if _, err := walk(notObj); err != ErrNotContainer {
			t.Errorf("%q: %v, want ErrNotContainer", notObj, err)
		}
	}
}

func TestElementsAndSpans(t *testing.T) {
	doc := []byte(`[ 1, "two" ,{"three":3}, [] ]`)
	it := Elements(doc)
	var kinds []string
	for it.Next() {
		s, e := it.ValueSpan()
		if string(doc[s:e]) != string(it.Value()) || it.Key() != nil {
			t.Fatalf("span %d:%d", s, e)
		}
		kinds = append(kinds, it.Kind().String())
	}
	if it.Err() != nil || strings.Join(kinds, ",") != "number,string,object,array" || it.Open() != 0 || it.Close() != len(doc)-1 || it.Count() != 4 {
		t.Fatalf("%v %v open %d close %d count %d", it.Err(), kinds, it.Open(), it.Close(), it.Count())
	}
}

// encoding/json refuses documents nested deeper than 10000 levels; so
// does the scanner, at the same level.
func TestMaxDepth(t *testing.T) {
	for _, n := range []int{9999, 10000} { // arrays inside the top-level object
		doc := []byte(`{"a":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}`)
		_, err := walk(string(doc))
		if (err == nil) != json.Valid(doc) {
			t.Fatalf("depth %d: scanner err %v, json.Valid %v", n+1, err, json.Valid(doc))
		}
		if Valid(doc) != json.Valid(doc) {
			t.Fatalf("depth %d: Valid disagrees", n+1)
		}
	}
	if doc := []byte(`{"a":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`); !Valid(doc) {
		t.Fatal("10000 levels refused")
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`"plain"`, "plain"},
		{`"caf\u00e9 \"q\" \\ \/ \b\f\n\r\t"`, "café \"q\" \\ / \b\f\n\r\t"},
		{`"\ud83d\ude00"`, "😀"},
		{`"\ud83dx"`, "\uFFFDx"},
		{`"\ud83d\u0041"`, "\uFFFDA"},
		{`"\ude00"`, "\uFFFD"},
		{"\"\xff\xfe\"", "\uFFFD\uFFFD"},
		{"\"h\u00e9\"", "hé"},
	} {
		got, ok := Unquote([]byte(tc.in))
		var want string
		if err := json.Unmarshal([]byte(tc.in), &want); err != nil || !ok || string(got) != want || want != tc.want {
			t.Errorf("%s: got %q ok %v, encoding/json %q (%v), want %q", tc.in, got, ok, want, err, tc.want)
		}
	}
	if !KeyIs([]byte(`mod\u0065l`), "model") || KeyIs([]byte("Model"), "model") || !KeyIs([]byte("model"), "model") {
		t.Fatal("KeyIs")
	}
	for _, k := range []string{"model", "MODEL", `mod\u0045l`, "Model"} {
		if !KeyFold([]byte(k), "model") {
			t.Errorf("KeyFold(%s) false", k)
		}
	}
	if !KeyFold([]byte("\u017ftream"), "stream") || KeyFold([]byte("models"), "model") || KeyFold([]byte("mode"), "model") {
		t.Fatal("KeyFold: long s, or a prefix")
	}
	for in, want := range map[string]int64{"0": 0, "-0": 0, "42": 42, "9223372036854775807": 1<<63 - 1, "-9223372036854775808": -1 << 63} {
		if got, ok := Int([]byte(in)); !ok || got != want {
			t.Errorf("Int(%s) = %d %v", in, got, ok)
		}
	}
	for _, in := range []string{"1.0", "1e2", "9223372036854775808", "-9223372036854775809", "", "-", "12345678901234567890"} {
		if _, ok := Int([]byte(in)); ok {
			t.Errorf("Int(%s) accepted", in)
		}
	}
}

func TestCuts(t *testing.T) {
	for _, tc := range []struct{ in, cut, want string }{
		{`{"a":1,"b":2,"c":3}`, "b", `{"a":1,"c":3}`},
		{`{"a":1,"b":2,"c":3}`, "a", `{"b":2,"c":3}`},
		{`{"a":1,"b":2,"c":3}`, "c", `{"a":1,"b":2}`},
		{`{"a":1,"b":2,"c":3}`, "ab", `{"c":3}`},
		{`{"a":1,"b":2,"c":3}`, "ac", `{"b":2}`},
		{`{"a":1,"b":2,"c":3}`, "abc", `{}`},
		{`{ "a" : 1 , "b" : [2] , "c":3 }`, "b", `{ "a" : 1 , "c":3 }`},
		{`{ "a" : 1 , "b" : 2 }`, "a", `{ "b" : 2 }`},
		{`{"a":1,"a":2,"b":3,"a":4}`, "a", `{"b":3}`},
	} {
		doc := []byte(tc.in)
		it := Members(doc)
		var c Cuts
		for it.Next() {
			if strings.Contains(tc.cut, string(it.Key())) && !c.Add(&it) {
				t.Fatal("full")
			}
		}
		if it.Err() != nil {
			t.Fatal(it.Err())
		}
		if got := c.AppendTo(nil, doc); string(got) != tc.want || !json.Valid(got) {
			t.Errorf("%s cut %s: %s, want %s", tc.in, tc.cut, got, tc.want)
		}
		if tc.cut == "a" {
			if got := c.AppendFrom([]byte("{"), doc, 1); string(got) != tc.want {
				t.Errorf("%s AppendFrom: %s", tc.in, got)
			}
		}
		// In place, over the document's own bytes.
		inPlace := append([]byte(nil), doc...)
		if got := c.AppendTo(inPlace[:0], inPlace); string(got) != tc.want {
			t.Errorf("%s cut %s in place: %s", tc.in, tc.cut, got)
		}
	}
}

// The common path allocates nothing: walking a request body, reading its
// model and stream, matching keys and cutting a member into a buffer.
func TestNoAllocations(t *testing.T) {
	body := []byte(`{"model":"tiny","messages":[{"role":"user","content":"Tell me about \"llorch\".\n"}],"stream":true,"logprobs":null,"max_tokens":60}`)
	buf := make([]byte, 0, 256)
	n := testing.AllocsPerRun(200, func() {
		it := Members(body)
		var c Cuts
		for it.Next() {
			switch {
			case KeyFold(it.Key(), "model"):
				if s, ok := Unquote(it.Value()); !ok || len(s) == 0 {
					t.Fatal("model")
				}
			case KeyIs(it.Key(), "stream"):
				if !IsTrue(it.Value()) {
					t.Fatal("stream")
				}
			case KeyIs(it.Key(), "logprobs"):
				c.Add(&it)
			}
		}
		if it.Err() != nil || !Valid(body) {
			t.Fatal(it.Err())
		}
		buf = c.AppendTo(buf[:0], body)
		buf, _ = AppendString(buf[:0], []byte(`"esc\u00e9\n"`))
	})
	if n != 0 {
		t.Fatalf("%v allocations per walk, want 0", n)
	}
}

func BenchmarkMembers(b *testing.B) {
	body := []byte(`{"model":"tiny","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"` +
		strings.Repeat("Tell me about llorch. ", 200) + `"}],"max_tokens":60,"temperature":0,"stream":true}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		it := Members(body)
		for it.Next() {
		}
		if it.Err() != nil {
			b.Fatal(it.Err())
		}
	}
}
