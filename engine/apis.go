package engine

import (
	"sort"
	"strconv"
	"strings"
)

// API paths beyond chat and completions that adapters may declare.
const (
	PathMessages            = "/v1/messages"              // Anthropic Messages
	PathMessagesCountTokens = "/v1/messages/count_tokens" // Anthropic token counting
	PathResponses           = "/v1/responses"             // OpenAI Responses
	PathResponsesInputToks  = "/v1/responses/input_tokens"
)

// VersionedAPIs is implemented by adapters whose served paths depend on
// the engine's version (what Version returned). The supervisor prefers it
// to APIs once the version is known; APIs stays the floor every
// supported version serves.
type VersionedAPIs interface {
	APIsFor(version string) []string
}

// APIsOf is what an engine of version v serves, by its adapter.
func APIsOf(a Adapter, version string) []string {
	if va, ok := a.(VersionedAPIs); ok && version != "" {
		return va.APIsFor(version)
	}
	return a.APIs()
}

// sinceVersion adds the paths of each release at or after which they
// appear to base. An unreadable version gets base only: declaring a path
// the engine lacks would send requests to a 404, while a missing one only
// costs a translation or a clear API_NOT_SUPPORTED.
func sinceVersion(version string, base []string, since map[string][]string) []string {
	out := append([]string(nil), base...)
	mins := make([]string, 0, len(since))
	for m := range since {
		mins = append(mins, m)
	}
	sort.Strings(mins) // a stable order: the list is written into Consul meta
	for _, m := range mins {
		if versionAtLeast(version, m) {
			out = append(out, since[m]...)
		}
	}
	return out
}

// versionAtLeast compares dotted numeric versions ("0.11.2", "v0.5.0rc1",
// "0.12.0+cu128"); a suffix after the numbers is ignored. false when v
// has no leading number.
func versionAtLeast(v, min string) bool {
	a, ok := versionNums(v)
	if !ok {
		return false
	}
	b, _ := versionNums(min)
	for i := 0; i < max(len(a), len(b)); i++ {
		var x, y int
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return x > y
		}
	}
	return true
}

func versionNums(v string) ([]int, bool) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	var out []int
	for _, part := range strings.Split(v, ".") {
		end := 0
		for end < len(part) && part[end] >= '0' && part[end] <= '9' {
			end++
		}
		if end == 0 {
			break
		}
		n, err := strconv.Atoi(part[:end])
		if err != nil {
			return nil, false
		}
		out = append(out, n)
		if end < len(part) {
			break // "0rc1", "0+cu128": the rest is not a number
		}
	}
	return out, len(out) > 0
}
