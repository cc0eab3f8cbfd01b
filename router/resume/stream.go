// Package resume continues an OpenAI-style stream on another engine instance
// when the one serving it fails after the first byte, so the client sees one
// unbroken answer. Stream follows what has reached the client (the text and
// the engine's token ids); a Resumer, one per engine kind, asks a healthy
// instance for the rest and writes it in the client's format.
//
// Exactness: llama-server re-run with the prompt's tokens followed by the
// token ids already generated continues exactly as the unbroken run would
// have (greedy sampling); re-sending the text as an assistant prefill does
// not, because the text is re-tokenised and re-templated. So the stream asks
// the engine for token ids (logprobs with one alternative) and strips them
// from what the client sees when the client did not ask for them.
package resume

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Kind is the API shape of a stream.
type Kind int

const (
	Chat       Kind = iota // /v1/chat/completions
	Completion             // /v1/completions
)

// KindOf maps a request path to the kind of stream it answers, ok false
// for paths that cannot be resumed.
func KindOf(path string) (Kind, bool) {
	switch path {
	case "/v1/chat/completions":
		return Chat, true
	case "/v1/completions":
		return Completion, true
	}
	return 0, false
}

// Stream is what one streamed answer has delivered to the client so far.
// It is not safe for concurrent use: one relay owns it.
type Stream struct {
	Kind Kind
	// From the first chunk, repeated on every chunk the resumer writes so
	// the client sees one stream.
	ID, Object, Model, SystemFingerprint string
	Created                              int64

	// Text is the content of choice 0 written so far; Tokens its token ids.
	Text   []byte
	Tokens []int
	// Done: the engine sent its finish reason or [DONE]; nothing to resume.
	Done bool
	// UsageSent: the final usage chunk went out.
	UsageSent bool

	// blocked says why this stream cannot be continued exactly (a tool-call
	// delta, a reasoning block, several choices, ids missing); empty: it can.
	blocked string

	injected     bool // the router asked for logprobs the client did not
	clientUsage  bool // the client asked for the usage chunk
	roleSent     bool
	sawFinish    bool
	promptTokens int // from the engine's usage, when it sent one
}

// Resumable reports whether the stream can be continued, and if not, why.
func (s *Stream) Resumable() (bool, string) {
	switch {
	case s.Done:
		return false, "the answer was complete"
	case s.blocked != "":
		return false, s.blocked
	case len(s.Tokens) == 0 && len(s.Text) > 0:
		return false, "the engine did not report token ids"
	}
	return true, ""
}

// ErrNotResumable marks requests the router relays without resume.
var ErrNotResumable = errors.New("request cannot be resumed")

// Prepare reads a streaming request body and returns the body to send
// upstream: the same request asking for token ids (logprobs with one
// alternative) when the client did not ask for logprobs. Requests the
// router cannot continue exactly (several choices, client-chosen logprobs,
// not streaming) return ErrNotResumable and are relayed untouched.
func Prepare(kind Kind, body []byte) ([]byte, *Stream, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrNotResumable, err)
	}
	if !isTrue(top["stream"]) {
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
		if isTrue(top["logprobs"]) {
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

func isTrue(v json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(v), []byte("true")) }
func isNull(v json.RawMessage) bool {
	t := bytes.TrimSpace(v)
	return len(t) == 0 || bytes.Equal(t, []byte("null"))
}

func (k Kind) String() string {
	if k == Completion {
		return "completions"
	}
	return "chat"
}
