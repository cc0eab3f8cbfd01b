package resume

import (
	"bytes"
	"encoding/json"
)

// chunk is the part of a streamed chat or completion chunk the filter
// reads and, when it stripped logprobs, writes back.
type chunk struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint string          `json:"system_fingerprint,omitempty"`
	Choices           []choice        `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

type choice struct {
	Index        int       `json:"index"`
	Delta        *delta    `json:"delta,omitempty"`
	Text         *string   `json:"text,omitempty"`
	Logprobs     *logprobs `json:"logprobs,omitempty"`
	FinishReason *string   `json:"finish_reason"`
}

type delta struct {
	Role             string          `json:"role,omitempty"`
	Content          *string         `json:"content,omitempty"`
	ReasoningContent *string         `json:"reasoning_content,omitempty"`
	ToolCalls        json.RawMessage `json:"tool_calls,omitempty"`
}

type logprobs struct {
	Content []struct {
		ID int `json:"id"`
	} `json:"content"`
}

// Filter reads one SSE event from the engine, records what it carries and
// returns the event to write to the client: unchanged, or with the
// logprobs the router asked for removed. Events it cannot read pass
// through unchanged and make the stream unresumable (never a wrong resume).
func (s *Stream) Filter(ev []byte) []byte {
	data, ok := eventData(ev)
	if !ok {
		return ev // comment, keep-alive, or an event without data
	}
	if bytes.Equal(data, []byte("[DONE]")) {
		s.Done = true
		return ev
	}
	var c chunk
	if err := json.Unmarshal(data, &c); err != nil {
		s.block("an engine event the router could not read")
		return ev
	}
	if s.ID == "" {
		s.ID, s.Object, s.Created, s.Model, s.SystemFingerprint = c.ID, c.Object, c.Created, c.Model, c.SystemFingerprint
	}
	if len(c.Usage) > 0 && !isNull(c.Usage) {
		var u struct {
			PromptTokens int `json:"prompt_tokens"`
		}
		_ = json.Unmarshal(c.Usage, &u)
		s.promptTokens = u.PromptTokens
		s.UsageSent = true
	}
	if len(c.Choices) > 1 {
		s.block("several choices")
		return ev
	}
	stripped := false
	for i := range c.Choices {
		ch := &c.Choices[i]
		if ch.FinishReason != nil {
			s.sawFinish = true
		}
		if ch.Delta != nil {
			if ch.Delta.Role != "" {
				s.roleSent = true
			}
			if len(ch.Delta.ToolCalls) > 0 && !isNull(ch.Delta.ToolCalls) {
				s.block("the answer is a tool call")
			}
			if ch.Delta.ReasoningContent != nil && *ch.Delta.ReasoningContent != "" {
				s.block("the answer is inside a reasoning block")
			}
			if ch.Delta.Content != nil {
				s.Text = append(s.Text, *ch.Delta.Content...)
			}
		}
		if ch.Text != nil {
			s.Text = append(s.Text, *ch.Text...)
		}
		if ch.Logprobs != nil {
			for _, t := range ch.Logprobs.Content {
				s.Tokens = append(s.Tokens, t.ID)
			}
			if s.injected {
				ch.Logprobs = nil
				stripped = true
			}
		} else if (ch.Delta != nil && ch.Delta.Content != nil && *ch.Delta.Content != "") || (ch.Text != nil && *ch.Text != "") {
			s.block("the engine sent text without token ids")
		}
	}
	if !stripped {
		return ev
	}
	// Only chunks that carried injected logprobs are re-encoded, and only
	// that field goes: everything else the engine sent stays.
	out, err := withoutLogprobs(data)
	if err != nil {
		s.block("re-encoding an engine event failed")
		return ev
	}
	return out
}

// Finished reports whether the engine ended the answer itself (a finish
// reason or [DONE]); an upstream EOF before that is a break.
func (s *Stream) Finished() bool { return s.Done || s.sawFinish }

func (s *Stream) block(why string) {
	if s.blocked == "" {
		s.blocked = why
	}
}

func withoutLogprobs(data []byte) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, err
	}
	var choices []map[string]json.RawMessage
	if err := json.Unmarshal(top["choices"], &choices); err != nil {
		return nil, err
	}
	for _, c := range choices {
		delete(c, "logprobs")
	}
	cb, err := json.Marshal(choices)
	if err != nil {
		return nil, err
	}
	top["choices"] = cb
	return sseData(top)
}

// sseData encodes v as one SSE data event.
func sseData(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(b)+8)
	out = append(out, "data: "...)
	out = append(out, b...)
	return append(out, "\n\n"...), nil
}

// eventData returns the data of an SSE event (data lines joined by "\n").
func eventData(ev []byte) ([]byte, bool) {
	var data []byte
	found := false
	for len(ev) > 0 {
		line := ev
		if i := bytes.IndexByte(ev, '\n'); i >= 0 {
			line, ev = ev[:i], ev[i+1:]
		} else {
			ev = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if v, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			v = bytes.TrimPrefix(v, []byte(" "))
			if found {
				data = append(data, '\n')
			}
			data = append(data, v...)
			found = true
		}
	}
	return data, found
}
