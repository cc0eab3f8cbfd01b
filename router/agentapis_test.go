package router

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	aoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/llorch/llorch/internal/openaifixture"
	"github.com/llorch/llorch/router/keys"
)

// anthropicClient is the unchanged official Anthropic SDK pointed at the
// router; auth is x-api-key (WithAPIKey) or Bearer (WithAuthToken).
func anthropicClient(baseURL string, opts ...aoption.RequestOption) anthropic.Client {
	return anthropic.NewClient(append([]aoption.RequestOption{aoption.WithBaseURL(baseURL), aoption.WithMaxRetries(0)}, opts...)...)
}

func hiMessage(model string, maxTokens int64) anthropic.MessageNewParams {
	return anthropic.MessageNewParams{Model: anthropic.Model(model), MaxTokens: maxTokens,
		System:   []anthropic.TextBlockParam{{Text: "be brief"}},
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))}}
}

// anthropicErr checks err is the SDK's error with status and Anthropic's
// envelope carrying errType (and code, when given).
func anthropicErr(t *testing.T, what string, err error, status int, errType, code string) {
	t.Helper()
	var ae *anthropic.Error
	if !errors.As(err, &ae) || ae.StatusCode != status {
		t.Fatalf("%s: want *anthropic.Error %d, got %v", what, status, err)
	}
	var env struct {
		Type  string `json:"type"`
		Error struct {
			Type, Message, Code string
		} `json:"error"`
	}
	if jerr := json.Unmarshal([]byte(ae.RawJSON()), &env); jerr != nil || env.Type != "error" || env.Error.Type != errType || env.Error.Message == "" ||
		(code != "" && env.Error.Code != code) {
		t.Fatalf("%s: body %s, want Anthropic's envelope with type %s code %q", what, ae.RawJSON(), errType, code)
	}
}

// A Messages request to a model whose engines serve chat only is
// translated, and answers with the text the chat request gets, streamed
// and not; what cannot be carried exactly is a 404 naming the model.
func TestMessagesTranslatedToChat(t *testing.T) {
	fx, u := startFixture(t)
	in := inst(t, "a", "n1", testModel, u)
	in.APIs = []string{"/v1/chat/completions", "/v1/completions"}
	h := newHarness(t, nil, in)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	ocl := sdkClient(h.srv.URL, clientToken)
	chat, err := ocl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: testModel, Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("be brief"), openai.UserMessage("hi")}})
	if err != nil {
		t.Fatalf("chat: %v", err)
	}
	want := chat.Choices[0].Message.Content

	cl := anthropicClient(h.srv.URL, aoption.WithAPIKey(clientToken))
	msg, err := cl.Messages.New(ctx, hiMessage(testModel, 64))
	if err != nil {
		t.Fatalf("messages: %v", err)
	}
	if len(msg.Content) != 1 || msg.Content[0].Text != want || msg.StopReason != anthropic.StopReasonEndTurn || msg.Role != "assistant" {
		t.Fatalf("translated answer %+v, want the chat text %q", msg, want)
	}
	if seen := fx.Seen(); seen[len(seen)-1].Path != "/v1/chat/completions" {
		t.Fatalf("engine saw %s, want /v1/chat/completions", seen[len(seen)-1].Path)
	}

	stream := cl.Messages.NewStreaming(ctx, hiMessage(testModel, 64))
	var acc anthropic.Message
	var types []string
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		if err := acc.Accumulate(ev); err != nil {
			t.Fatalf("accumulate %s: %v", ev.Type, err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if len(acc.Content) != 1 || acc.Content[0].Text != want || acc.StopReason != anthropic.StopReasonEndTurn {
		t.Fatalf("streamed %v into %+v, want %q", types, acc, want)
	}
	if types[0] != "message_start" || types[1] != "content_block_start" || types[len(types)-1] != "message_stop" {
		t.Fatalf("event order %v", types)
	}

	// Extended thinking has no chat equivalent: refused, naming the model.
	p := hiMessage(testModel, 2048)
	p.Thinking = anthropic.ThinkingConfigParamOfEnabled(1024)
	_, err = cl.Messages.New(ctx, p)
	anthropicErr(t, "thinking", err, http.StatusNotFound, "not_found_error", CodeAPINotSupported)
	if !strings.Contains(err.Error(), testModel) || !strings.Contains(err.Error(), "thinking") {
		t.Fatalf("refusal should name the model and the field: %v", err)
	}
	// No count_tokens and no Responses on this engine.
	_, err = cl.Messages.CountTokens(ctx, anthropic.MessageCountTokensParams{Model: testModel,
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))}})
	anthropicErr(t, "count_tokens", err, http.StatusNotFound, "not_found_error", CodeAPINotSupported)
	_, err = ocl.Responses.New(ctx, responses.ResponseNewParams{Model: testModel,
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}})
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != 404 || oe.Code != CodeAPINotSupported {
		t.Fatalf("responses on a chat-only engine: %v", err)
	}
}

// Tools and tool results translate both ways exactly.
func TestMessagesToChatTools(t *testing.T) {
	body := `{"model":"m","max_tokens":9,"stop_sequences":["END"],"system":"sys","tool_choice":{"type":"any","disable_parallel_tool_use":true},
	"tools":[{"name":"get","description":"d","input_schema":{"type":"object"}}],
	"messages":[{"role":"user","content":"q"},
	{"role":"assistant","content":[{"type":"text","text":"calling"},{"type":"tool_use","id":"t1","name":"get","input":{"k":1}}]},
	{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"42","cache_control":{"type":"ephemeral"}}]}]}`
	out, _, err := messagesToChat([]byte(body), "real")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"model":"real","messages":[{"role":"system","content":"sys"},{"role":"user","content":"q"},` +
		`{"role":"assistant","content":"calling","tool_calls":[{"id":"t1","type":"function","function":{"name":"get","arguments":"{\"k\":1}"}}]},` +
		`{"role":"tool","content":"42","tool_call_id":"t1"}],"max_tokens":9,"stop":["END"],"stream":false,` +
		`"tools":[{"type":"function","function":{"name":"get","description":"d","parameters":{"type":"object"}}}],"tool_choice":"required","parallel_tool_calls":false}`
	if string(out) != want {
		t.Fatalf("chat body\n got %s\nwant %s", out, want)
	}
	ans := `{"id":"chatcmpl-x","choices":[{"message":{"content":null,"tool_calls":[{"id":"t2","type":"function","function":{"name":"get","arguments":"{\"k\":2}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":3}}`
	msg, err := chatToMessage([]byte(ans), "m")
	if err != nil {
		t.Fatal(err)
	}
	wantMsg := `{"id":"msg_x","type":"message","role":"assistant","model":"m","content":[{"type":"tool_use","id":"t2","name":"get","input":{"k":2}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":3}}`
	if string(msg) != wantMsg {
		t.Fatalf("message\n got %s\nwant %s", msg, wantMsg)
	}
	for _, bad := range []string{
		`{"model":"m","max_tokens":9,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}`,
		`{"model":"m","max_tokens":9,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"x","is_error":true}]}]}`,
		`{"model":"m","max_tokens":9,"tools":[{"type":"web_search_20250305","name":"web_search"}],"messages":[{"role":"user","content":"q"}]}`,
	} {
		var ue *errUntranslatable
		if _, _, err := messagesToChat([]byte(bad), "m"); !errors.As(err, &ue) {
			t.Errorf("%s: want untranslatable, got %v", bad, err)
		}
	}
}

// Requests by alias land on the target; with the primary at zero
// instances the fallback answers and the headers say so; /v1/models
// lists aliases, in Anthropic's shape when asked with anthropic-version.
func TestAliasesAndFallbacks(t *testing.T) {
	fx, u := startFixture(t)
	h := newHarness(t, func(c *Config) {
		c.ModelAliases = "gpt-4o-mini=" + testModel
		c.ModelFallbacks = "big=" + testModel
	}, inst(t, "a", "n1", testModel, u))

	code, hdr, body := h.do("POST", "/v1/chat/completions", chatBody("gpt-4o-mini", false))
	if code != 200 || hdr.Get(ModelHeader) != testModel || hdr.Get(FallbackHeader) != "" {
		t.Fatalf("alias: %d %v %s", code, hdr, body)
	}
	if seen := fx.Seen(); seen[len(seen)-1].Model != testModel {
		t.Fatalf("engine saw model %q, want the alias's target %q", seen[len(seen)-1].Model, testModel)
	}
	code, hdr, body = h.do("POST", "/v1/chat/completions", chatBody("big", true))
	if code != 200 || hdr.Get(FallbackHeader) != "big" || hdr.Get(ModelHeader) != testModel || !strings.Contains(body, "[DONE]") {
		t.Fatalf("fallback: %d %v %s", code, hdr, body)
	}
	if seen := fx.Seen(); seen[len(seen)-1].Model != testModel {
		t.Fatalf("engine saw model %q after a fallback", seen[len(seen)-1].Model)
	}
	// A model with neither instances nor fallbacks is still a 404.
	if code, _, body := h.do("POST", "/v1/chat/completions", chatBody("nothing", false)); code != 404 || !strings.Contains(body, CodeModelNotAvailable) {
		t.Fatalf("unknown model: %d %s", code, body)
	}
	// Anthropic clients asking by alias are translated to the target too.
	bearer := anthropicClient(h.srv.URL, aoption.WithAuthToken(clientToken))
	msg, err := bearer.Messages.New(context.Background(), hiMessage("gpt-4o-mini", 16))
	if err != nil || msg.Content[0].Text != openaifixture.Text(8) {
		t.Fatalf("messages by alias: %v %+v", err, msg)
	}

	_, _, body = h.do("GET", "/v1/models", "")
	var list modelList
	if err := json.Unmarshal([]byte(body), &list); err != nil || len(list.Data) != 2 || list.Data[0].ID != "gpt-4o-mini" || list.Data[1].ID != testModel {
		t.Fatalf("models %s", body)
	}
	_, _, body = h.do("GET", "/v1/models", "", "Anthropic-Version", "2023-06-01")
	page, err := bearer.Models.List(context.Background(), anthropic.ModelListParams{})
	if err != nil || len(page.Data) != 2 || page.Data[0].ID != "gpt-4o-mini" || page.Data[0].Type != "model" {
		t.Fatalf("anthropic models: %v %+v (%s)", err, page, body)
	}
}

func TestAliasConfigRejected(t *testing.T) {
	for _, c := range []struct{ aliases, fallbacks string }{
		{"a=b,b=c", ""}, {"a=a", ""}, {"a", ""}, {"a=b,a=c", ""}, {"", "x="}, {"", "x=x"},
	} {
		cfg := DefaultConfig()
		cfg.ModelAliases, cfg.ModelFallbacks = c.aliases, c.fallbacks
		if err := cfg.Validate(); err == nil {
			t.Errorf("aliases %q fallbacks %q: accepted", c.aliases, c.fallbacks)
		}
	}
	r, err := newModelRoutes(" a = b , c=d ", "m=x|y")
	if err != nil || r.resolve("a") != "b" || r.resolve("c") != "d" || r.resolve("z") != "z" || len(r.fallbacks["m"]) != 2 {
		t.Fatalf("%+v %v", r, err)
	}
}

// With every slot of the primary busy and its queue full, the fallback
// answers (and says so) instead of a 429.
func TestFallbackOnFullQueue(t *testing.T) {
	big, bu := openaifixture.Start(t, "big")
	// Long enough to hold the slot however slowly a loaded machine gets
	// the second request queued (cancelled at the end).
	big.SetBehavior(openaifixture.Behavior{Tokens: 3000, TokenDelay: 20 * time.Millisecond})
	_, su := startFixture(t)
	bi := inst(t, "big-1", "n1", "big", bu.URL)
	bi.Slots = 1
	h := newHarness(t, func(c *Config) { c.QueueCapacity = 1; c.ModelFallbacks = "big=" + testModel },
		bi, inst(t, "small-1", "n2", testModel, su))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	busy := func() {
		resp, err := h.cl.Do(h.req("POST", "/v1/chat/completions", chatBody("big", true)).WithContext(ctx))
		if err == nil {
			resp.Body.Close()
		}
	}
	go busy()
	waitFor(t, 20*time.Second, "the slot taken", func() bool { return h.rt.state.InFlight("big-1") == 1 })
	go busy()
	waitFor(t, 20*time.Second, "one request queued", func() bool { i, _ := h.rt.queues.Depth("big"); return i == 1 })
	code, hdr, body := h.do("POST", "/v1/chat/completions", chatBody("big", false))
	if code != 200 || hdr.Get(FallbackHeader) != "big" || hdr.Get(ModelHeader) != testModel || !strings.Contains(body, openaifixture.Text(8)) {
		t.Fatalf("queue full: %d %v %s, want the fallback's answer", code, hdr, body)
	}
}

// A translated stream the engine breaks ends, for the Anthropic SDK, in a
// stream error carrying Anthropic's envelope and WORKER_RESET.
func TestMessagesTranslatedStreamBroken(t *testing.T) {
	fx, u := startFixture(t)
	fx.SetBehavior(openaifixture.Behavior{Tokens: 10, Fault: openaifixture.FaultDieMidStream, DieAfter: 2})
	in := inst(t, "a", "n1", testModel, u)
	in.APIs = []string{"/v1/chat/completions"}
	h := newHarness(t, nil, in)
	cl := anthropicClient(h.srv.URL, aoption.WithAPIKey(clientToken))
	stream := cl.Messages.NewStreaming(context.Background(), hiMessage(testModel, 64))
	var acc anthropic.Message
	for stream.Next() {
		_ = acc.Accumulate(stream.Current())
	}
	err := stream.Err()
	if err == nil || !strings.Contains(err.Error(), CodeWorkerReset) || !strings.Contains(err.Error(), `"type":"error"`) ||
		len(acc.Content) != 1 || acc.Content[0].Text != openaifixture.Text(2) {
		t.Fatalf("err %v after %+v, want an Anthropic error event with %s after 2 tokens", err, acc.Content, CodeWorkerReset)
	}
}

// Streamed tool calls become tool_use blocks the SDK accumulates into the
// same input the chat answer carried.
func TestMessagesStreamToolCalls(t *testing.T) {
	var s msgStream
	s.open = -1
	s.model = "m"
	var out []byte
	for _, c := range []string{
		`{"id":"chatcmpl-1","choices":[{"delta":{"content":"let me look"}}]}`,
		`{"id":"chatcmpl-1","choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_1","function":{"name":"get","arguments":""}}]}}]}`,
		`{"id":"chatcmpl-1","choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"k\":"}}]}}]}`,
		`{"id":"chatcmpl-1","choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"7}"}}]}}]}`,
		`{"id":"chatcmpl-1","choices":[{"delta":{},"finish_reason":"tool_calls"}]}`,
		`{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":6}}`,
	} {
		out = s.chunk(out, []byte(c))
	}
	out = s.end(out)
	var acc anthropic.Message
	for _, ev := range strings.Split(strings.TrimSpace(string(out)), "\n\n") {
		_, data, ok := strings.Cut(ev, "\ndata: ")
		if !ok {
			t.Fatalf("event without data: %q", ev)
		}
		var u anthropic.MessageStreamEventUnion
		if err := json.Unmarshal([]byte(data), &u); err != nil {
			t.Fatal(err)
		}
		if err := acc.Accumulate(u); err != nil {
			t.Fatalf("accumulate %s: %v", data, err)
		}
	}
	if len(acc.Content) != 2 || acc.Content[0].Text != "let me look" || acc.Content[1].Type != "tool_use" ||
		acc.Content[1].ID != "call_1" || acc.Content[1].Name != "get" || string(acc.Content[1].Input) != `{"k":7}` ||
		acc.StopReason != anthropic.StopReasonToolUse || acc.Usage.OutputTokens != 6 || acc.ID != "msg_1" {
		t.Fatalf("accumulated %+v\nfrom %s", acc, out)
	}
}

func TestFormatModelRoutes(t *testing.T) {
	a, f, err := FormatModelRoutes(map[string]string{"z": "m", "a": "m"}, map[string][]string{"big": {"m", "n"}})
	if err != nil || a != "a=m,z=m" || f != "big=m|n" {
		t.Fatalf("%q %q %v", a, f, err)
	}
	if _, _, err := FormatModelRoutes(map[string]string{"a,b": "m"}, nil); err == nil {
		t.Fatal("a name with a separator was accepted")
	}
}

// A key's model allow-list applies to the model that answers: an alias
// is checked as its target, and a fallback the key may not use is skipped.
func TestKeysSeeAliasTargetsAndFallbacks(t *testing.T) {
	h := newKeyHarness(t, func(c *Config) {
		c.ModelAliases = "cheap=" + testModel
		c.ModelFallbacks = "other-big=" + testModel + "|other-1"
	}, threeKeys()...)
	if st, _, b := h.as(secretB, "/v1/chat/completions", chatBody("cheap", false)); st != http.StatusForbidden || errCode(t, b) != keys.CodeModelNotAllowed {
		t.Fatalf("team-b (other-*) by an alias of tiny: %d %s", st, b)
	}
	st, hdr, b := h.as(secretB, "/v1/chat/completions", chatBody("other-big", false))
	if st != 200 || hdr.Get(FallbackHeader) != "other-big" || hdr.Get(ModelHeader) != "other-1" {
		t.Fatalf("team-b's fallback must skip tiny for other-1: %d %v %s", st, hdr, b)
	}
	if n := h.fx[testModel].Requests(); n != 0 {
		t.Fatalf("tiny, which team-b may not use, got %d requests", n)
	}
}
