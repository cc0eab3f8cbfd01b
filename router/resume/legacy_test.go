package resume

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// The filter and Prepare as they were, decoding and re-encoding with
// encoding/json: the reference the scanning ones are compared with (the
// client must see the same answer) and benchmarked against.

type legacyChunk struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint string          `json:"system_fingerprint,omitempty"`
	Choices           []legacyChoice  `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

type legacyChoice struct {
	Index        int             `json:"index"`
	Delta        *legacyDelta    `json:"delta,omitempty"`
	Text         *string         `json:"text,omitempty"`
	Logprobs     *legacyLogprobs `json:"logprobs,omitempty"`
	FinishReason *string         `json:"finish_reason"`
}

type legacyDelta struct {
	Role             string          `json:"role,omitempty"`
	Content          *string         `json:"content,omitempty"`
	ReasoningContent *string         `json:"reasoning_content,omitempty"`
	ToolCalls        json.RawMessage `json:"tool_calls,omitempty"`
}

type legacyLogprobs struct {
	Content []struct {
		ID int `json:"id"`
	} `json:"content"`
}

func legacyIsTrue(v json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(v), []byte("true")) }

func legacyPrepare(kind Kind, body []byte) ([]byte, *Stream, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotResumable, err)
	}
	if !legacyIsTrue(top["stream"]) {
		return nil, nil, fmt.Errorf("%w: not streaming", ErrNotResumable)
	}
	if n, ok := top["n"]; ok && !bytes.Equal(bytes.TrimSpace(n), []byte("1")) && !isNull(n) {
		return nil, nil, fmt.Errorf("%w: several choices", ErrNotResumable)
	}
	s := &Stream{Kind: kind}
	if so, ok := top["stream_options"]; ok {
		var v struct {
			IncludeUsage bool `json:"include_usage"`
		}
		_ = json.Unmarshal(so, &v)
		s.clientUsage = v.IncludeUsage
	}
	switch kind {
	case Chat:
		if legacyIsTrue(top["logprobs"]) {
			return nil, nil, fmt.Errorf("%w: the client asked for logprobs", ErrNotResumable)
		}
		top["logprobs"] = json.RawMessage("true")
		top["top_logprobs"] = json.RawMessage("1")
	case Completion:
		if lp, ok := top["logprobs"]; ok && !isNull(lp) {
			return nil, nil, fmt.Errorf("%w: the client asked for logprobs", ErrNotResumable)
		}
		top["logprobs"] = json.RawMessage("1")
	}
	s.injected = true
	out, err := json.Marshal(top)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotResumable, err)
	}
	return out, s, nil
}

func (s *Stream) legacyFilter(ev []byte) []byte {
	data, ok := legacyEventData(ev)
	if !ok {
		return ev
	}
	if bytes.Equal(data, []byte("[DONE]")) {
		s.Done = true
		return ev
	}
	var c legacyChunk
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
	out, err := legacyWithoutLogprobs(data)
	if err != nil {
		s.block("re-encoding an engine event failed")
		return ev
	}
	return out
}

func legacyWithoutLogprobs(data []byte) ([]byte, error) {
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

func legacyEventData(ev []byte) ([]byte, bool) {
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
