// Package keys is the router's per-team API keys: the key set (from a file
// and a Consul KV prefix), the constant-time lookup of a presented secret,
// each key's limits (requests and tokens per minute, concurrent requests,
// shared out among the live routers) and the usage each key ran up.
//
// A key is stored as the SHA-256 digest of its secret, never the secret.
// Looking a secret up hashes it, finds the digest in a map (the lookup's
// timing depends only on a digest no caller can steer) and compares the
// digests in constant time, so a wrong key costs what a right one does.
package keys

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/llorch/llorch/router/admission"
)

// Key is one team's key as configured: who, which models, how much.
type Key struct {
	// Name identifies the key in logs, metrics and /v2/usage (operator-made,
	// so metric labels stay bounded).
	Name string `json:"name" yaml:"name"`
	// Digest is "sha256:" and the hex SHA-256 of the secret.
	Digest string `json:"digest" yaml:"digest"`
	// Models are path.Match globs ("llama-*"); empty allows every model.
	Models []string `json:"models,omitempty" yaml:"models,omitempty"`
	// Priority is the admission class: interactive (default) or batch. A
	// batch key's requests are batch whatever X-Priority says; an
	// interactive key may send X-Priority: batch.
	Priority string `json:"priority,omitempty" yaml:"priority,omitempty"`
	// RPM, TPM and Concurrent are the limits (0 = none): requests per
	// minute, prompt plus completion tokens per minute, requests at once.
	RPM        int `json:"rpm,omitempty" yaml:"rpm,omitempty"`
	TPM        int `json:"tpm,omitempty" yaml:"tpm,omitempty"`
	Concurrent int `json:"concurrent,omitempty" yaml:"concurrent,omitempty"`
	// Expires, when set, is when the key stops working (RFC 3339).
	Expires *time.Time `json:"expires,omitempty" yaml:"expires,omitempty"`
	// Disabled keys are known but refused (401 KEY_DISABLED).
	Disabled bool `json:"disabled,omitempty" yaml:"disabled,omitempty"`

	digest   [sha256.Size]byte
	prio     admission.Priority
	identity string
}

// File is the keys file's shape (YAML or JSON).
type File struct {
	Keys []Key `json:"keys" yaml:"keys"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// digestPrefix marks the digest's algorithm.
const digestPrefix = "sha256:"

// DigestOf is the stored form of a secret: "sha256:<hex>".
func DigestOf(secret string) string {
	d := sha256.Sum256([]byte(secret))
	return digestPrefix + hex.EncodeToString(d[:])
}

// Fingerprint is how a key shows in `llorch key list`: the first 6 hex
// digits of its digest, which is authmin's token fingerprint of the secret.
func (k *Key) Fingerprint() string {
	return strings.TrimPrefix(k.Digest, digestPrefix)[:6]
}

// Identity is how logs name a request made with the key.
func (k *Key) Identity() string { return "key:" + k.Name }

// Class is the key's admission class.
func (k *Key) Class() admission.Priority { return k.prio }

// Allows reports whether the key may use model.
func (k *Key) Allows(model string) bool {
	if len(k.Models) == 0 {
		return true
	}
	for _, g := range k.Models {
		if ok, _ := path.Match(g, model); ok {
			return true
		}
	}
	return false
}

// Usable says why a known key may not be used now ("" when it may), as an
// auth error code and message.
func (k *Key) Usable(now time.Time) (code, msg string) {
	switch {
	case k.Disabled:
		return CodeKeyDisabled, fmt.Sprintf("API key %q is disabled", k.Name)
	case k.Expires != nil && !now.Before(*k.Expires):
		return CodeKeyExpired, fmt.Sprintf("API key %q expired at %s", k.Name, k.Expires.UTC().Format(time.RFC3339))
	}
	return "", ""
}

// Error codes of the key checks.
const (
	CodeKeyDisabled     = "KEY_DISABLED"        // 401
	CodeKeyExpired      = "KEY_EXPIRED"         // 401
	CodeModelNotAllowed = "MODEL_NOT_ALLOWED"   // 403
	CodeRateLimited     = "rate_limit_exceeded" // 429, OpenAI's code; the message names the limit
)

// validate checks one key and fills its parsed fields.
func (k *Key) validate() error {
	if !nameRE.MatchString(k.Name) {
		return fmt.Errorf("key name %q: want 1-63 of a-z, 0-9, '.', '_', '-' starting with a letter or digit", k.Name)
	}
	hexd, ok := strings.CutPrefix(k.Digest, digestPrefix)
	if !ok || len(hexd) != 2*sha256.Size {
		return fmt.Errorf("key %s: digest must be %q and 64 hex digits (the secret itself is never stored)", k.Name, digestPrefix)
	}
	if _, err := hex.Decode(k.digest[:], []byte(hexd)); err != nil {
		return fmt.Errorf("key %s: digest: %w", k.Name, err)
	}
	for _, g := range k.Models {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			return fmt.Errorf("key %s: model glob %q is malformed", k.Name, g)
		}
	}
	p, err := admission.ParsePriority(k.Priority)
	if err != nil {
		return fmt.Errorf("key %s: %w", k.Name, err)
	}
	k.prio = p
	k.identity = k.Identity()
	if k.RPM < 0 || k.TPM < 0 || k.Concurrent < 0 {
		return fmt.Errorf("key %s: limits must be 0 (none) or positive", k.Name)
	}
	return nil
}
