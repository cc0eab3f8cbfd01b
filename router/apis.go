package router

// The agent-facing APIs: Anthropic Messages (/v1/messages and its
// count_tokens) and OpenAI Responses (/v1/responses, stateless). Both are
// relayed like chat completions (placement, retries before the first
// byte, SSE relay, limits) to instances whose adapter says they serve
// the path. Where a model's instances serve chat but not Messages, a
// Messages request is translated to chat (translate.go) if it maps
// exactly; otherwise the answer is 404 API_NOT_SUPPORTED.

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/registry"
)

// CodeAPINotSupported: the model is served, but not on this API.
const CodeAPINotSupported = "API_NOT_SUPPORTED"

const (
	pathMessages            = "/v1/messages"
	pathMessagesCountTokens = "/v1/messages/count_tokens"
	pathResponses           = "/v1/responses"
	pathResponsesInputToks  = "/v1/responses/input_tokens"
	pathChat                = "/v1/chat/completions"
)

// agentPaths are the routes this file serves (listed in Routes).
var agentPaths = []string{pathMessages, pathMessagesCountTokens, pathResponses, pathResponsesInputToks}

// readBodyFor reads a POST body under the router's limit; on failure it
// has answered already.
func (rt *Router) readBodyFor(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, rt.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			apierr.Write(w, apierr.New(http.StatusRequestEntityTooLarge, CodeRequestTooLarge, "request body is over the %d-byte limit", mbe.Limit))
		} else {
			apierr.Write(w, apierr.New(http.StatusBadRequest, CodeInvalidParams, "reading the request body failed: %v", err))
		}
		return nil, false
	}
	return body, true
}

// withBody is r carrying body again (the proxy reads it once more).
func withBody(r *http.Request, path string, body []byte) *http.Request {
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	if path != "" {
		u := *r.URL
		u.Path, u.RawPath = path, ""
		r2.URL = &u
	}
	return r2
}

// apiSupport says, of a model's instances in snap, whether there are any,
// whether one serves path, and whether one serves chat completions.
func apiSupport(snap *registry.Snapshot, model, path string) (known, native, chat bool) {
	for _, in := range snap.Instances {
		if in.Model != model {
			continue
		}
		known = true
		native = native || in.Serves(path)
		chat = chat || in.Serves(pathChat)
	}
	return
}

func notSupported(model, path, why string) *apierr.Error {
	e := apierr.New(http.StatusNotFound, CodeAPINotSupported, "model %q is served, but no instance of it serves %s", model, path)
	if why != "" {
		e.Message += " and the request cannot be translated to chat completions exactly: " + why
	}
	e.Param = "model"
	return e
}

// bodyModel is the body's "model" (empty when absent or not a string:
// the proxy's parser then names the problem).
func bodyModel(body []byte) string {
	var v struct {
		Model any `json:"model"`
	}
	_ = json.Unmarshal(body, &v)
	s, _ := v.Model.(string)
	return s
}

// serveMessages handles /v1/messages and /v1/messages/count_tokens.
func (rt *Router) serveMessages(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		rt.serveProxy(w, r) // answers 405 in the usual way
		return
	}
	body, ok := rt.readBodyFor(w, r)
	if !ok {
		return
	}
	requested := bodyModel(body)
	model := rt.routes.resolve(requested)
	known, native, chat := apiSupport(rt.view.Current(), model, r.URL.Path)
	switch {
	case !known || native || requested == "":
		rt.serveProxy(w, withBody(r, "", body))
		return
	case !chat || r.URL.Path != pathMessages:
		apierr.Write(w, notSupported(model, r.URL.Path, ""))
		return
	}
	cbody, areq, err := messagesToChat(body, model)
	var ue *errUntranslatable
	switch {
	case errors.As(err, &ue):
		apierr.Write(w, notSupported(model, r.URL.Path, ue.what))
		return
	case err != nil:
		apierr.Write(w, apierr.New(http.StatusBadRequest, CodeInvalidParams, "%s", err.Error()))
		return
	}
	if model != requested {
		w.Header().Set(ModelHeader, model)
	}
	w.Header().Set(TranslatedHeader, pathChat)
	tw := newChatToMessagesWriter(w, areq.Model)
	rt.serveProxy(tw, withBody(r, pathChat, cbody))
	tw.finish()
}

// TranslatedHeader marks an answer the router translated, naming the
// engine API it came from.
const TranslatedHeader = "X-Llorch-Translated-From"

// serveResponses handles /v1/responses and /v1/responses/input_tokens:
// stateless (nothing is stored, so nothing can be continued or fetched).
func (rt *Router) serveResponses(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		rt.serveProxy(w, r)
		return
	}
	body, ok := rt.readBodyFor(w, r)
	if !ok {
		return
	}
	var v struct {
		Prev *string `json:"previous_response_id"`
		Conv any     `json:"conversation"`
		Bg   *bool   `json:"background"`
	}
	if json.Unmarshal(body, &v) == nil {
		stateful := func(param, what string) {
			e := apierr.New(http.StatusBadRequest, CodeInvalidParams, "%s: llorch's /v1/responses is stateless (store:false semantics; nothing is kept between requests); send the whole conversation in \"input\"", what)
			e.Param = param
			apierr.Write(w, e)
		}
		switch {
		case v.Prev != nil && *v.Prev != "":
			stateful("previous_response_id", "previous_response_id cannot be continued")
			return
		case v.Conv != nil:
			stateful("conversation", "conversations are not kept")
			return
		case v.Bg != nil && *v.Bg:
			stateful("background", "background responses need a stored response to poll")
			return
		}
	}
	requested := bodyModel(body)
	model := rt.routes.resolve(requested)
	if known, native, _ := apiSupport(rt.view.Current(), model, r.URL.Path); known && !native {
		apierr.Write(w, notSupported(model, r.URL.Path, ""))
		return
	}
	rt.serveProxy(w, withBody(r, "", body))
}

// anthropicShaped: requests whose errors take Anthropic's envelope.
func anthropicShaped(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, pathMessages) ||
		(strings.HasPrefix(r.URL.Path, "/v1/models") && r.Header.Get("Anthropic-Version") != "")
}

// withAnthropicErrors re-envelopes every error answer to an Anthropic-
// shaped request (the auth gate's included, so it wraps authentication),
// and the error events that end its streams.
func withAnthropicErrors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !anthropicShaped(r) {
			next.ServeHTTP(w, r)
			return
		}
		aw := &anthropicErrWriter{ResponseWriter: w}
		next.ServeHTTP(aw, r)
		aw.finish()
	})
}

type anthropicErrWriter struct {
	http.ResponseWriter
	wrote  bool
	status int
	buf    *bytes.Buffer // holds an error body until finish
	sse    bool
}

func (a *anthropicErrWriter) WriteHeader(code int) {
	if a.wrote {
		return
	}
	a.wrote = true
	ct := a.Header().Get("Content-Type")
	switch {
	case code >= 400 && (ct == "" || strings.HasPrefix(ct, "application/json")):
		a.status, a.buf = code, &bytes.Buffer{}
		return
	case strings.HasPrefix(ct, "text/event-stream"):
		a.sse = true
	}
	a.ResponseWriter.WriteHeader(code)
}

func (a *anthropicErrWriter) Write(b []byte) (int, error) {
	if !a.wrote {
		a.WriteHeader(http.StatusOK)
	}
	if a.buf != nil {
		return a.buf.Write(b)
	}
	if a.sse {
		if data, ok := bytes.CutPrefix(b, []byte("event: error\ndata: ")); ok {
			if e, ok := apierr.Parse(http.StatusInternalServerError, bytes.TrimSpace(data)); ok {
				if _, err := a.ResponseWriter.Write(apierr.AnthropicSSE(e)); err != nil {
					return 0, err
				}
				return len(b), nil
			}
		}
	}
	return a.ResponseWriter.Write(b)
}

func (a *anthropicErrWriter) Flush() {
	if a.buf == nil {
		_ = http.NewResponseController(a.ResponseWriter).Flush()
	}
}

func (a *anthropicErrWriter) Unwrap() http.ResponseWriter { return a.ResponseWriter }

func (a *anthropicErrWriter) finish() {
	if a.buf == nil {
		return
	}
	if e, ok := apierr.Parse(a.status, a.buf.Bytes()); ok {
		apierr.WriteAnthropic(a.ResponseWriter, e)
		return
	}
	a.ResponseWriter.WriteHeader(a.status)
	_, _ = a.ResponseWriter.Write(a.buf.Bytes())
}

// anthropicModel is one entry of Anthropic's model list.
type anthropicModel struct {
	Type        string `json:"type"`
	ID          string `json:"id"`
	DisplayName string `json:"display_name"`
	CreatedAt   string `json:"created_at"`
}

type anthropicModelList struct {
	Data    []anthropicModel `json:"data"`
	HasMore bool             `json:"has_more"`
	FirstID *string          `json:"first_id"`
	LastID  *string          `json:"last_id"`
}

// epoch stands for the creation time llorch does not know.
const epoch = "1970-01-01T00:00:00Z"

// serveModelsAnthropic answers GET /v1/models and /v1/models/{model} in
// Anthropic's shape (asked for with the anthropic-version header).
func (rt *Router) serveModelsAnthropic(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet || r.Header.Get("Anthropic-Version") == "" {
		return false
	}
	names := rt.listedModels()
	if name := r.PathValue("model"); name != "" {
		for _, m := range names {
			if m == name {
				writeJSON(w, http.StatusOK, anthropicModel{Type: "model", ID: m, DisplayName: m, CreatedAt: epoch})
				return true
			}
		}
		e := apierr.New(http.StatusNotFound, CodeModelNotAvailable, "model %q is not available on any healthy instance", name)
		e.Param = "model"
		apierr.Write(w, e)
		return true
	}
	list := anthropicModelList{Data: []anthropicModel{}}
	for _, m := range names {
		list.Data = append(list.Data, anthropicModel{Type: "model", ID: m, DisplayName: m, CreatedAt: epoch})
	}
	if n := len(list.Data); n > 0 {
		list.FirstID, list.LastID = &list.Data[0].ID, &list.Data[n-1].ID
	}
	writeJSON(w, http.StatusOK, list)
	return true
}
