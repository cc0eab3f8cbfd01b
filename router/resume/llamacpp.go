package resume

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// LlamaCpp continues streams on llama-server: the prompt's tokens from
// /apply-template and /tokenize (as the chat endpoint tokenises them, BOS
// included), followed by the token ids already sent, go to the native
// /completion endpoint, whose stream carries each new token's id too.
type LlamaCpp struct {
	Client *http.Client
}

// sampling are the request fields the native endpoint takes under the same
// name and that change what is generated; all are copied when present.
var sampling = []string{"temperature", "top_p", "top_k", "min_p", "typical_p", "seed", "stop",
	"presence_penalty", "frequency_penalty", "repeat_penalty", "repeat_last_n", "logit_bias",
	"dynatemp_range", "dynatemp_exponent", "mirostat", "mirostat_tau", "mirostat_eta",
	"dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "xtc_probability",
	"xtc_threshold", "top_n_sigma", "ignore_eos", "samplers", "n_keep", "id_slot"}

// unsupported are request fields whose effect the native endpoint would not
// reproduce on the continuation (parsed tool calls, structured output,
// grammars): such streams end with the error event instead.
var unsupported = []string{"tools", "functions", "response_format", "grammar", "json_schema", "n_probs"}

// Check says whether the body can be continued on llama-server.
func (LlamaCpp) Check(kind Kind, body []byte) error {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return fmt.Errorf("%w: %v", ErrNotResumable, err)
	}
	for _, k := range unsupported {
		if v, ok := top[k]; ok && !isNull(v) {
			return fmt.Errorf("%w: %s is set", ErrNotResumable, k)
		}
	}
	if kind == Completion {
		if p := bytes.TrimSpace(top["prompt"]); len(p) > 0 && p[0] == '[' {
			var ids []int
			if json.Unmarshal(p, &ids) != nil {
				return fmt.Errorf("%w: several prompts", ErrNotResumable)
			}
		}
	}
	return nil
}

func isNull(v json.RawMessage) bool {
	t := bytes.TrimSpace(v)
	return len(t) == 0 || bytes.Equal(t, []byte("null"))
}

// Call is one engine request of a continuation: the engine's base URL and
// the headers it needs (engine token, correlation id, trace context).
type Call struct {
	Base   string
	Header http.Header
}

// Continue asks the instance at c.Base for the rest of the answer to body
// and writes it to emit as SSE events in the stream's own format, ending
// with the final chunk, the usage chunk when the client asked for it and
// [DONE]. The stream's text and tokens grow as events are emitted, so a
// failed continuation can itself be continued.
func (l LlamaCpp) Continue(ctx context.Context, c Call, body []byte, s *Stream, emit func([]byte) error) error {
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil {
		return fmt.Errorf("%w: %v", ErrNotResumable, err)
	}
	prompt, err := l.promptTokens(ctx, c, s.Kind, body, req)
	if err != nil {
		return err
	}
	remaining := -1
	for _, k := range []string{"max_completion_tokens", "max_tokens", "n_predict"} {
		var n int
		if v, ok := req[k]; ok && json.Unmarshal(v, &n) == nil && n > 0 {
			remaining = n - len(s.Tokens)
			break
		}
	}
	if remaining == 0 {
		return s.finish(emit, "length", len(prompt))
	}
	native := map[string]any{"stream": true, "return_tokens": true, "cache_prompt": true, "n_predict": remaining,
		"prompt": append(append(make([]int, 0, len(prompt)+len(s.Tokens)), prompt...), s.Tokens...)}
	for _, k := range sampling {
		if v, ok := req[k]; ok && !isNull(v) {
			native[k] = v
		}
	}
	nb, _ := json.Marshal(native)
	resp, err := l.post(ctx, c, "/completion", nb)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 4<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			data, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("data:"))
			if !ok {
				continue
			}
			var ev struct {
				Content  string `json:"content"`
				Tokens   []int  `json:"tokens"`
				Stop     bool   `json:"stop"`
				StopType string `json:"stop_type"`
			}
			if jerr := json.Unmarshal(bytes.TrimSpace(data), &ev); jerr != nil {
				return fmt.Errorf("reading the continuation: %w", jerr)
			}
			if ev.Content != "" || len(ev.Tokens) > 0 {
				if werr := emit(s.contentChunk(ev.Content)); werr != nil {
					return &ClientError{werr}
				}
				s.Text = append(s.Text, ev.Content...)
				s.Tokens = append(s.Tokens, ev.Tokens...)
			}
			if ev.Stop {
				reason := "stop"
				if ev.StopType == "limit" {
					reason = "length"
				}
				return s.finish(emit, reason, len(prompt))
			}
		}
		if err == io.EOF {
			return fmt.Errorf("the continuation ended before its last event: %w", io.ErrUnexpectedEOF)
		}
		if err != nil {
			return fmt.Errorf("reading the continuation: %w", err)
		}
	}
}

// ClientError wraps a failed write to the client: nothing more to do.
type ClientError struct{ Err error }

func (e *ClientError) Error() string { return "writing to the client: " + e.Err.Error() }
func (e *ClientError) Unwrap() error { return e.Err }

// promptTokens tokenises the request's prompt as the engine's own endpoint
// does for the original request.
func (l LlamaCpp) promptTokens(ctx context.Context, c Call, kind Kind, body []byte, req map[string]json.RawMessage) ([]int, error) {
	var text string
	switch kind {
	case Chat:
		resp, err := l.post(ctx, c, "/apply-template", body)
		if err != nil {
			return nil, err
		}
		var v struct {
			Prompt string `json:"prompt"`
		}
		err = json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&v)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("reading /apply-template: %w", err)
		}
		text = v.Prompt
	case Completion:
		p := bytes.TrimSpace(req["prompt"])
		if len(p) > 0 && p[0] == '[' {
			var ids []int
			if err := json.Unmarshal(p, &ids); err != nil {
				return nil, fmt.Errorf("%w: several prompts", ErrNotResumable)
			}
			return ids, nil
		}
		if err := json.Unmarshal(p, &text); err != nil {
			return nil, fmt.Errorf("%w: prompt: %v", ErrNotResumable, err)
		}
	}
	tb, _ := json.Marshal(map[string]any{"content": text, "add_special": true, "parse_special": true})
	resp, err := l.post(ctx, c, "/tokenize", tb)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var v struct {
		Tokens []int `json:"tokens"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&v); err != nil {
		return nil, fmt.Errorf("reading /tokenize: %w", err)
	}
	return v.Tokens, nil
}

func (l LlamaCpp) post(ctx context.Context, c Call, path string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range c.Header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	client := l.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, &StatusError{Path: path, Status: resp.StatusCode, Body: string(b)}
	}
	return resp, nil
}

// StatusError is an engine answer other than 200 during a continuation.
type StatusError struct {
	Path   string
	Status int
	Body   string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s answered %d: %s", e.Path, e.Status, e.Body)
}

// IsClient reports whether err is a failed write to the client.
func IsClient(err error) bool {
	var ce *ClientError
	return errors.As(err, &ce)
}
