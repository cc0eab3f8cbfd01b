package jsonscan

import (
	"encoding/binary"
	"math/bits"
)

// The skippers validate one value and return the offset just past it.
// They never build anything: a container is walked with a bit stack (one
// bit per open level, object or array), on the Go stack for the first 256
// levels.

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipWS(doc []byte, i int) int {
	for i < len(doc) && isWS(doc[i]) {
		i++
	}
	return i
}

// skipValue validates the value that begins at doc[i]; depth is the
// nesting depth a container there would have.
func skipValue(doc []byte, i, depth int) (int, Kind, error) {
	if i >= len(doc) {
		return i, Invalid, syntaxErr(i, "unexpected end of JSON input")
	}
	switch c := doc[i]; c {
	case '"':
		end, err := skipString(doc, i)
		return end, String, err
	case '{':
		end, err := skipContainer(doc, i, depth)
		return end, Object, err
	case '[':
		end, err := skipContainer(doc, i, depth)
		return end, Array, err
	case 't':
		end, err := skipLiteral(doc, i, "true")
		return end, Bool, err
	case 'f':
		end, err := skipLiteral(doc, i, "false")
		return end, Bool, err
	case 'n':
		end, err := skipLiteral(doc, i, "null")
		return end, Null, err
	default:
		if c == '-' || ('0' <= c && c <= '9') {
			end, err := skipNumber(doc, i)
			return end, Number, err
		}
		return i, Invalid, syntaxErr(i, "invalid character %s looking for beginning of value", quoteChar(c))
	}
}

func skipLiteral(doc []byte, i int, lit string) (int, error) {
	for k := 0; k < len(lit); k++ {
		if i+k >= len(doc) {
			return i + k, syntaxErr(i+k, "unexpected end of JSON input")
		}
		if doc[i+k] != lit[k] {
			return i + k, syntaxErr(i+k, "invalid character %s in literal %s (expecting %s)", quoteChar(doc[i+k]), lit, quoteChar(lit[k]))
		}
	}
	return i + len(lit), nil
}

// skipNumber follows JSON's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func skipNumber(doc []byte, i int) (int, error) {
	if doc[i] == '-' {
		i++
	}
	if i >= len(doc) {
		return i, syntaxErr(i, "unexpected end of JSON input")
	}
	switch c := doc[i]; {
	case c == '0':
		i++
	case '1' <= c && c <= '9':
		i = digits(doc, i+1)
	default:
		return i, syntaxErr(i, "invalid character %s in numeric literal", quoteChar(c))
	}
	if i < len(doc) && doc[i] == '.' {
		i++
		if i >= len(doc) {
			return i, syntaxErr(i, "unexpected end of JSON input")
		}
		if c := doc[i]; c < '0' || c > '9' {
			return i, syntaxErr(i, "invalid character %s after decimal point in numeric literal", quoteChar(c))
		}
		i = digits(doc, i+1)
	}
	if i < len(doc) && (doc[i] == 'e' || doc[i] == 'E') {
		i++
		if i < len(doc) && (doc[i] == '+' || doc[i] == '-') {
			i++
		}
		if i >= len(doc) {
			return i, syntaxErr(i, "unexpected end of JSON input")
		}
		if c := doc[i]; c < '0' || c > '9' {
			return i, syntaxErr(i, "invalid character %s in exponent of numeric literal", quoteChar(c))
		}
		i = digits(doc, i+1)
	}
	return i, nil
}

func digits(doc []byte, i int) int {
	for i < len(doc) && '0' <= doc[i] && doc[i] <= '9' {
		i++
	}
	return i
}

// SWAR constants: a word has a byte equal to b when hasZero(w ^ lsb*b),
// and a byte below 0x20 when (w - lsb*0x20) &^ w & msb is non-zero. Both
// tests never miss, and the lowest byte they flag is exact (a borrow can
// only flag bytes above a real one), so the first special byte of a
// little-endian word is found at once.
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// special flags (high bit of each byte) the bytes of w that end a run of
// plain string bytes: a quote, a backslash or a control character.
func special(w uint64) uint64 {
	q := w ^ (lsb * '"')
	b := w ^ (lsb * '\\')
	return ((q-lsb)&^q | (b-lsb)&^b | (w-lsb*0x20)&^w) & msb
}

// skipString validates the string that begins with the quote at doc[i].
// Invalid UTF-8 is accepted, as encoding/json accepts it.
func skipString(doc []byte, i int) (int, error) {
	i++
	for {
		// Eight plain bytes at a time: long prompts are most of a body.
		for i+8 <= len(doc) {
			if m := special(binary.LittleEndian.Uint64(doc[i:])); m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				break
			}
			i += 8
		}
		if i >= len(doc) {
			return i, syntaxErr(i, "unexpected end of JSON input")
		}
		c := doc[i]
		switch {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			end, err := skipEscape(doc, i)
			if err != nil {
				return end, err
			}
			i = end
		case c < 0x20:
			return i, syntaxErr(i, "invalid character %s in string literal", quoteChar(c))
		default:
			i++
		}
	}
}

// skipEscape validates the escape whose backslash is doc[i].
func skipEscape(doc []byte, i int) (int, error) {
	i++
	if i >= len(doc) {
		return i, syntaxErr(i, "unexpected end of JSON input")
	}
	switch doc[i] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return i + 1, nil
	case 'u':
		for k := 1; k <= 4; k++ {
			if i+k >= len(doc) {
				return i + k, syntaxErr(i+k, "unexpected end of JSON input")
			}
			if !isHex(doc[i+k]) {
				return i + k, syntaxErr(i+k, "invalid character %s in \\u hexadecimal character escape", quoteChar(doc[i+k]))
			}
		}
		return i + 5, nil
	}
	return i, syntaxErr(i, "invalid character %s in string escape code", quoteChar(doc[i]))
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

// levels is the bit stack of open containers: bit set, an object.
type levels struct {
	low  [4]uint64
	high []uint64 // past 256 levels (only hostile documents nest so deep)
}

func (l *levels) set(n int, object bool) {
	w := n >> 6
	if w < len(l.low) {
		l.low[w] = l.low[w]&^(1<<(n&63)) | b2u(object)<<(n&63)
		return
	}
	w -= len(l.low)
	for len(l.high) <= w {
		l.high = append(l.high, 0)
	}
	l.high[w] = l.high[w]&^(1<<(n&63)) | b2u(object)<<(n&63)
}

func (l *levels) object(n int) bool {
	w := n >> 6
	if w < len(l.low) {
		return l.low[w]>>(n&63)&1 == 1
	}
	return l.high[w-len(l.low)]>>(n&63)&1 == 1
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// skipContainer validates the object or array that opens at doc[i], whose
// nesting depth is depth.
func skipContainer(doc []byte, i, depth int) (int, error) {
	var st levels
	open := 0 // containers open in this call
	var err error
	var end int
	for {
		// doc[i] opens a container.
		if depth+open > maxDepth {
			return i, syntaxErr(i, "exceeded max depth")
		}
		st.set(open, doc[i] == '{')
		open++
		i = skipWS(doc, i+1)
		if i >= len(doc) {
			return i, syntaxErr(i, "unexpected end of JSON input")
		}
		if (doc[i] == '}' && st.object(open-1)) || (doc[i] == ']' && !st.object(open-1)) {
			i++
			open--
			goto after
		}
	element:
		if st.object(open - 1) {
			if doc[i] != '"' {
				return i, syntaxErr(i, "invalid character %s looking for beginning of object key string", quoteChar(doc[i]))
			}
			if i, err = skipString(doc, i); err != nil {
				return i, err
			}
			i = skipWS(doc, i)
			if i >= len(doc) {
				return i, syntaxErr(i, "unexpected end of JSON input")
			}
			if doc[i] != ':' {
				return i, syntaxErr(i, "invalid character %s after object key", quoteChar(doc[i]))
			}
			i = skipWS(doc, i+1)
			if i >= len(doc) {
				return i, syntaxErr(i, "unexpected end of JSON input")
			}
		}
		if c := doc[i]; c == '{' || c == '[' {
			continue
		}
		if end, _, err = skipValue(doc, i, depth+open); err != nil {
			return end, err
		}
		i = end
	after:
		if open == 0 {
			return i, nil
		}
		i = skipWS(doc, i)
		if i >= len(doc) {
			return i, syntaxErr(i, "unexpected end of JSON input")
		}
		switch c := doc[i]; {
		case c == ',':
			i = skipWS(doc, i+1)
			if i >= len(doc) {
				return i, syntaxErr(i, "unexpected end of JSON input")
			}
			goto element
		case c == '}' && st.object(open-1), c == ']' && !st.object(open-1):
			i++
			open--
			goto after
		default:
			what := "array element"
			if st.object(open - 1) {
				what = "object key:value pair"
			}
			return i, syntaxErr(i, "invalid character %s after %s", quoteChar(c), what)
		}
	}
}

// The trusted skippers find the end of a value inside a span a walk has
// already validated (Iter.Sub), without checking it again. On other text
// they return nonsense offsets within doc, never panic.

func skipTrusted(doc []byte, i int) (int, Kind) {
	if i >= len(doc) {
		return len(doc), Invalid
	}
	k := KindOf(doc[i])
	switch k {
	case String:
		return skipStringTrusted(doc, i), k
	case Object, Array:
		depth := 0
		for i < len(doc) {
			for i < len(doc) && !structural[doc[i]] {
				i++
			}
			if i >= len(doc) {
				break
			}
			switch doc[i] {
			case '"':
				i = skipStringTrusted(doc, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1, k
				}
			}
			i++
		}
		return len(doc), k
	}
	for i < len(doc) {
		switch doc[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i, k
		}
		i++
	}
	return i, k
}

// structural marks the bytes a trusted container skip stops at.
var structural = [256]bool{'"': true, '{': true, '[': true, '}': true, ']': true}

// skipStringTrusted: the string's end is the first quote not escaped;
// words with neither a quote nor a backslash are passed eight bytes at a
// time.
func skipStringTrusted(doc []byte, i int) int {
	i++
	for i < len(doc) {
		for i+8 <= len(doc) {
			w := binary.LittleEndian.Uint64(doc[i:])
			q, b := w^(lsb*'"'), w^(lsb*'\\')
			if m := ((q-lsb)&^q | (b-lsb)&^b) & msb; m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				break
			}
			i += 8
		}
		if i >= len(doc) {
			break
		}
		switch doc[i] {
		case '"':
			return i + 1
		case '\\':
			i += 2
		default:
			i++
		}
	}
	return len(doc)
}
