package jsonscan

import (
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Strings are decoded as encoding/json decodes them: invalid UTF-8 and
// lone surrogates become U+FFFD. The inputs are spans of a document a
// walk has validated; on other text the results are unspecified, but they
// never panic.

// Unquote decodes the JSON string value s (quotes included). A string with
// no escapes and valid UTF-8 is returned as a slice of s, no copy; any
// other is decoded into new memory.
func Unquote(s []byte) ([]byte, bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return nil, false
	}
	body := s[1 : len(s)-1]
	if plain(body) {
		return body, true
	}
	return AppendString(make([]byte, 0, len(body)), s)
}

// plain: body needs no decoding.
func plain(body []byte) bool {
	ascii := true
	for _, c := range body {
		if c == '\\' {
			return false
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	return ascii || utf8.Valid(body)
}

// AppendString appends the decoded JSON string value s (quotes included)
// to dst.
func AppendString(dst, s []byte) ([]byte, bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return dst, false
	}
	body := s[1 : len(s)-1]
	for i := 0; i < len(body); {
		// Copy runs of plain ASCII at once.
		j := i
		for j < len(body) && body[j] != '\\' && body[j] < utf8.RuneSelf {
			j++
		}
		dst = append(dst, body[i:j]...)
		if i = j; i >= len(body) {
			break
		}
		r, n := nextRune(body, i)
		if n == 0 {
			return dst, false
		}
		dst = utf8.AppendRune(dst, r)
		i += n
	}
	return dst, true
}

// nextRune decodes the rune at body[i] of a string's contents: an escape,
// a UTF-8 sequence, or one invalid byte (U+FFFD). n is 0 on a malformed
// escape.
func nextRune(body []byte, i int) (r rune, n int) {
	c := body[i]
	if c < utf8.RuneSelf && c != '\\' {
		return rune(c), 1
	}
	if c != '\\' {
		return utf8.DecodeRune(body[i:]) // invalid: RuneError, 1
	}
	if i+1 >= len(body) {
		return 0, 0
	}
	switch body[i+1] {
	case '"', '\\', '/':
		return rune(body[i+1]), 2
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case 'n':
		return '\n', 2
	case 'r':
		return '\r', 2
	case 't':
		return '\t', 2
	case 'u':
		r := hex4(body, i+2)
		if r < 0 {
			return 0, 0
		}
		if !utf16.IsSurrogate(r) {
			return r, 6
		}
		// A pair is consumed whole; a lone half is U+FFFD and what follows
		// it is read on its own (encoding/json's rule).
		if i+7 < len(body) && body[i+6] == '\\' && body[i+7] == 'u' {
			if r2 := hex4(body, i+8); r2 >= 0 {
				if d := utf16.DecodeRune(r, r2); d != unicode.ReplacementChar {
					return d, 12
				}
			}
		}
		return unicode.ReplacementChar, 6
	}
	return 0, 0
}

func hex4(b []byte, i int) rune {
	if i+4 > len(b) {
		return -1
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// KeyIs reports whether the raw key (Iter.Key) decodes to exactly name.
func KeyIs(key []byte, name string) bool {
	if len(key) == len(name) && string(key) == name {
		return true
	}
	if !hasEscapeOrHigh(key) {
		return false
	}
	j := 0
	for i := 0; i < len(key); {
		r, n := nextRune(key, i)
		if n == 0 || j >= len(name) {
			return false
		}
		r2, n2 := utf8.DecodeRuneInString(name[j:])
		if r != r2 {
			return false
		}
		i, j = i+n, j+n2
	}
	return j == len(name)
}

// KeyFold reports whether the raw key matches name as encoding/json
// matches a key to a struct field: after decoding, equal under Unicode
// simple case folding ("MODEL", "Model" and "model" are one field).
func KeyFold(key []byte, name string) bool {
	// The common case, plain ASCII on both sides, in one pass.
	if len(key) == len(name) {
		i := 0
		for ; i < len(key); i++ {
			c, n := key[i], name[i]
			if c == n {
				continue
			}
			if c >= utf8.RuneSelf || n >= utf8.RuneSelf || c == '\\' {
				break // decode from here on
			}
			if upper(c) != upper(n) {
				return false
			}
		}
		if i == len(key) {
			return true
		}
	} else if !hasEscapeOrHigh(key) && isASCII(name) {
		return false
	}
	j := 0
	for i := 0; i < len(key); {
		r, n := nextRune(key, i)
		if n == 0 || j >= len(name) {
			return false
		}
		r2, n2 := utf8.DecodeRuneInString(name[j:])
		if foldRune(r) != foldRune(r2) {
			return false
		}
		i, j = i+n, j+n2
	}
	return j == len(name)
}

func hasEscapeOrHigh(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c >= utf8.RuneSelf {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - ('a' - 'A')
	}
	return c
}

// foldRune is the smallest rune of r's case-folding orbit, the key
// encoding/json compares folded names by.
func foldRune(r rune) rune {
	if r < utf8.RuneSelf {
		return rune(upper(byte(r)))
	}
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}

// Int reads the JSON number v as encoding/json reads it into an int64: an
// integer literal in range (no fraction, no exponent).
func Int(v []byte) (int64, bool) {
	neg := len(v) > 0 && v[0] == '-'
	d := v
	if neg {
		d = v[1:]
	}
	if len(d) == 0 || len(d) > 19 {
		return 0, false
	}
	var u uint64
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
	}
	if neg {
		if u > 1<<63 {
			return 0, false
		}
		return -int64(u), true
	}
	if u > 1<<63-1 {
		return 0, false
	}
	return int64(u), true
}

// IsTrue reports whether the value v is the literal true.
func IsTrue(v []byte) bool { return string(v) == "true" }

// IsNull reports whether the value v is null or absent (empty).
func IsNull(v []byte) bool { return len(v) == 0 || string(v) == "null" }
