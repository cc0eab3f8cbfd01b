package resume

import (
	"bytes"

	"github.com/llorch/llorch/internal/jsonscan"
)

// Reading an engine event as encoding/json would read it into the
// chunk's Go shape, from the spans of one validating walk.

// chunkView is one event's top-level fields, as spans of its data.
type chunkView struct {
	id, object, model, fingerprint []byte // JSON strings, quotes included; nil: absent
	created                        int64
	usage                          []byte        // any JSON value
	choices                        jsonscan.Iter // a walk of the choices array
	hasChoices                     bool          // not absent, not null
	choicesAt                      int           // offset of choices in the data
}

// choiceView is the first choice of an event.
type choiceView struct {
	finish, hasDelta      bool
	role, content, reason []byte // JSON strings; nil: absent or null
	toolCalls             []byte
	text                  []byte
	logprobs              bool // non-null logprobs: the token ids were read
	cuts                  jsonscan.Cuts
	cutsFull              bool
	start, end            int // the choice's span in the choices array
}

// read walks the event's top level (validating all of it, as decoding
// would; the walks below it do not check again).
func (c *chunkView) read(data []byte) bool {
	it := jsonscan.Members(data)
	for it.Next() {
		k := it.Key()
		ok := true
		switch {
		case jsonscan.KeyFold(k, "id"):
			ok = str(&it, &c.id)
		case jsonscan.KeyFold(k, "object"):
			ok = str(&it, &c.object)
		case jsonscan.KeyFold(k, "model"):
			ok = str(&it, &c.model)
		case jsonscan.KeyFold(k, "system_fingerprint"):
			ok = str(&it, &c.fingerprint)
		case jsonscan.KeyFold(k, "created"):
			ok = integer(&it, &c.created)
		case jsonscan.KeyFold(k, "usage"):
			c.usage = it.Value()
		case jsonscan.KeyFold(k, "choices"):
			switch it.Kind() {
			case jsonscan.Array:
				c.choices, c.hasChoices = it.Sub(), true
				c.choicesAt, _ = it.ValueSpan()
			case jsonscan.Null:
				c.hasChoices = false
			default:
				ok = false
			}
		}
		if !ok {
			return false
		}
	}
	return it.Err() == nil
}

// readChoices type-checks every choice, as decoding the whole event
// would, and reads the first into ch, appending its token ids to
// s.Tokens; n is the number of choices.
func readChoices(el jsonscan.Iter, ch *choiceView, s *Stream) (n int, ok bool) {
	for first := true; el.Next(); first = false {
		switch el.Kind() {
		case jsonscan.Object:
		case jsonscan.Null:
			continue
		default:
			return 0, false
		}
		var v choiceView
		dst, tokens := &v, (*[]int)(nil)
		if first {
			dst, tokens = ch, &s.Tokens
			ch.start, ch.end = el.ValueSpan()
		}
		if !dst.read(el.Sub(), tokens) {
			return 0, false
		}
	}
	return el.Count(), true
}

func (ch *choiceView) read(it jsonscan.Iter, tokens *[]int) bool {
	var idx int64
	var delta jsonscan.Iter
	base := 0 // the token ids before this choice's: a repeated logprobs replaces them
	if tokens != nil {
		base = len(*tokens)
	}
	for it.Next() {
		k := it.Key()
		ok := true
		switch {
		case jsonscan.KeyFold(k, "index"):
			ok = integer(&it, &idx)
		case jsonscan.KeyFold(k, "finish_reason"):
			var f []byte
			ok = str(&it, &f)
			ch.finish = f != nil
		case jsonscan.KeyFold(k, "text"):
			ok = str(&it, &ch.text)
		case jsonscan.KeyFold(k, "delta"):
			ok = it.Kind() == jsonscan.Object || it.Kind() == jsonscan.Null
			ch.hasDelta = it.Kind() == jsonscan.Object
			if ch.hasDelta {
				delta = it.Sub()
			}
		case jsonscan.KeyFold(k, "logprobs"):
			if jsonscan.KeyIs(k, "logprobs") && !ch.cuts.Add(&it) {
				ch.cutsFull = true
			}
			if tokens != nil {
				*tokens = (*tokens)[:base]
			}
			switch it.Kind() {
			case jsonscan.Object:
				ok = readTokenIDs(it.Sub(), tokens)
				ch.logprobs = true
			case jsonscan.Null:
				ch.logprobs = false
			default:
				ok = false
			}
		}
		if !ok {
			return false
		}
	}
	if !ch.hasDelta {
		return true
	}
	for delta.Next() {
		k := delta.Key()
		ok := true
		switch {
		case jsonscan.KeyFold(k, "role"):
			ok = str(&delta, &ch.role)
		case jsonscan.KeyFold(k, "content"):
			ok = str(&delta, &ch.content)
		case jsonscan.KeyFold(k, "reasoning_content"):
			ok = str(&delta, &ch.reason)
		case jsonscan.KeyFold(k, "tool_calls"):
			ch.toolCalls = delta.Value()
		}
		if !ok {
			return false
		}
	}
	return true
}

// readTokenIDs reads logprobs.content[].id, appending to tokens when it is
// not nil. A null entry or id counts as token 0, as decoding it would.
func readTokenIDs(it jsonscan.Iter, tokens *[]int) bool {
	var content jsonscan.Iter
	has := false
	for it.Next() {
		if jsonscan.KeyFold(it.Key(), "content") {
			switch it.Kind() {
			case jsonscan.Array:
				content, has = it.Sub(), true
			case jsonscan.Null:
				has = false
			default:
				return false
			}
		}
	}
	if !has {
		return true
	}
	for content.Next() {
		var id int64
		switch content.Kind() {
		case jsonscan.Object:
			e := content.Sub()
			for e.Next() {
				if jsonscan.KeyFold(e.Key(), "id") && !integer(&e, &id) {
					return false
				}
			}
		case jsonscan.Null:
		default:
			return false
		}
		if tokens != nil {
			*tokens = append(*tokens, int(id))
		}
	}
	return true
}

// str reads a string field: null leaves nil, another type is an error.
func str(it *jsonscan.Iter, dst *[]byte) bool {
	switch it.Kind() {
	case jsonscan.String:
		*dst = it.Value()
	case jsonscan.Null:
		*dst = nil
	default:
		return false
	}
	return true
}

// integer reads an integer field: null leaves it, anything but an integer
// in range is an error.
func integer(it *jsonscan.Iter, dst *int64) bool {
	switch it.Kind() {
	case jsonscan.Null:
		return true
	case jsonscan.Number:
		v, ok := jsonscan.Int(it.Value())
		if ok {
			*dst = v
		}
		return ok
	}
	return false
}

// promptTokens is usage.prompt_tokens, 0 when it cannot be read.
func promptTokens(usage []byte) int {
	var n int64
	it := jsonscan.Members(usage)
	for it.Next() {
		if jsonscan.KeyFold(it.Key(), "prompt_tokens") && it.Kind() == jsonscan.Number {
			if v, ok := jsonscan.Int(it.Value()); ok {
				n = v
			}
		}
	}
	return int(n)
}

// eventData returns the data of an SSE event (data lines joined by "\n").
// inPlace: the event is one "data: " line and its line ends, so data is
// ev[6:] and an edit can be made in ev itself.
func eventData(ev []byte) (data []byte, inPlace, found bool) {
	lines, others := 0, 0
	rest := ev
	for len(rest) > 0 {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		v, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			if len(line) > 0 {
				others++
			}
			continue
		}
		v = bytes.TrimPrefix(v, []byte(" "))
		switch lines {
		case 0:
			data = v
		case 1:
			data = append(append(append([]byte(nil), data...), '\n'), v...)
		default:
			data = append(append(data, '\n'), v...)
		}
		lines++
	}
	inPlace = lines == 1 && others == 0 && bytes.HasPrefix(ev, []byte("data: "))
	return data, inPlace, lines > 0
}
