package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/llorch/llorch/internal/apierr"
)

// The OpenAI request bodies as far as the router reads them: enough to
// route (model, stream, user) and to refuse a body the engine would
// refuse, naming the field.

// presence records whether a JSON field was given (and not null) without
// copying it: messages and prompts can be megabytes.
type presence bool

func (p *presence) UnmarshalJSON(b []byte) error {
	*p = presence(len(b) > 0 && string(b) != "null")
	return nil
}

// openAIRequest is the part of a request body the router reads.
type openAIRequest struct {
	Model    *string  `json:"model"`
	Stream   *bool    `json:"stream"`
	User     *string  `json:"user"`
	Messages presence `json:"messages"`
	Prompt   presence `json:"prompt"`
	Input    presence `json:"input"`
}

// requiredField is the field each endpoint cannot do without.
var requiredField = map[string]string{
	"/v1/chat/completions": "messages",
	"/v1/completions":      "prompt",
	"/v1/embeddings":       "input",
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
	if err := json.Unmarshal(body, &req); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return req, bad(te.Field, fmt.Sprintf("field %q must be a %s, not a JSON %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value))
		}
		return req, bad("", "request body is not valid JSON: "+err.Error())
	}
	if req.Model == nil || *req.Model == "" {
		return req, bad("model", `field "model" is required (a non-empty string)`)
	}
	need := requiredField[path]
	have := map[string]presence{"messages": req.Messages, "prompt": req.Prompt, "input": req.Input}[need]
	if need != "" && !bool(have) {
		return req, bad(need, fmt.Sprintf("field %q is required on %s", need, path))
	}
	return req, nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "bool":
		return "boolean"
	case "ptr", "string":
		return "string"
	}
	return goKind
}
