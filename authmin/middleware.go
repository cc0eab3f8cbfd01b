package authmin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/internal/apierr"
)

// Error codes of the auth gate (error.code of its 401s; the startup
// refusal's prefix).
const (
	CodeMissingToken            = "MISSING_TOKEN"
	CodeBadToken                = "BAD_TOKEN"
	CodeNonLoopbackWithoutToken = "NON_LOOPBACK_WITHOUT_TOKEN"
)

// Hints end the 401 messages: what the client should do about it.
const (
	hintSend  = "send Authorization: Bearer <token> (or x-api-key: <token>)"
	hintCheck = "check the token file the server reads (its fingerprint is in the server log)"
)

// MiddlewareConfig configures Middleware.
type MiddlewareConfig struct {
	Tokens *TokenSet
	// AuthOptional lets requests from loopback peers in without a token
	// (LLORCH_AUTH_OPTIONAL=true). It never applies to other peers.
	AuthOptional bool
	// TrustForwardedFor takes the client address from X-Forwarded-For (the
	// right-most entry: the one our own proxy appended) instead of the TCP
	// peer. Only for deployments behind a proxy that sets it.
	TrustForwardedFor bool
	// Exempt requests skip auth (e.g. /healthz for load balancers).
	Exempt func(*http.Request) bool
	// Keys, when set, is asked about every well-formed token besides
	// Tokens: per-team API keys (router/keys). Both are always checked, so
	// the time an answer takes does not say which kind of token matched.
	Keys   KeyChecker
	Logger hclog.Logger
	// Attach hands an authenticated request's identity and key value to
	// the handlers. nil: they ride in the request's context (IdentityFrom,
	// KeyFrom). A server with per-request state of its own sets it there
	// instead, saving a context and a request copy per request.
	Attach func(r *http.Request, identity string, key any) *http.Request
}

// AuthOptionalFromEnv reads LLORCH_AUTH_OPTIONAL.
func AuthOptionalFromEnv() bool {
	v := strings.ToLower(os.Getenv("LLORCH_AUTH_OPTIONAL"))
	return v == "true" || v == "1"
}

type ctxKey struct{}

// keyCtxKey carries the KeyVerdict.Value of a request made with a key.
type keyCtxKey struct{}

// KeyChecker looks a presented token up among per-team keys in constant
// time (see router/keys).
type KeyChecker interface {
	CheckKey(token string) KeyVerdict
}

// KeyVerdict is a KeyChecker's answer. Known: the token is a key's secret;
// then Identity names it in logs ("key:team-a"), DenyCode and DenyMessage,
// when set, say why it may not be used now (401), and Value is what
// KeyFrom returns to the handlers.
type KeyVerdict struct {
	Known                 bool
	Identity              string
	DenyCode, DenyMessage string
	Value                 any
}

// KeyFrom is the KeyVerdict.Value of a request authenticated by a key (nil
// otherwise).
func KeyFrom(ctx context.Context) any { return ctx.Value(keyCtxKey{}) }

// IdentityLocalhost is the identity of a tokenless loopback request let in
// by AuthOptional.
const IdentityLocalhost = "localhost"

// IdentityFrom is the authenticated identity of a request: "token:<fp6>",
// "localhost" (loopback with AuthOptional) or "" (exempt).
func IdentityFrom(ctx context.Context) string {
	s, _ := ctx.Value(ctxKey{}).(string)
	return s
}

// Middleware requires a valid bearer token on every request it wraps.
func Middleware(cfg MiddlewareConfig, next http.Handler) http.Handler {
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	attach := cfg.Attach
	if attach == nil {
		attach = attachToContext
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cfg.Exempt != nil && cfg.Exempt(r) {
			next.ServeHTTP(w, r)
			return
		}
		peer := clientAddr(r, cfg.TrustForwardedFor)
		tok, err := Credential(r.Header)
		if errors.Is(err, ErrMissing) && cfg.AuthOptional && IsLoopback(peer) {
			log.Debug("auth ok", "identity", IdentityLocalhost, "path", r.URL.Path)
			next.ServeHTTP(w, attach(r, IdentityLocalhost, nil))
			return
		}
		okTok, id, kv := false, "", KeyVerdict{}
		if err == nil {
			okTok, id = cfg.Tokens.CheckIdentity(tok)
			if cfg.Keys != nil {
				kv = cfg.Keys.CheckKey(tok)
			}
		}
		switch {
		case errors.Is(err, ErrMissing):
			log.Info("auth denied", "code", CodeMissingToken, "peer", peer, "path", r.URL.Path)
			deny(w, CodeMissingToken, "missing bearer token", hintSend)
			return
		case err != nil:
			// The credential is malformed; fingerprint what was sent so an
			// operator can match it, never the value itself.
			log.Info("auth denied", "code", CodeBadToken, "peer", peer, "path", r.URL.Path, "reason", err.Error(),
				"identity", Identity(presented(presentedHeader(r.Header))))
			deny(w, CodeBadToken, "malformed bearer token: "+err.Error(), hintSend)
			return
		case kv.Known && kv.DenyCode != "":
			log.Info("auth denied", "code", kv.DenyCode, "peer", peer, "path", r.URL.Path, "identity", kv.Identity)
			deny(w, kv.DenyCode, kv.DenyMessage, "ask the operator for a new key")
			return
		case !okTok && !kv.Known:
			log.Info("auth denied", "code", CodeBadToken, "peer", peer, "path", r.URL.Path, "identity", Identity(tok))
			deny(w, CodeBadToken, "invalid bearer token", hintCheck)
			return
		}
		var key any
		if kv.Known {
			id, key = kv.Identity, kv.Value
		}
		if log.IsDebug() {
			log.Debug("auth ok", "identity", id, "path", r.URL.Path)
		}
		next.ServeHTTP(w, attach(r, id, key))
	})
}

// attachToContext is the default Attach: IdentityFrom and KeyFrom read it.
func attachToContext(r *http.Request, identity string, key any) *http.Request {
	ctx := context.WithValue(r.Context(), ctxKey{}, identity)
	if key != nil {
		ctx = context.WithValue(ctx, keyCtxKey{}, key)
	}
	return r.WithContext(ctx)
}

// Credential is the token a request presents: "Authorization: Bearer",
// or, without an Authorization header, Anthropic's "x-api-key" (what the
// Anthropic SDKs and Claude Code send). Both are checked the same way.
func Credential(h http.Header) (string, error) {
	if h.Get("Authorization") == "" {
		if k := h.Get("X-Api-Key"); k != "" {
			return ParseBearer("Bearer " + k)
		}
	}
	return ParseBearer(h.Get("Authorization"))
}

// presentedHeader is the header value a credential came in, in the
// "Bearer <token>" form presented reads.
func presentedHeader(h http.Header) string {
	if h.Get("Authorization") == "" && h.Get("X-Api-Key") != "" {
		return "Bearer " + h.Get("X-Api-Key")
	}
	return h.Get("Authorization")
}

// presented is what a malformed Authorization header offered as its
// credential (the part after the scheme), so the fingerprint in the log
// matches `llorch token fp` of the file the client meant to use.
func presented(header string) string {
	h := strings.TrimSpace(header)
	if i := strings.IndexByte(h, ' '); i > 0 {
		return strings.TrimSpace(h[i+1:])
	}
	return h
}

// deny answers 401 in the OpenAI envelope (type authentication_error) with
// the challenge RFC 6750 asks for. The message is fixed text plus the hint:
// nothing the client sent is echoed.
func deny(w http.ResponseWriter, code, msg, hint string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="llorch"`)
	apierr.Write(w, &apierr.Error{Status: http.StatusUnauthorized, Code: code, Message: msg + "; " + hint})
}

// clientAddr is the peer's IP: the TCP peer, or with trustXFF the
// right-most X-Forwarded-For entry (left-most entries are client-supplied
// and can be forged).
func clientAddr(r *http.Request, trustXFF bool) string {
	if trustXFF {
		if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
			parts := strings.Split(xff, ",")
			return strings.TrimSpace(parts[len(parts)-1])
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// IsLoopback reports whether a host, IP or host:port is loopback: all of
// 127.0.0.0/8, ::1, IPv4-mapped 127.x, and the name "localhost".
func IsLoopback(hostOrAddr string) bool {
	h := hostOrAddr
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// CheckBind is the startup policy: a listener on anything but loopback
// needs a token of at least MinTokenLen characters. The error text starts
// with the code so logs and exit messages carry it.
func CheckBind(addr string, tokens *TokenSet) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if IsLoopback(host) {
		return nil
	}
	if tokens.Empty() {
		return fmt.Errorf("%s: refusing to listen on %s without an API token; hint: llorch token new --file /etc/llorch/api.token, then set LLORCH_API_TOKEN_FILE", CodeNonLoopbackWithoutToken, displayAddr(addr))
	}
	if n := len(tokens.Current()); n < MinTokenLen {
		return fmt.Errorf("%s: refusing to listen on %s with a %d-character API token (at least %d required); hint: llorch token new --file /etc/llorch/api.token", CodeNonLoopbackWithoutToken, displayAddr(addr), n, MinTokenLen)
	}
	return nil
}

func displayAddr(a string) string {
	if strings.HasPrefix(a, ":") {
		return "all interfaces" + a
	}
	return a
}
