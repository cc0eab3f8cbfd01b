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
	"errors"
	"fmt"

	"github.com/llorch/llorch/internal/jsonscan"
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
//
// The body is not decoded: one walk reads the few fields that decide, and
// the upstream body is the client's, byte for byte, with any logprobs (and
// for chat top_logprobs) members cut and the router's appended.
func Prepare(kind Kind, body []byte) ([]byte, *Stream, error) {
	var (
		stream, several, clientLogprobs, clientUsage bool
		cuts                                         jsonscan.Cuts
		tooMany                                      bool
		limits                                       [3]int64 // max_completion_tokens, max_tokens, n_predict
	)
	it := jsonscan.Members(body)
	for it.Next() {
		switch k := it.Key(); {
		case jsonscan.KeyIs(k, "stream"):
			stream = jsonscan.IsTrue(it.Value())
		case jsonscan.KeyIs(k, "n"):
			several = string(it.Value()) != "1" && it.Kind() != jsonscan.Null
		case jsonscan.KeyIs(k, "stream_options"):
			clientUsage = includeUsage(&it)
		case jsonscan.KeyIs(k, "logprobs"):
			if kind == Chat {
				clientLogprobs = jsonscan.IsTrue(it.Value())
			} else {
				clientLogprobs = it.Kind() != jsonscan.Null
			}
			tooMany = tooMany || !cuts.Add(&it)
		case kind == Chat && jsonscan.KeyIs(k, "top_logprobs"):
			tooMany = tooMany || !cuts.Add(&it)
		case jsonscan.KeyIs(k, "max_completion_tokens"):
			limits[0], _ = jsonscan.Int(it.Value())
		case jsonscan.KeyIs(k, "max_tokens"):
			limits[1], _ = jsonscan.Int(it.Value())
		case jsonscan.KeyIs(k, "n_predict"):
			limits[2], _ = jsonscan.Int(it.Value())
		}
	}
	switch {
	case it.Err() != nil:
		return nil, nil, fmt.Errorf("%w: %v", ErrNotResumable, it.Err())
	case !stream:
		return nil, nil, fmt.Errorf("%w: not streaming", ErrNotResumable)
	case several:
		return nil, nil, fmt.Errorf("%w: several choices", ErrNotResumable)
	case clientLogprobs:
		return nil, nil, fmt.Errorf("%w: the client asked for logprobs", ErrNotResumable)
	case tooMany:
		return nil, nil, fmt.Errorf("%w: logprobs repeated in the body", ErrNotResumable)
	}
	injected := `"logprobs":true,"top_logprobs":1`
	if kind == Completion {
		injected = `"logprobs":1`
	}
	end := it.Close()
	out := make([]byte, 0, len(body)+len(injected)+1)
	out = cuts.AppendTo(out, body[:end])
	if it.Count() > cuts.Len() {
		out = append(out, ',')
	}
	out = append(out, injected...)
	out = append(out, body[end:]...)
	st := &Stream{Kind: kind, injected: true, clientUsage: clientUsage}
	st.reserve(limits)
	return out, st, nil
}

// reserve sizes the text and token buffers for the answer the request
// allows (the first limit given, as Continue reads them), within bounds:
// a stream then grows them a few times at most instead of once per
// doubling from empty.
func (s *Stream) reserve(limits [3]int64) {
	n := int64(64)
	for _, l := range limits {
		if l > 0 {
			n = l
			break
		}
	}
	n = min(max(n, 16), 1024)
	s.Tokens = make([]int, 0, n)
	s.Text = make([]byte, 0, 4*n)
}

// includeUsage reads stream_options.include_usage as encoding/json fills
// a bool: the last true or false wins, anything else leaves it.
func includeUsage(it *jsonscan.Iter) bool {
	if it.Kind() != jsonscan.Object {
		return false
	}
	v := false
	so := it.Sub()
	for so.Next() {
		if jsonscan.KeyFold(so.Key(), "include_usage") && so.Kind() == jsonscan.Bool {
			v = jsonscan.IsTrue(so.Value())
		}
	}
	return v
}

func (k Kind) String() string {
	if k == Completion {
		return "completions"
	}
	return "chat"
}
