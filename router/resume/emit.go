package resume

import "encoding/json"

// The chunks a continuation writes, in the shape of the stream it
// continues: same id, created, model and object as the engine's first
// chunk, so the client's SDK sees one answer.

type outChoice struct {
	Index        int       `json:"index"`
	Delta        *outDelta `json:"delta,omitempty"`
	Text         *string   `json:"text,omitempty"`
	FinishReason *string   `json:"finish_reason"`
}

type outDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type outChunk struct {
	ID                string      `json:"id"`
	Object            string      `json:"object"`
	Created           int64       `json:"created"`
	Model             string      `json:"model"`
	SystemFingerprint string      `json:"system_fingerprint,omitempty"`
	Choices           []outChoice `json:"choices"`
	Usage             *usage      `json:"usage,omitempty"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func (s *Stream) base() outChunk {
	obj := s.Object
	if obj == "" {
		obj = "chat.completion.chunk"
		if s.Kind == Completion {
			obj = "text_completion"
		}
	}
	return outChunk{ID: s.ID, Object: obj, Created: s.Created, Model: s.Model, SystemFingerprint: s.SystemFingerprint}
}

func (s *Stream) choice(content *string, finish *string) outChoice {
	c := outChoice{FinishReason: finish}
	if s.Kind == Completion {
		t := ""
		if content != nil {
			t = *content
		}
		c.Text = &t
		return c
	}
	c.Delta = &outDelta{Content: content}
	if !s.roleSent {
		c.Delta.Role = "assistant"
		s.roleSent = true
	}
	return c
}

func (s *Stream) contentChunk(text string) []byte {
	c := s.base()
	c.Choices = []outChoice{s.choice(&text, nil)}
	b, _ := sseData(c)
	return b
}

// finish writes the final chunk (the finish reason), the usage chunk when
// the client asked for it, counting the prompt once and every completion
// token of every engine, and [DONE].
func (s *Stream) finish(emit func([]byte) error, reason string, promptTokens int) error {
	c := s.base()
	c.Choices = []outChoice{s.choice(nil, &reason)}
	if s.Kind == Chat {
		c.Choices[0].Delta = &outDelta{}
	}
	b, _ := sseData(c)
	if err := emit(b); err != nil {
		return &ClientError{err}
	}
	s.sawFinish = true
	if s.clientUsage && !s.UsageSent {
		u := s.base()
		u.Choices = []outChoice{}
		if s.promptTokens > 0 {
			promptTokens = s.promptTokens
		}
		u.Usage = &usage{PromptTokens: promptTokens, CompletionTokens: len(s.Tokens), TotalTokens: promptTokens + len(s.Tokens)}
		b, _ := sseData(u)
		if err := emit(b); err != nil {
			return &ClientError{err}
		}
		s.UsageSent = true
	}
	if err := emit([]byte("data: [DONE]\n\n")); err != nil {
		return &ClientError{err}
	}
	s.Done = true
	return nil
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
