package router

// Anthropic Messages → OpenAI Chat Completions, for engines that serve
// chat but not /v1/messages. Only what maps exactly is translated: text,
// system, stop sequences, sampling, tools and tool results. Anything else
// (images, documents, thinking, server tools, tool errors, unknown fields)
// is refused with the feature named, never dropped silently. The one
// hint that is dropped is cache_control: prompt caching is the engine's
// business and changes no answer.

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// errUntranslatable names what a Messages request uses that Chat
// Completions cannot express exactly.
type errUntranslatable struct{ what string }

func (e *errUntranslatable) Error() string { return e.what }

func untranslatable(format string, args ...any) error {
	return &errUntranslatable{fmt.Sprintf(format, args...)}
}

// messagesTopLevel are the request fields the translation carries.
var messagesTopLevel = map[string]bool{
	"model": true, "messages": true, "system": true, "max_tokens": true, "stop_sequences": true,
	"stream": true, "temperature": true, "top_p": true, "top_k": true, "tools": true,
	"tool_choice": true, "metadata": true,
}

type anthBlock struct {
	Type      string          `json:"type"`
	Text      string          `json:"text"`
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Input     json.RawMessage `json:"input"`
	ToolUseID string          `json:"tool_use_id"`
	Content   json.RawMessage `json:"content"`
	IsError   bool            `json:"is_error"`
}

// blockKeys are the block fields the translation understands, per type.
var blockKeys = map[string]map[string]bool{
	"text":        {"type": true, "text": true, "cache_control": true},
	"tool_use":    {"type": true, "id": true, "name": true, "input": true, "cache_control": true},
	"tool_result": {"type": true, "tool_use_id": true, "content": true, "is_error": true, "cache_control": true},
}

type anthMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type anthTool struct {
	Type        string          `json:"type"`
	Name        string          `json:"name"`
	Description string          `json:"description"`
	InputSchema json.RawMessage `json:"input_schema"`
}

type anthToolChoice struct {
	Type                   string `json:"type"`
	Name                   string `json:"name"`
	DisableParallelToolUse bool   `json:"disable_parallel_tool_use"`
}

type anthRequest struct {
	Model         string          `json:"model"`
	Messages      []anthMessage   `json:"messages"`
	System        json.RawMessage `json:"system"`
	MaxTokens     *int            `json:"max_tokens"`
	StopSequences []string        `json:"stop_sequences"`
	Stream        bool            `json:"stream"`
	Temperature   *float64        `json:"temperature"`
	TopP          *float64        `json:"top_p"`
	TopK          *int            `json:"top_k"`
	Tools         []anthTool      `json:"tools"`
	ToolChoice    *anthToolChoice `json:"tool_choice"`
	Metadata      *struct {
		UserID string `json:"user_id"`
	} `json:"metadata"`
}

type chatToolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type chatMessage struct {
	Role       string         `json:"role"`
	Content    any            `json:"content,omitempty"`
	ToolCalls  []chatToolCall `json:"tool_calls,omitempty"`
	ToolCallID string         `json:"tool_call_id,omitempty"`
}

type chatPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

type chatTool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description,omitempty"`
		Parameters  json.RawMessage `json:"parameters,omitempty"`
	} `json:"function"`
}

type chatRequest struct {
	Model             string          `json:"model"`
	Messages          []chatMessage   `json:"messages"`
	MaxTokens         int             `json:"max_tokens"`
	Stop              []string        `json:"stop,omitempty"`
	Stream            bool            `json:"stream"`
	StreamOptions     *streamOptions  `json:"stream_options,omitempty"`
	Temperature       *float64        `json:"temperature,omitempty"`
	TopP              *float64        `json:"top_p,omitempty"`
	TopK              *int            `json:"top_k,omitempty"`
	Tools             []chatTool      `json:"tools,omitempty"`
	ToolChoice        json.RawMessage `json:"tool_choice,omitempty"`
	ParallelToolCalls *bool           `json:"parallel_tool_calls,omitempty"`
	User              string          `json:"user,omitempty"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// unknownKeys lists the keys of a JSON object not in allowed, sorted.
func unknownKeys(raw json.RawMessage, allowed map[string]bool) ([]string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	var out []string
	for k := range m {
		if !allowed[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out, nil
}

// textOrBlocks reads a content field: a string, or an array of blocks.
func textOrBlocks(raw json.RawMessage) (string, []anthBlock, []json.RawMessage, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil, nil, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil, nil, nil
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(raw, &raws); err != nil {
		return "", nil, nil, fmt.Errorf("content must be a string or an array of blocks")
	}
	blocks := make([]anthBlock, len(raws))
	for i, r := range raws {
		if err := json.Unmarshal(r, &blocks[i]); err != nil {
			return "", nil, nil, fmt.Errorf("content block %d: %v", i, err)
		}
	}
	return "", blocks, raws, nil
}

// checkBlock refuses block types and fields the translation cannot carry.
func checkBlock(b anthBlock, raw json.RawMessage, where string) error {
	allowed, ok := blockKeys[b.Type]
	if !ok {
		return untranslatable("%s: content blocks of type %q", where, b.Type)
	}
	extra, err := unknownKeys(raw, allowed)
	if err != nil {
		return err
	}
	if len(extra) > 0 {
		return untranslatable("%s: %s block fields %s", where, b.Type, strings.Join(extra, ", "))
	}
	if b.IsError {
		return untranslatable("%s: tool_result with is_error (Chat Completions has no error flag on tool results)", where)
	}
	return nil
}

// textContent is the chat content for text blocks: a string for one
// block, text parts for several (so block boundaries survive).
func textContent(texts []string) any {
	switch len(texts) {
	case 0:
		return nil
	case 1:
		return texts[0]
	}
	parts := make([]chatPart, len(texts))
	for i, t := range texts {
		parts[i] = chatPart{Type: "text", Text: t}
	}
	return parts
}

// toolResultText is a tool_result's content as text: a string or text blocks.
func toolResultText(raw json.RawMessage, where string) (any, error) {
	s, blocks, raws, err := textOrBlocks(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", where, err)
	}
	if blocks == nil {
		return s, nil
	}
	var texts []string
	for i, b := range blocks {
		if b.Type != "text" {
			return nil, untranslatable("%s: tool_result content of type %q", where, b.Type)
		}
		if err := checkBlock(b, raws[i], where); err != nil {
			return nil, err
		}
		texts = append(texts, b.Text)
	}
	if c := textContent(texts); c != nil {
		return c, nil
	}
	return "", nil
}

// messagesToChat translates a Messages request body into a Chat
// Completions body for model (the alias-resolved name). A plain error is
// a malformed request (400); *errUntranslatable is a request that is
// fine but cannot be carried exactly.
func messagesToChat(body []byte, model string) ([]byte, anthRequest, error) {
	var req anthRequest
	extra, err := unknownKeys(body, messagesTopLevel)
	if err != nil {
		return nil, req, fmt.Errorf("request body is not a JSON object: %v", err)
	}
	if len(extra) > 0 {
		return nil, req, untranslatable("request fields %s", strings.Join(extra, ", "))
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, req, fmt.Errorf("request body: %v", err)
	}
	if req.MaxTokens == nil || *req.MaxTokens < 1 {
		return nil, req, fmt.Errorf(`field "max_tokens" is required (an integer >= 1)`)
	}
	out := chatRequest{Model: model, MaxTokens: *req.MaxTokens, Stop: req.StopSequences, Stream: req.Stream,
		Temperature: req.Temperature, TopP: req.TopP, TopK: req.TopK}
	if req.Stream {
		out.StreamOptions = &streamOptions{IncludeUsage: true}
	}
	if req.Metadata != nil {
		out.User = req.Metadata.UserID
	}

	// System: a string or text blocks.
	if s, blocks, raws, err := textOrBlocks(req.System); err != nil {
		return nil, req, fmt.Errorf("system: %v", err)
	} else if blocks == nil && s != "" {
		out.Messages = append(out.Messages, chatMessage{Role: "system", Content: s})
	} else if blocks != nil {
		var texts []string
		for i, b := range blocks {
			if b.Type != "text" {
				return nil, req, untranslatable("system: blocks of type %q", b.Type)
			}
			if err := checkBlock(b, raws[i], "system"); err != nil {
				return nil, req, err
			}
			texts = append(texts, b.Text)
		}
		if c := textContent(texts); c != nil {
			out.Messages = append(out.Messages, chatMessage{Role: "system", Content: c})
		}
	}

	if len(req.Messages) == 0 {
		return nil, req, fmt.Errorf(`field "messages" must hold at least one message`)
	}
	for i, m := range req.Messages {
		where := fmt.Sprintf("messages[%d]", i)
		if m.Role != "user" && m.Role != "assistant" {
			return nil, req, fmt.Errorf("%s: role must be user or assistant, not %q", where, m.Role)
		}
		s, blocks, raws, err := textOrBlocks(m.Content)
		if err != nil {
			return nil, req, fmt.Errorf("%s: %v", where, err)
		}
		if blocks == nil {
			out.Messages = append(out.Messages, chatMessage{Role: m.Role, Content: s})
			continue
		}
		var texts []string
		var calls []chatToolCall
		var results []chatMessage
		for j, b := range blocks {
			bw := fmt.Sprintf("%s.content[%d]", where, j)
			if err := checkBlock(b, raws[j], bw); err != nil {
				return nil, req, err
			}
			switch b.Type {
			case "text":
				texts = append(texts, b.Text)
			case "tool_use":
				if m.Role != "assistant" {
					return nil, req, fmt.Errorf("%s: tool_use blocks belong to assistant messages", bw)
				}
				in := b.Input
				if len(in) == 0 || string(in) == "null" {
					in = json.RawMessage("{}")
				}
				var c chatToolCall
				c.ID, c.Type, c.Function.Name, c.Function.Arguments = b.ID, "function", b.Name, string(in)
				calls = append(calls, c)
			case "tool_result":
				if m.Role != "user" {
					return nil, req, fmt.Errorf("%s: tool_result blocks belong to user messages", bw)
				}
				if len(texts) > 0 {
					// Chat puts tool results in their own messages; text
					// before a result would change places.
					return nil, req, untranslatable("%s: text before a tool_result in the same message", bw)
				}
				c, err := toolResultText(b.Content, bw)
				if err != nil {
					return nil, req, err
				}
				results = append(results, chatMessage{Role: "tool", ToolCallID: b.ToolUseID, Content: c})
			}
		}
		out.Messages = append(out.Messages, results...)
		if len(texts) > 0 || len(calls) > 0 {
			cm := chatMessage{Role: m.Role, Content: textContent(texts), ToolCalls: calls}
			if cm.Content == nil && len(calls) == 0 {
				cm.Content = ""
			}
			out.Messages = append(out.Messages, cm)
		} else if len(results) == 0 {
			out.Messages = append(out.Messages, chatMessage{Role: m.Role, Content: ""})
		}
	}

	for i, t := range req.Tools {
		if t.Type != "" && t.Type != "custom" {
			return nil, req, untranslatable("tools[%d]: server tool %q", i, t.Type)
		}
		var ct chatTool
		ct.Type = "function"
		ct.Function.Name, ct.Function.Description, ct.Function.Parameters = t.Name, t.Description, t.InputSchema
		out.Tools = append(out.Tools, ct)
	}
	if tc := req.ToolChoice; tc != nil {
		switch tc.Type {
		case "auto":
			out.ToolChoice = json.RawMessage(`"auto"`)
		case "any":
			out.ToolChoice = json.RawMessage(`"required"`)
		case "none":
			out.ToolChoice = json.RawMessage(`"none"`)
		case "tool":
			b, _ := json.Marshal(map[string]any{"type": "function", "function": map[string]string{"name": tc.Name}})
			out.ToolChoice = b
		default:
			return nil, req, fmt.Errorf("tool_choice: type %q is not auto, any, tool or none", tc.Type)
		}
		if tc.DisableParallelToolUse {
			f := false
			out.ParallelToolCalls = &f
		}
	}
	b, err := json.Marshal(out)
	return b, req, err
}
