package scheduler

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// Prompt-cache placement reads a request's prompt canonically, not as raw
// JSON bytes: two routers (or two clients) that write the same
// conversation with keys in another order, other sampling settings or
// other whitespace must derive the same hashes, because the engine's cache
// holds tokens of the rendered conversation, not of the JSON.
//
// The stable prefix is the message list up to and including the last user
// turn: what the next turn will repeat. Its canonical text (role, name,
// content parts, tool calls, one record per message) is hashed in chained
// blocks (PrefixHashes) for the prefix table. The affinity key that
// consistent hashing places is the same for every turn of a conversation:
// its long system preamble when it has one (shared by every conversation
// that uses it), else its messages up to the first user turn.

// PromptKey reads an OpenAI chat or completions body and returns the
// affinity key and the stable prefix's block hashes. A body it cannot read
// gives neither: placement then goes by load alone.
func PromptKey(body []byte) (key string, hashes []uint64) {
	if k, h, ok := promptKeyScan(body); ok {
		return k, h
	}
	return promptKeyDecoded(body)
}

// promptKeyDecoded is PromptKey by decoding: every shape, and the
// reference promptKeyScan is held to.
func promptKeyDecoded(body []byte) (key string, hashes []uint64) {
	var b struct {
		Messages []chatMessage   `json:"messages"`
		Prompt   json.RawMessage `json:"prompt"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return "", nil
	}
	if len(b.Messages) > 0 {
		return messagesKey(b.Messages)
	}
	var text string
	if len(b.Prompt) > 0 && json.Unmarshal(b.Prompt, &text) == nil {
		return TextKey(text)
	}
	return "", nil
}

// TextKey is PromptKey for a bare prompt: the key is its first blocks
// (prompts that grow by appending keep them), or none for a prompt shorter
// than MinAffinityChars.
func TextKey(text string) (string, []uint64) {
	if len(text) < MinAffinityChars {
		return "", nil
	}
	hashes := PrefixHashes(text)
	return "t" + strconv.FormatUint(hashes[min(len(hashes), textKeyBlocks)-1], 36), hashes
}

// MinAffinityChars: a stable prefix shorter than this (about 64 tokens)
// gets no affinity key and no hashes. Recomputing it costs the engine little, so such
// requests are placed by load alone and spread evenly.
const MinAffinityChars = 4 * PrefixBlockChars

// textKeyBlocks is how many leading blocks name a bare prompt.
const textKeyBlocks = 4

type chatMessage struct {
	Role      string          `json:"role"`
	Name      string          `json:"name"`
	Content   json.RawMessage `json:"content"`
	ToolCalls json.RawMessage `json:"tool_calls"`
}

func messagesKey(msgs []chatMessage) (string, []uint64) {
	firstUser, lastUser := -1, -1
	for i, m := range msgs {
		if m.Role == "user" {
			if firstUser < 0 {
				firstUser = i
			}
			lastUser = i
		}
	}
	if lastUser < 0 {
		firstUser, lastUser = 0, len(msgs)-1
	}
	var sb strings.Builder
	opening, preamble := 0, 0
	for i, m := range msgs[:lastUser+1] {
		if i == firstUser {
			preamble = sb.Len()
		}
		writeCanonical(&sb, m)
		if i == firstUser {
			opening = sb.Len()
		}
	}
	text := sb.String()
	if len(text) < MinAffinityChars {
		return "", nil
	}
	// A long shared preamble (the system prompt) is the largest prefix the
	// conversations that share it can reuse: key on it, so they meet on
	// one engine while bounded load lets a busy group spill over. Without
	// one, the conversation's opening names it.
	if preamble >= MinAffinityChars {
		return "s" + strconv.FormatUint(hrw(text[:preamble], ""), 36), PrefixHashes(text)
	}
	return "c" + strconv.FormatUint(hrw(text[:opening], ""), 36), PrefixHashes(text)
}

// writeCanonical writes one message as role, name, content and tool calls,
// each part length-prefixed so no content can imitate a boundary.
func writeCanonical(sb *strings.Builder, m chatMessage) {
	field := func(s string) {
		sb.WriteString(strconv.Itoa(len(s)))
		sb.WriteByte(':')
		sb.WriteString(s)
	}
	field(m.Role)
	field(m.Name)
	var s string
	var parts []struct {
		Type     string `json:"type"`
		Text     string `json:"text"`
		ImageURL struct {
			URL string `json:"url"`
		} `json:"image_url"`
	}
	switch {
	case json.Unmarshal(m.Content, &s) == nil:
		field(s)
	case json.Unmarshal(m.Content, &parts) == nil:
		for _, p := range parts {
			field(p.Type)
			field(p.Text + p.ImageURL.URL)
		}
	default:
		field(compact(m.Content))
	}
	field(compact(m.ToolCalls))
	sb.WriteByte('\n')
}

// compact is JSON without insignificant whitespace ("" for null/absent).
func compact(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}
