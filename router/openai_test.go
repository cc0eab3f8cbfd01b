package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/llorch/llorch/internal/apierr"
)

// parseRequestJSON is parseRequest as it was, on encoding/json: the
// reference the scanning one must answer exactly like.
func parseRequestJSON(path string, body []byte) (openAIRequest, *apierr.Error) {
	var req struct {
		Model    *string  `json:"model"`
		Stream   *bool    `json:"stream"`
		User     *string  `json:"user"`
		Messages presence `json:"messages"`
		Prompt   presence `json:"prompt"`
		Input    presence `json:"input"`
	}
	out := func() openAIRequest {
		return openAIRequest{Model: req.Model, Stream: req.Stream, User: req.User,
			Messages: bool(req.Messages), Prompt: bool(req.Prompt), Input: bool(req.Input)}
	}
	bad := func(param, msg string) *apierr.Error {
		return &apierr.Error{Status: http.StatusBadRequest, Code: CodeInvalidParams, Param: param, Message: msg}
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return out(), bad("", "request body must be a JSON object")
	}
	if err := json.Unmarshal(body, &req); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			kind := te.Type.Kind().String()
			switch kind {
			case "bool":
				kind = "boolean"
			case "ptr":
				kind = "string"
			}
			return out(), bad(te.Field, fmt.Sprintf("field %q must be a %s, not a JSON %s", te.Field, kind, te.Value))
		}
		return out(), bad("", "request body is not valid JSON: "+err.Error())
	}
	if req.Model == nil || *req.Model == "" {
		return out(), bad("model", `field "model" is required (a non-empty string)`)
	}
	need := requiredField[path]
	have := map[string]presence{"messages": req.Messages, "prompt": req.Prompt, "input": req.Input}[need]
	if need != "" && !bool(have) {
		return out(), bad(need, fmt.Sprintf("field %q is required on %s", need, path))
	}
	return out(), nil
}

type presence bool

func (p *presence) UnmarshalJSON(b []byte) error {
	*p = presence(len(b) > 0 && string(b) != "null")
	return nil
}

// sameAnswer compares the two parsers' results: the error exactly; on
// success the fields the router reads.
func sameAnswer(t *testing.T, path string, body []byte) {
	t.Helper()
	got, gerr := parseRequest(path, body)
	want, werr := parseRequestJSON(path, body)
	if !reflect.DeepEqual(gerr, werr) {
		t.Fatalf("%s %q:\n got error %+v\nwant error %+v", path, body, gerr, werr)
	}
	if werr != nil {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s %q:\n got %s\nwant %s", path, body, show(got), show(want))
	}
}

func show(r openAIRequest) string {
	s := func(p *string) string {
		if p == nil {
			return "nil"
		}
		return fmt.Sprintf("%q", *p)
	}
	b := "nil"
	if r.Stream != nil {
		b = fmt.Sprint(*r.Stream)
	}
	return fmt.Sprintf("model=%s stream=%s user=%s messages=%v prompt=%v input=%v", s(r.Model), b, s(r.User), r.Messages, r.Prompt, r.Input)
}

var parseCases = []string{
	`{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":true,"user":"u"}`,
	`{"model":"tiny","prompt":"x"}`, `{"model":"tiny","input":["a","b"]}`, `{"model":"tiny","messages":null}`,
	`{"model":1}`, `{"model":true,"messages":[]}`, `{"model":"m","stream":"yes"}`, `{"model":"m","stream":1}`,
	`{"model":"m","user":{"id":1}}`, `{"model":"m","user":["u"]}`, `{"stream":[true],"model":2}`,
	`{"model":"x","model":null,"messages":[]}`, `{"model":"x","model":1,"messages":[]}`, `{"MODEL":"Up","messages":[]}`,
	`{"mod\u0065l":"esc\n\u00e9","ſtream":false,"messages":[]}`, `{"model":"","messages":[]}`, `{"messages":"x"}`,
	`[1]`, ``, `   `, `{`, `{"model":"m",}`, `{"model":"m"} x`, `{"model":"m","messages":[1,]}`, `nul`,
	"{\"model\":\"\xff\xfe\",\"messages\":[]}", `{"model":"m","stream":null,"stream":true,"messages":{}}`,
	" \n{\"model\" : \"m\" , \"prompt\" : [1,2,3] }\n", `{"model":"m","messages":[],"x":{"model":1}}`,
}

func TestParseRequestMatchesEncodingJSON(t *testing.T) {
	for _, body := range parseCases {
		for _, path := range []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings", pathResponses, "/v1/other"} {
			sameAnswer(t, path, []byte(body))
		}
	}
	// The messages the SDKs show, spelled out.
	for body, want := range map[string]string{
		`{"model":1}`:                   `field "model" must be a string, not a JSON number`,
		`{"model":"m","stream":"yes"}`:  `field "stream" must be a boolean, not a JSON string`,
		`{"model":"m","user":false}`:    `field "user" must be a string, not a JSON bool`,
		`{"model":"m","messages":[1,]}`: `request body is not valid JSON: invalid character ']' looking for beginning of value`,
		`{"model":"m","messages":[1]`:   `request body is not valid JSON: unexpected end of JSON input`,
		`{"messages":[]}`:               `field "model" is required (a non-empty string)`,
		`{"model":"m"}`:                 `field "messages" is required on /v1/chat/completions`,
		`[{"model":"m","messages":[]}]`: `request body must be a JSON object`,
	} {
		_, e := parseRequest("/v1/chat/completions", []byte(body))
		if e == nil || e.Message != want || e.Status != 400 || e.Code != CodeInvalidParams {
			t.Errorf("%s: %+v, want %q", body, e, want)
		}
	}
}

func FuzzParseRequestMatchesEncodingJSON(f *testing.F) {
	for _, c := range parseCases {
		f.Add(c, uint8(0))
	}
	paths := []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings", pathMessages, "/v1/x"}
	f.Fuzz(func(t *testing.T, body string, p uint8) {
		sameAnswer(t, paths[int(p)%len(paths)], []byte(body))
	})
}

// A routed request costs parseRequest two allocations (the pointers'
// home and the strings' bytes), whatever the size of the prompt.
func TestParseRequestAllocations(t *testing.T) {
	body := benchBody(200)
	n := testing.AllocsPerRun(100, func() {
		if _, e := parseRequest("/v1/chat/completions", body); e != nil {
			t.Fatal(e)
		}
	})
	if n > 2 {
		t.Fatalf("parseRequest: %v allocations, want at most 2", n)
	}
}

// benchBody is a chat request whose user message repeats a sentence n
// times.
func benchBody(n int) []byte {
	return []byte(`{"model":"tiny","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"` +
		strings.Repeat(`Tell me about \"llorch\". `, n) + `"}],"max_tokens":60,"temperature":0,"stream":true,"user":"u-1"}`)
}

func BenchmarkParseRequest(b *testing.B) {
	for _, size := range []int{1, 200} {
		body := benchBody(size)
		for _, impl := range []struct {
			name  string
			parse func(string, []byte) (openAIRequest, *apierr.Error)
		}{{"scan", parseRequest}, {"encoding-json", parseRequestJSON}} {
			b.Run(fmt.Sprintf("%s/%dB", impl.name, len(body)), func(b *testing.B) {
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					if _, e := impl.parse("/v1/chat/completions", body); e != nil {
						b.Fatal(e)
					}
				}
			})
		}
	}
}
