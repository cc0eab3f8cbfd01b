package router

// The response half of the Messages → Chat translation: a ResponseWriter
// the chat relay writes into, which writes Anthropic's shapes out. Errors
// (status >= 400, SSE error events) pass through untouched; the Anthropic
// envelope writer outside re-envelopes them.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/llorch/llorch/internal/apierr"
)

// stopReason maps a chat finish_reason to a Messages stop_reason. A stop
// sequence reads as end_turn: Chat Completions does not say which, or
// whether one, ended the answer.
func stopReason(finish string) string {
	switch finish {
	case "length":
		return "max_tokens"
	case "tool_calls", "function_call":
		return "tool_use"
	}
	return "end_turn"
}

type chatUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

type chatResponse struct {
	ID      string `json:"id"`
	Choices []struct {
		Message struct {
			Content   *string        `json:"content"`
			ToolCalls []chatToolCall `json:"tool_calls"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage *chatUsage `json:"usage"`
}

type anthUsage struct {
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
}

type anthOutBlock struct {
	Type  string          `json:"type"`
	Text  *string         `json:"text,omitempty"`
	ID    string          `json:"id,omitempty"`
	Name  string          `json:"name,omitempty"`
	Input json.RawMessage `json:"input,omitempty"`
}

type anthMessageOut struct {
	ID           string         `json:"id"`
	Type         string         `json:"type"`
	Role         string         `json:"role"`
	Model        string         `json:"model"`
	Content      []anthOutBlock `json:"content"`
	StopReason   *string        `json:"stop_reason"`
	StopSequence *string        `json:"stop_sequence"`
	Usage        anthUsage      `json:"usage"`
}

// messageID makes a Messages id from the engine's chat id.
func messageID(chatID string) string {
	return "msg_" + strings.TrimPrefix(chatID, "chatcmpl-")
}

// chatToMessage translates a non-streamed chat answer.
func chatToMessage(body []byte, model string) ([]byte, error) {
	var cr chatResponse
	if err := json.Unmarshal(body, &cr); err != nil {
		return nil, fmt.Errorf("the engine's chat answer is not JSON: %v", err)
	}
	if len(cr.Choices) == 0 {
		return nil, fmt.Errorf("the engine's chat answer has no choices")
	}
	ch := cr.Choices[0]
	out := anthMessageOut{ID: messageID(cr.ID), Type: "message", Role: "assistant", Model: model, Content: []anthOutBlock{}}
	if c := ch.Message.Content; c != nil && *c != "" {
		out.Content = append(out.Content, anthOutBlock{Type: "text", Text: c})
	}
	for _, tc := range ch.Message.ToolCalls {
		in := json.RawMessage(tc.Function.Arguments)
		if strings.TrimSpace(tc.Function.Arguments) == "" {
			in = json.RawMessage("{}")
		}
		if !json.Valid(in) {
			return nil, fmt.Errorf("the engine's tool call %q has arguments that are not JSON", tc.Function.Name)
		}
		out.Content = append(out.Content, anthOutBlock{Type: "tool_use", ID: tc.ID, Name: tc.Function.Name, Input: in})
	}
	sr := stopReason(ch.FinishReason)
	out.StopReason = &sr
	if cr.Usage != nil {
		out.Usage = anthUsage{InputTokens: cr.Usage.PromptTokens, OutputTokens: cr.Usage.CompletionTokens}
	}
	return json.Marshal(out)
}

type translateMode int

const (
	modeUndecided translateMode = iota
	modeJSON                    // buffer the chat answer, translate at finish
	modeSSE                     // translate chunk by chunk
	modePass                    // an error: pass it on
)

// chatToMessagesWriter turns a chat answer into a Messages answer.
type chatToMessagesWriter struct {
	w       http.ResponseWriter
	model   string
	mode    translateMode
	status  int
	buf     bytes.Buffer // modeJSON: the chat body; modeSSE: a partial event
	st      msgStream
	errored bool
}

func newChatToMessagesWriter(w http.ResponseWriter, model string) *chatToMessagesWriter {
	return &chatToMessagesWriter{w: w, model: model, st: msgStream{model: model, open: -1}}
}

func (t *chatToMessagesWriter) Header() http.Header { return t.w.Header() }

func (t *chatToMessagesWriter) WriteHeader(code int) {
	if t.mode != modeUndecided {
		return
	}
	t.status = code
	h := t.w.Header()
	switch {
	case code >= 400:
		t.mode = modePass
		t.w.WriteHeader(code)
	case bytes.HasPrefix([]byte(h.Get("Content-Type")), []byte("text/event-stream")):
		t.mode = modeSSE
		h.Del("Content-Length")
		t.w.WriteHeader(code)
	default:
		t.mode = modeJSON // written at finish, with its own length
	}
}

func (t *chatToMessagesWriter) Write(b []byte) (int, error) {
	if t.mode == modeUndecided {
		t.WriteHeader(http.StatusOK)
	}
	switch t.mode {
	case modePass:
		return t.w.Write(b)
	case modeJSON:
		return t.buf.Write(b)
	}
	t.buf.Write(b)
	var out []byte
	for {
		data := t.buf.Bytes()
		i := bytes.Index(data, []byte("\n\n"))
		if i < 0 {
			break
		}
		ev := data[:i+2]
		out = t.event(out, ev)
		t.buf.Next(i + 2)
	}
	if len(out) > 0 {
		if _, err := t.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// event translates one chat SSE event, appending the result to out.
func (t *chatToMessagesWriter) event(out, ev []byte) []byte {
	if bytes.HasPrefix(ev, []byte("event: error")) {
		t.errored = true
		return append(out, ev...)
	}
	for _, line := range bytes.Split(ev, []byte("\n")) {
		data, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue
		}
		data = bytes.TrimSpace(data)
		if string(data) == "[DONE]" {
			return t.st.end(out)
		}
		if len(data) > 0 {
			out = t.st.chunk(out, data)
		}
	}
	return out
}

// Flush passes on, except while a JSON answer is held back: flushing
// would commit the engine's headers (and length) before the translation.
func (t *chatToMessagesWriter) Flush() {
	if t.mode == modeSSE || t.mode == modePass {
		_ = http.NewResponseController(t.w).Flush()
	}
}

func (t *chatToMessagesWriter) Unwrap() http.ResponseWriter { return t.w }

// finish writes what was held back: the translated JSON answer, or the
// end of a stream the engine closed without [DONE].
func (t *chatToMessagesWriter) finish() {
	switch t.mode {
	case modeJSON:
		b, err := chatToMessage(t.buf.Bytes(), t.model)
		if err != nil {
			apierr.Write(t.w, apierr.New(http.StatusBadGateway, CodeInternal, "%s", err.Error()))
			return
		}
		h := t.w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(b)))
		t.w.WriteHeader(t.status)
		_, _ = t.w.Write(b)
	case modeSSE:
		if !t.errored && t.st.started && !t.st.done && t.st.finish != "" {
			_, _ = t.w.Write(t.st.end(nil))
			t.Flush()
		}
	}
}

// msgStream is the state of one translated stream.
type msgStream struct {
	model    string
	started  bool
	done     bool
	open     int    // index of the open content block, -1 if none
	openKind string // "text" or "tool_use"
	next     int    // index of the next block
	tools    map[int]int
	finish   string
	usage    anthUsage
}

type chatChunk struct {
	ID      string `json:"id"`
	Choices []struct {
		Delta struct {
			Content   *string `json:"content"`
			ToolCalls []struct {
				Index    int    `json:"index"`
				ID       string `json:"id"`
				Function struct {
					Name      string `json:"name"`
					Arguments string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *chatUsage `json:"usage"`
}

func sseEv(out []byte, typ string, v any) []byte {
	b, _ := json.Marshal(v)
	out = append(out, "event: "...)
	out = append(out, typ...)
	out = append(out, "\ndata: "...)
	out = append(out, b...)
	return append(out, "\n\n"...)
}

func (s *msgStream) closeBlock(out []byte) []byte {
	if s.open < 0 {
		return out
	}
	out = sseEv(out, "content_block_stop", map[string]any{"type": "content_block_stop", "index": s.open})
	s.open = -1
	return out
}

func (s *msgStream) startBlock(out []byte, kind string, block any) []byte {
	out = s.closeBlock(out)
	s.open, s.openKind = s.next, kind
	s.next++
	return sseEv(out, "content_block_start", map[string]any{"type": "content_block_start", "index": s.open, "content_block": block})
}

func (s *msgStream) chunk(out, data []byte) []byte {
	if s.done {
		return out
	}
	var c chatChunk
	if json.Unmarshal(data, &c) != nil {
		return out // not a chunk (engines' keep-alive comments and the like)
	}
	if !s.started {
		s.started = true
		out = sseEv(out, "message_start", map[string]any{"type": "message_start", "message": anthMessageOut{
			ID: messageID(c.ID), Type: "message", Role: "assistant", Model: s.model, Content: []anthOutBlock{}}})
	}
	if c.Usage != nil {
		s.usage = anthUsage{InputTokens: c.Usage.PromptTokens, OutputTokens: c.Usage.CompletionTokens}
	}
	for _, ch := range c.Choices {
		if txt := ch.Delta.Content; txt != nil && *txt != "" {
			if s.open < 0 || s.openKind != "text" {
				out = s.startBlock(out, "text", map[string]any{"type": "text", "text": ""})
			}
			out = sseEv(out, "content_block_delta", map[string]any{"type": "content_block_delta", "index": s.open,
				"delta": map[string]string{"type": "text_delta", "text": *txt}})
		}
		for _, tc := range ch.Delta.ToolCalls {
			if s.tools == nil {
				s.tools = map[int]int{}
			}
			idx, seen := s.tools[tc.Index]
			if !seen {
				out = s.startBlock(out, "tool_use", map[string]any{"type": "tool_use", "id": tc.ID, "name": tc.Function.Name, "input": map[string]any{}})
				idx = s.open
				s.tools[tc.Index] = idx
			}
			if tc.Function.Arguments != "" && idx == s.open {
				out = sseEv(out, "content_block_delta", map[string]any{"type": "content_block_delta", "index": idx,
					"delta": map[string]string{"type": "input_json_delta", "partial_json": tc.Function.Arguments}})
			}
		}
		if ch.FinishReason != nil && *ch.FinishReason != "" {
			s.finish = *ch.FinishReason
		}
	}
	return out
}

// end closes the open block and the message.
func (s *msgStream) end(out []byte) []byte {
	if s.done || !s.started {
		return out
	}
	s.done = true
	out = s.closeBlock(out)
	out = sseEv(out, "message_delta", map[string]any{"type": "message_delta",
		"delta": map[string]any{"stop_reason": stopReason(s.finish), "stop_sequence": nil}, "usage": s.usage})
	return sseEv(out, "message_stop", map[string]any{"type": "message_stop"})
}
