package scheduler

import (
	"strconv"
	"sync"
	"unsafe"

	"github.com/llorch/llorch/internal/jsonscan"
)

// promptKeyScan is PromptKey for the shapes nearly every request has
// (messages with string or null roles, names and contents and no tool
// calls; or a string prompt), read by scanning instead of decoding: the
// canonical text is built in a pooled buffer and nothing is allocated but
// the key and the hashes. ok false: another shape (content parts, tool
// calls, an unexpected type); PromptKey then decodes, and its answer is the
// reference this one must equal (TestPromptKeyScanMatchesDecoding).
func promptKeyScan(body []byte) (key string, hashes []uint64, ok bool) {
	var messages, prompt []byte
	var mKind, pKind jsonscan.Kind
	it := jsonscan.Members(body)
	for it.Next() {
		switch k := it.Key(); {
		case jsonscan.KeyFold(k, "messages"):
			messages, mKind = it.Value(), it.Kind()
		case jsonscan.KeyFold(k, "prompt"):
			prompt, pKind = it.Value(), it.Kind()
		}
	}
	if it.Err() != nil {
		return "", nil, false
	}
	switch mKind {
	case jsonscan.Array:
		bp := canonPool.Get().(*[]byte)
		k, h, ok, empty, buf := messagesKeyScan(messages, (*bp)[:0])
		if cap(buf) <= 1<<20 {
			*bp = buf[:0]
			canonPool.Put(bp)
		}
		if !empty || !ok {
			return k, h, ok
		}
		// An empty list: the prompt, as PromptKey reads it.
	case jsonscan.Invalid, jsonscan.Null: // absent or null: the prompt
	default:
		return "", nil, false
	}
	if pKind != jsonscan.String {
		return "", nil, true // not a string: PromptKey gives neither
	}
	text, good := jsonscan.Unquote(prompt)
	if !good {
		return "", nil, false
	}
	if len(text) < MinAffinityChars {
		return "", nil, true
	}
	k, h := TextKey(string(text))
	return k, h, true
}

var canonPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// messagesKeyScan is messagesKey over the array's text, writing the
// canonical records into buf (returned, for the pool; nil on an empty
// list).
func messagesKeyScan(arr, buf []byte) (key string, hashes []uint64, ok, empty bool, out []byte) {
	type msg struct{ role, name, content []byte }
	// Two walks: the first finds the user turns, the second writes the
	// records up to the last one.
	firstUser, lastUser, n := -1, -1, 0
	el := jsonscan.Elements(arr)
	for el.Next() {
		var m msg
		if !readMessage(&el, &m.role, &m.name, &m.content) {
			return "", nil, false, false, buf
		}
		if r, _ := jsonscan.Unquote(m.role); string(r) == "user" {
			if firstUser < 0 {
				firstUser = n
			}
			lastUser = n
		}
		n++
	}
	if el.Err() != nil {
		return "", nil, false, false, buf
	}
	if n == 0 {
		return "", nil, true, true, buf
	}
	if lastUser < 0 {
		firstUser, lastUser = 0, n-1
	}
	opening, preamble := 0, 0
	el = jsonscan.Elements(arr)
	for i := 0; i <= lastUser && el.Next(); i++ {
		var m msg
		readMessage(&el, &m.role, &m.name, &m.content)
		if i == firstUser {
			preamble = len(buf)
		}
		var good bool
		if buf, good = appendField(buf, m.role); !good {
			return "", nil, false, false, buf
		}
		if buf, good = appendField(buf, m.name); !good {
			return "", nil, false, false, buf
		}
		if buf, good = appendField(buf, m.content); !good {
			return "", nil, false, false, buf
		}
		buf = append(buf, "0:\n"...) // no tool calls
		if i == firstUser {
			opening = len(buf)
		}
	}
	if len(buf) < MinAffinityChars {
		return "", nil, true, false, buf
	}
	// The hashes read the text in place; nothing keeps it.
	text := unsafe.String(unsafe.SliceData(buf), len(buf))
	if preamble >= MinAffinityChars {
		return affinityKey('s', hrw(text[:preamble], "")), PrefixHashes(text), true, false, buf
	}
	return affinityKey('c', hrw(text[:opening], "")), PrefixHashes(text), true, false, buf
}

// readMessage reads one element as PromptKey's chatMessage: an object
// whose role, name and content are strings or null (or absent) and whose
// tool_calls are null or absent, or null itself. The values are the raw
// JSON text ("" for absent).
func readMessage(el *jsonscan.Iter, role, name, content *[]byte) bool {
	switch el.Kind() {
	case jsonscan.Null:
		return true
	case jsonscan.Object:
	default:
		return false
	}
	m := el.Sub()
	for m.Next() {
		k, v, kind := m.Key(), m.Value(), m.Kind()
		var dst *[]byte
		switch {
		case jsonscan.KeyFold(k, "role"):
			dst = role
		case jsonscan.KeyFold(k, "name"):
			dst = name
		case jsonscan.KeyFold(k, "content"):
			dst = content
		case jsonscan.KeyFold(k, "tool_calls"):
			if kind != jsonscan.Null {
				return false
			}
			continue
		default:
			continue
		}
		switch kind {
		case jsonscan.String:
			*dst = v
		case jsonscan.Null:
			if dst != content {
				// encoding/json leaves a string field as it was on null:
				// with duplicates that is not always "".
				return false
			}
			*dst = nil
		default:
			return false
		}
	}
	return m.Err() == nil
}

// appendField writes one length-prefixed part (writeCanonical's field)
// from a JSON string value's text (nil: "").
func appendField(buf, raw []byte) ([]byte, bool) {
	if raw == nil {
		return append(buf, "0:"...), true
	}
	s, ok := jsonscan.Unquote(raw)
	if !ok {
		return buf, false
	}
	buf = strconv.AppendInt(buf, int64(len(s)), 10)
	buf = append(buf, ':')
	return append(buf, s...), true
}

// affinityKey is kind followed by h in base 36, in one allocation.
func affinityKey(kind byte, h uint64) string {
	var b [16]byte
	return string(strconv.AppendUint(append(b[:0], kind), h, 36))
}
