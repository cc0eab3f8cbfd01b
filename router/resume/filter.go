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
