// Package jsonscan reads JSON text without building values: it validates a
// document as encoding/json does (json.Valid's acceptance, its nesting
// limit included) and reports where each member or element lies and what
// kind of value it is, so a caller can read a few fields of a large body,
// or splice members out of it, with no allocation.
//
// Spans are offsets into the caller's bytes, which are never modified or
// retained past a call.
package jsonscan

import (
	"errors"
	"fmt"
)

// Kind is the JSON type of a value, read from its first byte.
type Kind uint8

const (
	Invalid Kind = iota
	Null
	Bool
	Number
	String
	Array
	Object
)

// String names the kind as encoding/json's UnmarshalTypeError.Value does
// ("bool", not "boolean"), so messages built from it read the same.
func (k Kind) String() string {
	switch k {
	case Null:
		return "null"
	case Bool:
		return "bool"
	case Number:
		return "number"
	case String:
		return "string"
	case Array:
		return "array"
	case Object:
		return "object"
	}
	return "invalid"
}

// KindOf is the kind of the value that begins with b.
func KindOf(b byte) Kind {
	switch b {
	case 'n':
		return Null
	case 't', 'f':
		return Bool
	case '"':
		return String
	case '[':
		return Array
	case '{':
		return Object
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return Number
	}
	return Invalid
}

// maxDepth is encoding/json's nesting limit: a document nested deeper is
// invalid there, so it is here.
const maxDepth = 10000

// SyntaxError says where a document stops being JSON.
type SyntaxError struct {
	Offset int // the byte at which the error was found
	msg    string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("%s (offset %d)", e.msg, e.Offset) }

func syntaxErr(off int, format string, args ...any) error {
	return &SyntaxError{Offset: off, msg: fmt.Sprintf(format, args...)}
}

// ErrNotContainer: the document is valid JSON but not the object (or
// array) the walk was asked for.
var ErrNotContainer = errors.New("jsonscan: the JSON value is not of the kind asked for")

// Valid reports whether doc is one JSON value, as json.Valid does.
func Valid(doc []byte) bool {
	i := skipWS(doc, 0)
	end, _, err := skipValue(doc, i, 1)
	return err == nil && skipWS(doc, end) == len(doc)
}

// Trim returns b without JSON whitespace at either end.
func Trim(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && isWS(b[i]) {
		i++
	}
	for j > i && isWS(b[j-1]) {
		j--
	}
	return b[i:j]
}

// Iter walks the members of one object (Members) or the elements of one
// array (Elements) in document order. The document is validated as the
// walk goes: Err is meaningful once Next has returned false, and a walk
// left early has not looked at the rest.
type Iter struct {
	doc     []byte
	object  bool
	trusted bool // a Sub walk: the text was validated by the walk above
	state   uint8
	err     error
	pos     int // next byte to read
	n       int // members or elements read
	open    int // offset of the opening brace or bracket
	close   int // offset of the closing one, once reached
	start   int // the current member's key quote (an element: its value)
	keyEnd  int // past the current key's closing quote
	vStart  int
	vEnd    int
	prevEnd int // end of the previous member's value; -1 before the first
	kind    Kind
}

const (
	stStart uint8 = iota
	stIn
	stDone
)

// Members walks doc, which must hold one JSON object (whitespace around it
// allowed).
func Members(doc []byte) Iter { return Iter{doc: doc, object: true, prevEnd: -1} }

// Elements walks doc, which must hold one JSON array.
func Elements(doc []byte) Iter { return Iter{doc: doc, prevEnd: -1} }

// Sub walks the current value, an object or an array, without validating
// it again: this walk already has. Use it for nested fields; Members or
// Elements of Value would check the text once more.
func (it *Iter) Sub() Iter {
	return Iter{doc: it.Value(), object: it.kind == Object, trusted: true, prevEnd: -1}
}

// Next moves to the next member or element; false at the end or on error.
func (it *Iter) Next() bool {
	doc := it.doc
	var i int
	switch it.state {
	case stDone:
		return false
	case stStart:
		i = skipWS(doc, 0)
		want, closer := byte('['), byte(']')
		if it.object {
			want, closer = '{', '}'
		}
		if i >= len(doc) || doc[i] != want {
			return it.fail(it.notContainer(i))
		}
		it.open = i
		i = skipWS(doc, i+1)
		if i < len(doc) && doc[i] == closer {
			return it.finish(i)
		}
		it.state = stIn
	case stIn:
		i = skipWS(doc, it.pos)
		if i >= len(doc) {
			return it.fail(syntaxErr(i, "unexpected end of JSON input"))
		}
		switch c := doc[i]; {
		case c == ',':
			i = skipWS(doc, i+1)
		case (c == '}' && it.object) || (c == ']' && !it.object):
			return it.finish(i)
		default:
			return it.fail(syntaxErr(i, "invalid character %s after %s", quoteChar(c), it.what()))
		}
	}
	if i >= len(doc) {
		return it.fail(syntaxErr(i, "unexpected end of JSON input"))
	}
	it.prevEnd = -1
	if it.n > 0 {
		it.prevEnd = it.vEnd
	}
	it.start = i
	if it.object {
		if doc[i] != '"' {
			return it.fail(syntaxErr(i, "invalid character %s looking for beginning of object key string", quoteChar(doc[i])))
		}
		var end int
		var err error
		if it.trusted {
			end = skipStringTrusted(doc, i)
		} else if end, err = skipString(doc, i); err != nil {
			return it.fail(err)
		}
		it.keyEnd = end
		i = skipWS(doc, end)
		if i >= len(doc) {
			return it.fail(syntaxErr(i, "unexpected end of JSON input"))
		}
		if doc[i] != ':' {
			return it.fail(syntaxErr(i, "invalid character %s after object key", quoteChar(doc[i])))
		}
		i = skipWS(doc, i+1)
	}
	var end int
	var kind Kind
	var err error
	if it.trusted {
		end, kind = skipTrusted(doc, i)
	} else if end, kind, err = skipValue(doc, i, 2); err != nil {
		return it.fail(err)
	}
	it.vStart, it.vEnd, it.kind, it.pos = i, end, kind, end
	it.n++
	return true
}

func (it *Iter) what() string {
	if it.object {
		return "object key:value pair"
	}
	return "array element"
}

func (it *Iter) notContainer(i int) error {
	if Valid(it.doc) {
		return ErrNotContainer
	}
	if i >= len(it.doc) {
		return syntaxErr(i, "unexpected end of JSON input")
	}
	return syntaxErr(i, "invalid character %s looking for beginning of value", quoteChar(it.doc[i]))
}

// finish ends the walk at the closing brace or bracket at i: only
// whitespace may follow it.
func (it *Iter) finish(i int) bool {
	it.close = i
	if j := skipWS(it.doc, i+1); j != len(it.doc) {
		return it.fail(syntaxErr(j, "invalid character %s after top-level value", quoteChar(it.doc[j])))
	}
	it.state = stDone
	return false
}

func (it *Iter) fail(err error) bool {
	it.err, it.state = err, stDone
	return false
}

// Err is why the walk stopped early: nil after a whole, valid document.
func (it *Iter) Err() error { return it.err }

// Key is the current member's key as written, without its quotes and with
// escapes undecoded (compare with KeyIs or KeyFold).
func (it *Iter) Key() []byte {
	if !it.object {
		return nil
	}
	return it.doc[it.start+1 : it.keyEnd-1]
}

// Value is the current value's text.
func (it *Iter) Value() []byte { return it.doc[it.vStart:it.vEnd] }

// Kind is the current value's kind.
func (it *Iter) Kind() Kind { return it.kind }

// ValueSpan is where the current value lies in the document.
func (it *Iter) ValueSpan() (start, end int) { return it.vStart, it.vEnd }

// MemberSpan is where the current member lies: from its key's opening
// quote (an element: its first byte) to the end of its value.
func (it *Iter) MemberSpan() (start, end int) { return it.start, it.vEnd }

// Open is the offset of the container's opening brace or bracket.
func (it *Iter) Open() int { return it.open }

// Close is the offset of the closing brace or bracket, once Next has
// returned false with Err nil.
func (it *Iter) Close() int { return it.close }

// Count is how many members or elements have been read.
func (it *Iter) Count() int { return it.n }

func quoteChar(c byte) string {
	switch c {
	case '\'':
		return `'\''`
	case '"':
		return `'"'`
	}
	s := fmt.Sprintf("%q", []byte{c})
	return "'" + s[1:len(s)-1] + "'"
}
