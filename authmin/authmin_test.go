package authmin

import (
	"errors"
	"strings"
	"testing"
)

func TestTokenFP6(t *testing.T) {
	if got := TokenFP6("test"); got != "9f86d0" {
		t.Fatalf("TokenFP6(test) = %q, want 9f86d0", got)
	}
	if Identity("test") != "token:9f86d0" {
		t.Fatal(Identity("test"))
	}
	long := strings.Repeat("a", MaxTokenBytes+100)
	if TokenFP6(long) != TokenFP6(long[:MaxTokenBytes]) {
		t.Error("over-long input not truncated to 8 KiB")
	}
}

func TestTimingSafeEqual(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"secret", "secret", true},
		{"secret", "secreT", false},
		{"secret", "secret2", false},
		{"", "", true},
		{"", "x", false},
		{strings.Repeat("x", 10000), strings.Repeat("x", 10000), true},
	}
	for _, c := range cases {
		if got := TimingSafeEqual(c.a, c.b); got != c.want {
			t.Errorf("TimingSafeEqual(%q, %q) = %v", c.a, c.b, got)
		}
	}
}

func TestParseBearer(t *testing.T) {
	ok := map[string]string{
		"Bearer abc":                          "abc",
		"  Bearer  abc  ":                     "abc",
		"Bearer a b c":                        "a b c",
		"Bearer ünïcode":                      "ünïcode",
		"Bearer " + strings.Repeat("x", 8192): strings.Repeat("x", 8192),
	}
	for in, want := range ok {
		got, err := ParseBearer(in)
		if err != nil || got != want {
			t.Errorf("ParseBearer(%.30q) = %.30q, %v", in, got, err)
		}
	}
	bad := map[string]error{
		"":                                    ErrMissing,
		"   ":                                 ErrMissing,
		"Bearer":                              ErrEmptyToken,
		"Bearer    ":                          ErrEmptyToken,
		"bearer abc":                          ErrNotBearer,
		"BEARER abc":                          ErrNotBearer,
		"Basic dXNlcjpwYXNz":                  ErrNotBearer,
		"Bearerabc":                           ErrNotBearer,
		"Bearer a\x00b":                       ErrControlChar,
		"Bearer a\nb":                         ErrControlChar,
		"Bearer a\rb":                         ErrControlChar,
		"Bearer a\tb":                         ErrControlChar,
		"Bearer a\x7fb":                       ErrControlChar,
		"Bearer " + strings.Repeat("x", 8193): ErrTooLong,
	}
	for in, want := range bad {
		if _, err := ParseBearer(in); !errors.Is(err, want) {
			t.Errorf("ParseBearer(%.30q): err = %v, want %v", in, err, want)
		}
	}
}

func TestTokenSetRotation(t *testing.T) {
	s := NewTokenSet("old-token")
	now := testClock(s)
	s.Rotate("new-token")
	if !s.Check("old-token") || !s.Check("new-token") {
		t.Fatal("during grace both tokens must pass")
	}
	*now = now.Add(DefaultGrace + 1)
	if s.Check("old-token") || !s.Check("new-token") {
		t.Fatal("after grace only the new token may pass")
	}
	if s.Check("") || NewTokenSet().Check("") || (*TokenSet)(nil).Check("x") {
		t.Fatal("empty token or set must never pass")
	}
	if !NewTokenSet().Empty() || NewTokenSet("x").Empty() {
		t.Fatal("Empty")
	}
}
