package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

// request is read both ways: by json.Unmarshal and by a walk.
type request struct {
	Model    *string         `json:"model"`
	Stream   *bool           `json:"stream"`
	User     *string         `json:"user"`
	N        *int64          `json:"n"`
	Messages json.RawMessage `json:"messages"`
}

// scanRequest reads request's fields as json.Unmarshal does: keys matched
// case-insensitively, the last occurrence winning, null clearing a
// pointer, and the first value of the wrong type reported (as field,
// value kind) — the way a caller of this package reproduces Unmarshal.
func scanRequest(doc []byte) (r request, typeErr string, err error) {
	it := Members(doc)
	bad := func(field, what string) {
		if typeErr == "" {
			typeErr = field + ":" + what
		}
	}
	str := func(field string) *string {
		switch it.Kind() {
		case String:
			s, ok := Unquote(it.Value())
			if !ok {
				panic("Unquote refused a valid string")
			}
			v := string(s)
			return &v
		case Null:
			return nil
		}
		bad(field, it.Kind().String())
		return nil
	}
	for it.Next() {
		switch k := it.Key(); {
		case KeyFold(k, "model"):
			r.Model = str("model")
		case KeyFold(k, "user"):
			r.User = str("user")
		case KeyFold(k, "stream"):
			switch it.Kind() {
			case Bool:
				v := IsTrue(it.Value())
				r.Stream = &v
			case Null:
				r.Stream = nil
			default:
				bad("stream", it.Kind().String())
			}
		case KeyFold(k, "n"):
			switch it.Kind() {
			case Number:
				if n, ok := Int(it.Value()); ok {
					r.N = &n
				} else {
					bad("n", "number "+string(it.Value()))
				}
			case Null:
				r.N = nil
			default:
				bad("n", it.Kind().String())
			}
		case KeyFold(k, "messages"):
			r.Messages = append(json.RawMessage(nil), it.Value()...)
		}
	}
	return r, typeErr, it.Err()
}

func show(p any) string {
	b, _ := json.Marshal(p)
	return string(b)
}

func FuzzScanMatchesEncodingJSON(f *testing.F) {
	for _, s := range []string{
		`{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true,"user":"u1","n":1}`,
		`{"MODEL":"a","Model":"b","model":null}`, `{"ſtream":true,"mod\u0065l":"x\ud83d\ude00"}`,
		`{"model":1}`, `{"stream":"yes","model":[1]}`, `{"n":1.5}`, `{"n":99999999999999999999}`, `{"user":{"a":1}}`,
		`{"model":"a\u00e9\n\"","messages":null}`, "{\"model\":\"\xff\"}", `[1]`, `null`, `"x"`, ` {} `,
		`{"a":[[[[{"b":[]}]]]]}`, `{"a":1}x`, `{"a":}`, `{"a":"\u12"}`, `{"a":-0.0e-0}`, `{"model":"\ud800\u0041"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		valid := json.Valid(doc)
		if Valid(doc) != valid {
			t.Fatalf("Valid %v, json.Valid %v", !valid, valid)
		}
		got, typeErr, err := scanRequest(doc)
		if !valid {
			if err == nil || errors.Is(err, ErrNotContainer) {
				t.Fatalf("invalid JSON walked without a syntax error (%v)", err)
			}
			return
		}
		var want request
		uerr := json.Unmarshal(doc, &want)
		if t0 := bytes.TrimLeft(doc, " \t\r\n"); t0[0] != '{' {
			if !errors.Is(err, ErrNotContainer) {
				t.Fatalf("a valid non-object: %v, want ErrNotContainer", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("valid object refused: %v", err)
		}
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(uerr, &te):
			if w := te.Field + ":" + te.Value; typeErr != w {
				t.Fatalf("type error %q, encoding/json %q", typeErr, w)
			}
		case uerr != nil:
			t.Fatalf("encoding/json: %v", uerr)
		case typeErr != "":
			t.Fatalf("type error %q that encoding/json did not see", typeErr)
		default:
			if g, w := show(got), show(want); g != w || !bytes.Equal(got.Messages, want.Messages) {
				t.Fatalf("scanned %s\n   want %s", fmt.Sprint(g, string(got.Messages)), fmt.Sprint(w, string(want.Messages)))
			}
		}
	})
}

// sameSub: the trusted walk of a value finds what a validating one does.
func sameSub(t *testing.T, it *Iter) {
	t.Helper()
	sub, full := it.Sub(), Elements(it.Value())
	if it.Kind() == Object {
		full = Members(it.Value())
	}
	for {
		a, b := sub.Next(), full.Next()
		if a != b {
			t.Fatalf("%s: Sub and a full walk disagree on the count", it.Value())
		}
		if !a {
			break
		}
		s1, e1 := sub.MemberSpan()
		s2, e2 := full.MemberSpan()
		if string(sub.Key()) != string(full.Key()) || string(sub.Value()) != string(full.Value()) || sub.Kind() != full.Kind() || s1 != s2 || e1 != e2 {
			t.Fatalf("%s: Sub read %s=%s, a full walk %s=%s", it.Value(), sub.Key(), sub.Value(), full.Key(), full.Value())
		}
	}
	if sub.Err() != nil || full.Err() != nil || sub.Close() != full.Close() {
		t.Fatalf("%s: errors %v %v", it.Value(), sub.Err(), full.Err())
	}
}

// FuzzStrings: every string a walk finds (keys and values, at any depth)
// decodes as encoding/json decodes it, and Sub walks agree with full ones.
func FuzzStrings(f *testing.F) {
	for _, s := range []string{`{"a\"b":["c\u00e9","\ud83d\ude00\ud83d"]}`, `[{"a\\":"\\\"}\\"},[1,-2.5e3,true,null,{}]]`, "[\"\xed\xa0\x80\",\"\\ud800\\udbff\"]", `{"x":{"y":"\\\/"}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		if !json.Valid(doc) {
			return
		}
		var check func(v []byte, k Kind)
		check = func(v []byte, k Kind) {
			switch k {
			case String:
				var want string
				if err := json.Unmarshal(v, &want); err != nil {
					t.Fatal(err)
				}
				got, ok := Unquote(v)
				app, ok2 := AppendString([]byte("pre"), v)
				if !ok || !ok2 || string(got) != want || string(app) != "pre"+want {
					t.Fatalf("%s: %q / %q, want %q", v, got, app, want)
				}
			case Number:
				var want int64
				werr := json.Unmarshal(v, &want)
				got, ok := Int(v)
				if ok != (werr == nil) || got != want {
					t.Fatalf("Int(%s) = %d %v; encoding/json %d %v", v, got, ok, want, werr)
				}
			case Object, Array:
				it := Elements(v)
				if k == Object {
					it = Members(v)
				}
				for it.Next() {
					if k == Object {
						check(append(append([]byte{'"'}, it.Key()...), '"'), String)
					}
					if it.Kind() == Object || it.Kind() == Array {
						sameSub(t, &it)
					}
					check(it.Value(), it.Kind())
				}
				if it.Err() != nil {
					t.Fatalf("a valid %s: %v", k, it.Err())
				}
			}
		}
		t0 := Trim(doc)
		check(t0, KindOf(t0[0]))
	})
}
