package resume

import (
	"bytes"
	"encoding/json"

	"github.com/llorch/llorch/internal/jsonscan"
)

// The filter reads each engine event without decoding it: a walk of the
// event finds the fields the stream follows, read as encoding/json would
// read them into the chunk's Go shape (keys matched case-insensitively, a
// value of the wrong type makes the event unreadable), and the injected
// logprobs are cut out of the event's own bytes, in place.

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

// Filter reads one SSE event from the engine, records what it carries and
// returns the event to write to the client: unchanged, or with the
// logprobs the router asked for removed. Events it cannot read pass
// through unchanged and make the stream unresumable (never a wrong resume).
//
// An event that loses its logprobs is edited in ev's own memory (the
// result shares it) when it is one "data: " line, as engines send them.
func (s *Stream) Filter(ev []byte) []byte {
	data, inPlace, ok := eventData(ev)
	if !ok {
		return ev // comment, keep-alive, or an event without data
	}
	if string(data) == "[DONE]" {
		s.Done = true
		return ev
	}
	if string(jsonscan.Trim(data)) == "null" {
		return ev // decodes to an empty chunk: nothing to follow
	}
	var c chunkView
	var ch choiceView
	tokens := len(s.Tokens)
	n := 0
	ok = c.read(data)
	if ok && c.hasChoices {
		n, ok = readChoices(c.choices, &ch, s)
	}
	if !ok {
		s.Tokens = s.Tokens[:tokens]
		s.block("an engine event the router could not read")
		return ev
	}
	if s.ID == "" {
		s.setIdentity(&c)
	}
	if !jsonscan.IsNull(c.usage) {
		s.promptTokens = promptTokens(c.usage)
		s.UsageSent = true
	}
	if n > 1 {
		s.Tokens = s.Tokens[:tokens]
		s.block("several choices")
		return ev
	}
	if n == 0 {
		return ev
	}
	if ch.finish {
		s.sawFinish = true
	}
	if ch.hasDelta {
		if len(ch.role) > 2 { // a non-empty string
			s.roleSent = true
		}
		if !jsonscan.IsNull(ch.toolCalls) {
			s.block("the answer is a tool call")
		}
		if len(ch.reason) > 2 {
			s.block("the answer is inside a reasoning block")
		}
		if ch.content != nil {
			s.Text, _ = jsonscan.AppendString(s.Text, ch.content)
		}
	}
	if ch.text != nil {
		s.Text, _ = jsonscan.AppendString(s.Text, ch.text)
	}
	if !ch.logprobs {
		if len(ch.content) > 2 || len(ch.text) > 2 {
			s.block("the engine sent text without token ids")
		}
		return ev
	}
	if !s.injected {
		return ev
	}
	if ch.cutsFull {
		s.block("an engine event the router could not read")
		return ev
	}
	if ch.cuts.Len() == 0 {
		return ev // a "Logprobs" key: decoded, but not the member to cut
	}
	return withoutLogprobs(ev, data, inPlace, &c, &ch)
}

// withoutLogprobs is the event with the first choice's logprobs members
// cut, as one "data: " line.
func withoutLogprobs(ev, data []byte, inPlace bool, c *chunkView, ch *choiceView) []byte {
	es, ee := ch.start+c.choicesAt, ch.end+c.choicesAt // the choice's span in data
	if inPlace {
		// Bytes only move towards the start, and a cut member (at least
		// `"logprobs":0`) is longer than the line end written: ev holds
		// the result, and nothing past len(ev) is touched.
		out := ch.cuts.AppendTo(ev[:len("data: ")+es], data[es:ee])
		out = append(out, data[ee:]...)
		return append(out, "\n\n"...)
	}
	var j bytes.Buffer
	j.Grow(len(data))
	j.Write(data[:es])
	j.Write(ch.cuts.AppendTo(nil, data[es:ee]))
	j.Write(data[ee:])
	out := make([]byte, 0, j.Len()+8)
	out = append(out, "data: "...)
	// Joined data lines may hold newlines: one data line needs compact JSON.
	var cj bytes.Buffer
	if json.Compact(&cj, j.Bytes()) == nil {
		out = append(out, cj.Bytes()...)
	} else {
		out = append(out, j.Bytes()...)
	}
	return append(out, "\n\n"...)
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

// setIdentity keeps the first chunk's id, object, model and fingerprint:
// one allocation for the four.
func (s *Stream) setIdentity(c *chunkView) {
	var buf [256]byte
	b := buf[:0]
	var ends [4]int
	for i, v := range [4][]byte{c.id, c.object, c.model, c.fingerprint} {
		if v != nil {
			b, _ = jsonscan.AppendString(b, v)
		}
		ends[i] = len(b)
	}
	all := string(b)
	s.ID, s.Object, s.Model, s.SystemFingerprint = all[:ends[0]], all[ends[0]:ends[1]], all[ends[1]:ends[2]], all[ends[2]:ends[3]]
	s.Created = c.created
}

// Finished reports whether the engine ended the answer itself (a finish
// reason or [DONE]); an upstream EOF before that is a break.
func (s *Stream) Finished() bool { return s.Done || s.sawFinish }

func (s *Stream) block(why string) {
	if s.blocked == "" {
		s.blocked = why
	}
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
