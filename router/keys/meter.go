package keys

import (
	"bytes"
	"encoding/json"
	"io"
	"regexp"

	"github.com/llorch/llorch/internal/jsonscan"
)

// wireUsage is OpenAI's usage object (embeddings carry prompt_tokens only).
type wireUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

// AskUsage returns the body to send upstream for a streamed request, so the
// engine reports usage in its stream (stream_options.include_usage), and
// whether the client asked for that itself (then its usage chunk is
// relayed; otherwise the Meter hides it). A body it cannot read is
// returned unchanged.
//
// The body is walked, not decoded, and spliced: the client's bytes stay as
// they are but for the one member added. Keys match exactly, as the
// engine reads them, and the last stream_options is the one that counts.
func AskUsage(body []byte) (out []byte, clientAsked bool) {
	var (
		so        []byte        // the last stream_options value
		soIt      jsonscan.Iter // a walk of it
		soAt      int
		soKind    jsonscan.Kind
		every     jsonscan.Cuts // every stream_options member: all cut when the last is null
		everyFull bool
		soCount   int
	)
	it := jsonscan.Members(body)
	for it.Next() {
		if jsonscan.KeyIs(it.Key(), "stream_options") {
			so, soKind, soIt = it.Value(), it.Kind(), it.Sub()
			soAt, _ = it.ValueSpan()
			everyFull = everyFull || !every.Add(&it)
			soCount++
		}
	}
	if it.Err() != nil {
		return body, false
	}
	const member = `"stream_options":{"include_usage":true}`
	switch {
	case so == nil || soKind == jsonscan.Null:
		// The common case: the member goes after the opening brace, the
		// rest of a possibly large body left as it is; a null one is cut.
		if everyFull {
			return body, false
		}
		open := it.Open()
		out = make([]byte, 0, len(body)+len(member)+1)
		out = append(out, body[:open+1]...)
		out = append(out, member...)
		if it.Count() > soCount {
			out = append(out, ',')
		}
		if so == nil {
			return append(out, body[open+1:]...), false
		}
		return every.AppendFrom(out, body, open+1), false
	case soKind != jsonscan.Object:
		return body, false
	}
	// The client's own stream_options: include_usage added to them.
	var cuts jsonscan.Cuts
	asked := false
	inner := soIt
	for inner.Next() {
		if jsonscan.KeyIs(inner.Key(), "include_usage") {
			asked = jsonscan.IsTrue(inner.Value())
			if !cuts.Add(&inner) {
				return body, false
			}
		}
	}
	if asked {
		return body, true
	}
	end := inner.Close()
	out = make([]byte, 0, len(body)+len(`,"include_usage":true`))
	out = append(out, body[:soAt]...)
	out = cuts.AppendTo(out, so[:end])
	if inner.Count() > cuts.Len() {
		out = append(out, ',')
	}
	out = append(out, `"include_usage":true`...)
	out = append(out, so[end:]...)
	return append(out, body[soAt+len(so):]...), false
}

// Meter reads the usage an engine reports in its answer while the answer
// is relayed: the last usage object of a stream (engines send cumulative
// totals), or the usage of a JSON body.
type Meter struct {
	// Hide drops a stream's usage-only chunk (no choices): the router
	// asked for it, the client did not.
	Hide bool

	prompt, completion int64
	seen               bool
	body               bytes.Buffer
	bodyTotal          int64
	tail               []byte
}

// maxBuffered is the largest JSON answer parsed whole; a larger one is
// searched for its usage in its last tailBytes.
const (
	maxBuffered = 8 << 20
	tailBytes   = 64 << 10
)

// Usage is what the engine reported (ok false: no usage seen).
func (m *Meter) Usage() (prompt, completion int64, ok bool) {
	if !m.seen && m.bodyTotal > 0 {
		m.parseBody()
	}
	return m.prompt, m.completion, m.seen
}

// Writer wraps the client's writer: for SSE (one whole event per Write, as
// the relay writes them) or a JSON body.
func (m *Meter) Writer(w io.Writer, sse bool) io.Writer {
	if sse {
		return sseMeter{m, w}
	}
	return bodyMeter{m, w}
}

type sseMeter struct {
	m *Meter
	w io.Writer
}

var usageField = []byte(`"usage"`)

func (s sseMeter) Write(ev []byte) (int, error) {
	if s.m.Event(ev) {
		return len(ev), nil
	}
	return s.w.Write(ev)
}

// Event reads one whole SSE event; drop says it is the usage-only chunk
// the client did not ask for (Hide), which must not be relayed.
func (m *Meter) Event(ev []byte) (drop bool) {
	if !bytes.Contains(ev, usageField) {
		return false
	}
	u, ok, noChoices := readUsage(sseData(ev), true)
	if !ok {
		return false
	}
	m.prompt, m.completion, m.seen = u.PromptTokens, u.CompletionTokens, true
	return m.Hide && noChoices
}

// readUsage reads a chunk's or answer's top-level usage as decoding it
// into struct{Usage *wireUsage} would (with choices: and Choices
// *[]json.RawMessage), without decoding it: ok false when there is none
// or that decoding would fail; noChoices: choices is an empty array.
func readUsage(doc []byte, choices bool) (u wireUsage, ok, noChoices bool) {
	it := jsonscan.Members(doc)
	for it.Next() {
		switch k := it.Key(); {
		case jsonscan.KeyFold(k, "usage"):
			switch it.Kind() {
			case jsonscan.Null:
				u, ok = wireUsage{}, false
			case jsonscan.Object:
				if !ok {
					u = wireUsage{}
				}
				if !u.read(it.Sub()) {
					return wireUsage{}, false, false
				}
				ok = true
			default:
				return wireUsage{}, false, false
			}
		case choices && jsonscan.KeyFold(k, "choices"):
			switch it.Kind() {
			case jsonscan.Null:
				noChoices = false
			case jsonscan.Array:
				el := it.Sub()
				noChoices = !el.Next()
			default:
				return wireUsage{}, false, false
			}
		}
	}
	if it.Err() != nil {
		return wireUsage{}, false, false
	}
	return u, ok, noChoices
}

// read fills the counts obj gives (a repeated usage object adds to the
// last, as decoding does); false on a count that is not an integer.
func (u *wireUsage) read(it jsonscan.Iter) bool {
	for it.Next() {
		var dst *int64
		switch k := it.Key(); {
		case jsonscan.KeyFold(k, "prompt_tokens"):
			dst = &u.PromptTokens
		case jsonscan.KeyFold(k, "completion_tokens"):
			dst = &u.CompletionTokens
		default:
			continue
		}
		switch it.Kind() {
		case jsonscan.Null:
		case jsonscan.Number:
			n, ok := jsonscan.Int(it.Value())
			if !ok {
				return false
			}
			*dst = n
		default:
			return false
		}
	}
	return it.Err() == nil
}

// sseData joins an event's data lines (no copy for one line).
func sseData(ev []byte) []byte {
	var out []byte
	n := 0
	for rest := ev; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if d, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			d = bytes.TrimPrefix(d, []byte(" "))
			switch n {
			case 0:
				out = d
			case 1:
				out = append(append([]byte(nil), out...), d...)
			default:
				out = append(out, d...)
			}
			n++
		}
	}
	return out
}

type bodyMeter struct {
	m *Meter
	w io.Writer
}

func (b bodyMeter) Write(p []byte) (int, error) {
	b.m.Chunk(p)
	return b.w.Write(p)
}

// Chunk reads bytes of a JSON answer (its usage is parsed at the end).
func (m *Meter) Chunk(p []byte) {
	m.bodyTotal += int64(len(p))
	if m.bodyTotal <= maxBuffered {
		m.body.Write(p)
		return
	}
	if m.body.Len() > 0 {
		m.tail = append(m.tail, m.body.Bytes()...)
		m.body.Reset()
	}
	m.tail = append(m.tail, p...)
	if len(m.tail) > tailBytes {
		m.tail = append(m.tail[:0], m.tail[len(m.tail)-tailBytes:]...)
	}
}

// usageObject finds a "usage": {...} object in raw JSON; inside a JSON
// string the quotes would be escaped, so generated text cannot forge it.
var usageObject = regexp.MustCompile(`"usage"\s*:\s*(\{[^{}]*\})`)

func (m *Meter) parseBody() {
	var u wireUsage
	if m.bodyTotal <= maxBuffered {
		if u, ok, _ := readUsage(m.body.Bytes(), false); ok {
			m.prompt, m.completion, m.seen = u.PromptTokens, u.CompletionTokens, true
		}
		return
	}
	all := usageObject.FindAllSubmatch(m.tail, -1)
	if len(all) > 0 && json.Unmarshal(all[len(all)-1][1], &u) == nil {
		m.prompt, m.completion, m.seen = u.PromptTokens, u.CompletionTokens, true
	}
}

// ObserveData reads usage from one SSE data payload (a caller that parses
// the stream itself, like /v2 tasks).
func (m *Meter) ObserveData(data []byte) {
	if !bytes.Contains(data, usageField) {
		return
	}
	if u, ok, _ := readUsage(data, false); ok {
		m.prompt, m.completion, m.seen = u.PromptTokens, u.CompletionTokens, true
	}
}
