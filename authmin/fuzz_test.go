package authmin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// Hostile Authorization headers seen in the wild or built to hit edge
// cases; the corpus seeds both fuzz targets.
var hostileHeaders = []string{
	"", "Bearer", "Bearer ", "bearer x", "Bearer\tx", "Bearer  x  ", "Bearer x\x00y",
	"Bearer x\r\nX-Injected: 1", "Bearer \xff\xfe", "Bearer " + strings.Repeat("A", 8193),
	"Basic Zm9vOmJhcg==", "Bearer Bearer x", " \t Bearer x", "Bearer x\u2028y", "Bearer \u00a0x",
	"Bearer " + goodToken, "Bearer " + goodToken + " ", "Bearer " + goodToken[:len(goodToken)-1],
}

func FuzzParseBearer(f *testing.F) {
	for _, h := range hostileHeaders {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, header string) {
		tok, err := ParseBearer(header)
		if err != nil {
			if tok != "" {
				t.Fatalf("error %v with a token", err)
			}
			if errors.Is(err, ErrMissing) != (strings.TrimFunc(header, unicode.IsSpace) == "") {
				t.Fatalf("header %q: ErrMissing is for blank headers only, got %v", header, err)
			}
			// The fuzzed string as a token: when it is one a client may
			// send, ParseBearer must return exactly it, whatever
			// whitespace surrounds it.
			if wellFormedToken(header) {
				for _, h := range []string{"Bearer " + header, " \tBearer  " + header + " \r\n"} {
					if got, err := ParseBearer(h); err != nil || got != header {
						t.Fatalf("ParseBearer(%q) = %q, %v; want the token %q", h, got, err, header)
					}
				}
			}
			return
		}
		// Accepted: the header is whitespace, "Bearer", a space, more
		// whitespace, the token, whitespace; and the token is well formed.
		// Checked by taking the header apart from the right, not the way
		// ParseBearer does it.
		right := strings.TrimRightFunc(header, unicode.IsSpace)
		if !strings.HasSuffix(right, tok) {
			t.Fatalf("header %q: token %q is not what the header ends with", header, tok)
		}
		before := strings.TrimLeftFunc(right[:len(right)-len(tok)], unicode.IsSpace)
		if !strings.HasPrefix(before, "Bearer ") || strings.TrimFunc(before[len("Bearer "):], unicode.IsSpace) != "" {
			t.Fatalf("header %q: %q precedes the token %q, want \"Bearer \" and whitespace", header, before, tok)
		}
		if !wellFormedToken(tok) {
			t.Fatalf("accepted bad token %q", tok)
		}
	})
}

// wellFormedToken is the reference for what ParseBearer accepts as a
// token, from its documentation: 1..MaxTokenBytes bytes, no control
// character (C0 or DEL), not starting or ending with whitespace.
func wellFormedToken(tok string) bool {
	if tok == "" || len(tok) > MaxTokenBytes {
		return false
	}
	for _, b := range []byte(tok) {
		if b < 0x20 || b == 0x7f {
			return false
		}
	}
	first, _ := utf8.DecodeRuneInString(tok)
	last, _ := utf8.DecodeLastRuneInString(tok)
	return !unicode.IsSpace(first) && !unicode.IsSpace(last)
}

// allowedMessages are the only 401 messages the middleware writes: each is
// fixed text, so nothing from the request can be echoed.
var allowedMessages = func() map[string]bool {
	m := map[string]bool{"missing bearer token; " + hintSend: true, "invalid bearer token; " + hintCheck: true}
	for _, e := range []error{ErrNotBearer, ErrEmptyToken, ErrTooLong, ErrControlChar} {
		m["malformed bearer token: "+e.Error()+"; "+hintSend] = true
	}
	return m
}()

// The reference grammar for FuzzMiddleware. ws is Unicode White_Space,
// spelled out (what strings.TrimSpace trims): \t-\r, NEL, the Zs
// category (space, NBSP, U+1680, U+2000-200A, U+202F, U+205F, U+3000) and
// the line/paragraph separators.
const ws = `[\t-\r\x{85}\p{Zs}\x{2028}\x{2029}]`

var (
	blankHeader = regexp.MustCompile(`^` + ws + `*$`)
	goodHeader  = regexp.MustCompile(`^` + ws + `*Bearer ` + ws + `*` + regexp.QuoteMeta(goodToken) + ws + `*$`)
)

func FuzzMiddleware(f *testing.F) {
	for _, h := range hostileHeaders {
		f.Add(h, "10.0.0.1:1")
		f.Add(h, "127.0.0.1:1")
	}
	for _, peer := range []string{"", "[::1]:1", "::ffff:127.0.0.1", "127.0.0.1", "localhost:1", "[::ffff:7f00:1]:1", "0.0.0.0:1", "garbage"} {
		f.Add("Bearer wrong", peer)
		f.Add("", peer)
	}
	tokens := NewTokenSet(goodToken)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	h := Middleware(MiddlewareConfig{Tokens: tokens}, ok)
	// With the loopback bypass on, a tokenless loopback request may pass,
	// but a wrong or malformed credential never does, from any peer.
	hOpt := Middleware(MiddlewareConfig{Tokens: tokens, AuthOptional: true}, ok)
	f.Fuzz(func(t *testing.T, header, peer string) {
		r := httptest.NewRequest("GET", "/v1/models", nil)
		r.RemoteAddr = peer
		r.Header["Authorization"] = []string{header}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		// The oracle is a reference grammar of the accepted header (RFC
		// 6750's "Bearer" SP token, with surrounding whitespace allowed),
		// not ParseBearer.
		blank := blankHeader.MatchString(header)
		valid := goodHeader.MatchString(header)
		if !valid && !blank {
			r := httptest.NewRequest("GET", "/v1/models", nil)
			r.RemoteAddr = peer
			r.Header["Authorization"] = []string{header}
			w := httptest.NewRecorder()
			hOpt.ServeHTTP(w, r)
			if w.Code != http.StatusUnauthorized {
				t.Fatalf("AuthOptional, peer %q, header %q: status %d for a wrong credential", peer, header, w.Code)
			}
		}
		if (w.Code == http.StatusNoContent) != valid {
			t.Fatalf("header %q: status %d, valid=%v", header, w.Code, valid)
		}
		if valid {
			return
		}
		if w.Code != http.StatusUnauthorized {
			t.Fatalf("status %d for a bad credential", w.Code)
		}
		var b struct{ Error wireError }
		if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil || !allowedMessages[b.Error.Message] || b.Error.Type != "authentication_error" {
			t.Fatalf("unexpected 401 body %q", w.Body.String())
		}
		if wantCode := map[bool]string{true: CodeMissingToken, false: CodeBadToken}[blank]; b.Error.Code != wantCode {
			t.Fatalf("header %q: code %s, want %s", header, b.Error.Code, wantCode)
		}
		// The body is one of the fixed messages above; the headers are
		// exactly these, so nothing the client sent can come back.
		want := http.Header{"Www-Authenticate": {`Bearer realm="llorch"`}, "Content-Type": {"application/json"},
			"Content-Length": {strconv.Itoa(w.Body.Len())}}
		if len(w.Header()) != len(want) {
			t.Fatalf("401 headers %q", w.Header())
		}
		for k, v := range want {
			if got := w.Header().Values(k); len(got) != 1 || got[0] != v[0] {
				t.Fatalf("401 header %s = %q", k, got)
			}
		}
	})
}
