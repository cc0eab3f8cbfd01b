package keys

import (
	"bytes"
	"encoding/json"
	"io"
	"regexp"
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
func AskUsage(body []byte) (out []byte, clientAsked bool) {
	var probe struct {
		StreamOptions map[string]json.RawMessage `json:"stream_options"`
	}
	if err := json.Unmarshal(body, &probe); err != nil {
		return body, false
	}
	if v, ok := probe.StreamOptions["include_usage"]; ok && string(bytes.TrimSpace(v)) == "true" {
		return body, true
	}
	if probe.StreamOptions == nil {
		// The common case: add the field after the opening brace, leaving
		// the rest of a possibly large body as it is.
		i := bytes.IndexByte(body, '{')
		rest := bytes.TrimLeft(body[i+1:], " \t\r\n")
		sep := ","
		if len(rest) > 0 && rest[0] == '}' {
			sep = ""
		}
		out = make([]byte, 0, len(body)+40)
		out = append(out, body[:i+1]...)
		out = append(out, `"stream_options":{"include_usage":true}`+sep...)
		return append(out, body[i+1:]...), false
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(body, &all); err != nil {
		return body, false
	}
	probe.StreamOptions["include_usage"] = json.RawMessage("true")
	so, _ := json.Marshal(probe.StreamOptions)
	all["stream_options"] = so
	b, err := json.Marshal(all)
	if err != nil {
		return body, false
	}
	return b, false
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
	var chunk struct {
		Choices *[]json.RawMessage `json:"choices"`
		Usage   *wireUsage         `json:"usage"`
	}
	if json.Unmarshal(sseData(ev), &chunk) != nil || chunk.Usage == nil {
		return false
	}
	m.prompt, m.completion, m.seen = chunk.Usage.PromptTokens, chunk.Usage.CompletionTokens, true
	return m.Hide && chunk.Choices != nil && len(*chunk.Choices) == 0
}

// sseData joins an event's data lines.
func sseData(ev []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(ev, []byte("\n")) {
		line = bytes.TrimSuffix(line, []byte("\r"))
		if d, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			out = append(out, bytes.TrimPrefix(d, []byte(" "))...)
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
		var resp struct {
			Usage *wireUsage `json:"usage"`
		}
		if json.Unmarshal(m.body.Bytes(), &resp) == nil && resp.Usage != nil {
			m.prompt, m.completion, m.seen = resp.Usage.PromptTokens, resp.Usage.CompletionTokens, true
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
	var chunk struct {
		Usage *wireUsage `json:"usage"`
	}
	if json.Unmarshal(data, &chunk) == nil && chunk.Usage != nil {
		m.prompt, m.completion, m.seen = chunk.Usage.PromptTokens, chunk.Usage.CompletionTokens, true
	}
}
