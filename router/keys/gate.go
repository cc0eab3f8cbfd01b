package keys

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/internal/apierr"
)

// Gate is what the router asks about keys: is this secret a key (for
// authmin's middleware), may this key send this request now, and what did
// it use. Build it with NewGate.
type Gate struct {
	Store  *Store
	Limits *Limits
	Usage  *Usage
	now    func() time.Time
}

// NewGate joins a store, the limits and the usage accounting.
func NewGate(st *Store, l *Limits, u *Usage) *Gate {
	return &Gate{Store: st, Limits: l, Usage: u, now: time.Now}
}

// decoyKey stands in for the key a lookup did not find, so a miss does
// the same work after the lookup as a hit.
var decoyKey = &Key{Name: "decoy", identity: "key:decoy"}

// CheckKey implements authmin.KeyChecker. A miss evaluates a decoy key
// and then discards it: the work done does not depend on whether the
// token was right (see TestKeyCheckIsConstantTime).
func (g *Gate) CheckKey(token string) authmin.KeyVerdict {
	now := g.now()
	k, ok := g.Store.Current().Lookup(token)
	if !ok {
		k = decoyKey
	}
	code, msg := k.Usable(now)
	v := authmin.KeyVerdict{Known: true, Identity: k.identity, DenyCode: code, DenyMessage: msg, Value: k}
	if !ok {
		v = authmin.KeyVerdict{}
	}
	return v
}

// From is the key a request was authenticated with (nil: the single API
// token, or a loopback request without one).
func From(ctx context.Context) *Key {
	k, _ := authmin.KeyFrom(ctx).(*Key)
	return k
}

// Admit checks that k may use model and is under its limits, and counts
// the request. The error is the answer to send: 403 MODEL_NOT_ALLOWED or
// 429 rate_limit_exceeded with Retry-After.
func (g *Gate) Admit(k *Key, model string) (*Admission, *apierr.Error) {
	if !k.Allows(model) {
		g.Usage.Refused(k.Name, "model_not_allowed")
		return nil, &apierr.Error{Status: http.StatusForbidden, Code: CodeModelNotAllowed, Param: "model",
			Message: fmt.Sprintf("API key %q may not use model %q (it may use: %s)", k.Name, model, allowed(k))}
	}
	a, ref := g.Limits.Admit(k)
	if ref != nil {
		g.Usage.Refused(k.Name, ref.Limit)
		return nil, &apierr.Error{Status: http.StatusTooManyRequests, Code: CodeRateLimited, Type: "rate_limit_error",
			Message: ref.Error(), Retriable: true, RetryAfter: ref.RetryAfter}
	}
	return a, nil
}

func allowed(k *Key) string {
	if len(k.Models) == 0 {
		return "every model"
	}
	s := ""
	for i, m := range k.Models {
		if i > 0 {
			s += ", "
		}
		s += m
	}
	return s
}
