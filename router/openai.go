package router

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/llorch/llorch/internal/apierr"
	"github.com/llorch/llorch/internal/jsonscan"
)

// The OpenAI request bodies as far as the router reads them: enough to
// route (model, stream, user) and to refuse a body the engine would
// refuse, naming the field. The body is walked once, without decoding it
// (prompts can be megabytes), with encoding/json's rules: the whole body
// must be valid JSON, keys match case-insensitively, the last occurrence
// of a field wins, null means absent, and the first value of the wrong
// type is the error.

// openAIRequest is the part of a request body the router reads.
type openAIRequest struct {
	Model  *string
	Stream *bool
	User   *string
	// Messages, Prompt, Input: the field was given and is not null.
	Messages, Prompt, Input bool
}

// requiredField is the field each endpoint cannot do without.
var requiredField = map[string]string{
	"/v1/chat/completions":  "messages",
	"/v1/completions":       "prompt",
	"/v1/embeddings":        "input",
	pathMessages:            "messages",
	pathMessagesCountTokens: "messages",
	pathResponses:           "input",
}

// requestFields is where parseRequest's results live: one allocation for
// the three pointers, one for the strings' bytes.
type requestFields struct {
	model, user string
	stream      bool
}

// parseRequest validates the body and names the offending field on error.
func parseRequest(path string, body []byte) (openAIRequest, *apierr.Error) {
	var req openAIRequest
	bad := func(param, msg string) *apierr.Error {
		return &apierr.Error{Status: http.StatusBadRequest, Code: CodeInvalidParams, Param: param, Message: msg}
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return req, bad("", "request body must be a JSON object")
	}
	var (
		model, user stringField
		stream      boolField
		typeErr     *typeError
		messages    bool // given and not null; likewise prompt, input
		prompt      bool
		input       bool
	)
	it := jsonscan.Members(body)
	for it.Next() {
		k := it.Key()
		switch {
		case jsonscan.KeyFold(k, "model"):
			typeErr = model.read(&it, "model", typeErr)
		case jsonscan.KeyFold(k, "user"):
			typeErr = user.read(&it, "user", typeErr)
		case jsonscan.KeyFold(k, "stream"):
			typeErr = stream.read(&it, "stream", typeErr)
		case jsonscan.KeyFold(k, "messages"):
			messages = it.Kind() != jsonscan.Null
		case jsonscan.KeyFold(k, "prompt"):
			prompt = it.Kind() != jsonscan.Null
		case jsonscan.KeyFold(k, "input"):
			input = it.Kind() != jsonscan.Null
		}
	}
	if err := it.Err(); err != nil {
		// The message is encoding/json's own (it names the character and
		// what was expected); only a refused body pays for a second pass.
		msg := err.Error()
		if jerr := json.Unmarshal(body, &struct{}{}); jerr != nil {
			msg = jerr.Error()
		}
		return req, bad("", "request body is not valid JSON: "+msg)
	}
	if typeErr != nil {
		return req, bad(typeErr.field, fmt.Sprintf("field %q must be a %s, not a JSON %s", typeErr.field, typeErr.want, typeErr.got))
	}
	req.Messages, req.Prompt, req.Input = messages, prompt, input
	if model.set || user.set || stream.set {
		f := &requestFields{stream: stream.v}
		joined := string(model.v) + string(user.v)
		f.model, f.user = joined[:len(model.v)], joined[len(model.v):]
		if model.set {
			req.Model = &f.model
		}
		if user.set {
			req.User = &f.user
		}
		if stream.set {
			req.Stream = &f.stream
		}
	}
	if req.Model == nil || *req.Model == "" {
		return req, bad("model", `field "model" is required (a non-empty string)`)
	}
	need := requiredField[path]
	have := false
	switch need {
	case "messages":
		have = req.Messages
	case "prompt":
		have = req.Prompt
	case "input":
		have = req.Input
	}
	if need != "" && !have {
		return req, bad(need, fmt.Sprintf("field %q is required on %s", need, path))
	}
	return req, nil
}

// typeError is the first field whose value had the wrong JSON type.
type typeError struct {
	field, want string
	got         jsonscan.Kind
}

// stringField is a string field as encoding/json fills a *string: null
// clears it, a value of another type is an error and leaves it as it was.
type stringField struct {
	v   []byte // decoded; may share the body's memory
	set bool
}

func (f *stringField) read(it *jsonscan.Iter, name string, first *typeError) *typeError {
	switch it.Kind() {
	case jsonscan.String:
		f.v, _ = jsonscan.Unquote(it.Value())
		f.set = true
	case jsonscan.Null:
		f.v, f.set = nil, false
	default:
		if first == nil {
			return &typeError{field: name, want: "string", got: it.Kind()}
		}
	}
	return first
}

// boolField is a *bool field, by the same rules.
type boolField struct {
	v, set bool
}

func (f *boolField) read(it *jsonscan.Iter, name string, first *typeError) *typeError {
	switch it.Kind() {
	case jsonscan.Bool:
		f.v, f.set = jsonscan.IsTrue(it.Value()), true
	case jsonscan.Null:
		f.v, f.set = false, false
	default:
		if first == nil {
			return &typeError{field: name, want: "boolean", got: it.Kind()}
		}
	}
	return first
}
