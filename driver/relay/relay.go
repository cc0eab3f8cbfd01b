// Package relay is the authenticating reverse proxy a task supervisor runs
// on the task's port in front of an engine that has no authentication of
// its own (Ollama): the engine listens on loopback only, and the announced
// address answers 401 to any request without the engine token. Tokens are
// checked in constant time (authmin) and follow the token file; responses
// are flushed on every write so token streams are not held back. With a
// certificate the relay serves HTTPS (the pair follows its files) and can
// require client certificates from a CA (mTLS: only the router gets in).
package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/authmin"
	"github.com/llorch/llorch/internal/tlsfiles"
)

// Handler forwards authenticated requests to target ("127.0.0.1:port").
// The token is removed before forwarding: the engine has no use for it and
// must not log it.
func Handler(target string, tokens *authmin.TokenSet, log hclog.Logger) http.Handler {
	u := &url.URL{Scheme: "http", Host: target}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host
			r.Out.Header.Del("Authorization")
		},
		FlushInterval: -1, // flush after every write: streamed tokens go out as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			log.Warn("relay: engine unreachable", "path", r.URL.Path, "error", err)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprintf(w, `{"error":{"message":"engine not reachable behind the relay","type":"engine_unavailable"}}`+"\n")
		},
	}
	return authmin.Middleware(authmin.MiddlewareConfig{Tokens: tokens, Logger: log}, proxy)
}

// Relay is one running relay.
type Relay struct {
	srv    *http.Server
	cancel context.CancelFunc
	done   chan struct{}
	Addr   string
}

// TLS is the relay's HTTPS: no CertFile, plain HTTP.
type TLS struct {
	CertFile, KeyFile string
	// ClientCAFile, when set, makes a client certificate signed by one of
	// its CAs a condition of the handshake.
	ClientCAFile string
}

// Start listens on listen and serves until Close. The token comes from
// tokenFile and is re-read when the file changes; so is tl's pair.
func Start(listen, target, tokenFile string, tl TLS, log hclog.Logger) (*Relay, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	tokens, err := authmin.LoadTokenSet(tokenFile, "", 0, log)
	if err != nil {
		return nil, fmt.Errorf("relay token: %w", err)
	}
	if tokens.Empty() {
		return nil, errors.New("relay: no engine token (the token file is empty)")
	}
	var pair *tlsfiles.Pair
	var tlsCfg *tls.Config
	if tl.CertFile != "" || tl.ClientCAFile != "" {
		if pair, err = tlsfiles.LoadPair(tl.CertFile, tl.KeyFile); err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		var clientCAs *x509.CertPool
		if tl.ClientCAFile != "" {
			if clientCAs, err = tlsfiles.CAPool(tl.ClientCAFile); err != nil {
				return nil, fmt.Errorf("relay client CA: %w", err)
			}
		}
		tlsCfg = tlsfiles.ServerConfig(pair, tls.VersionTLS12, clientCAs)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("relay listen %s: %w", listen, err)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{
		srv: &http.Server{
			Handler:           Handler(target, tokens, log),
			ReadHeaderTimeout: 10 * time.Second,
			// No write timeout: a generation may stream for minutes.
		},
		cancel: cancel,
		done:   make(chan struct{}),
		Addr:   ln.Addr().String(),
	}
	go tokens.Watch(ctx, tokenFile, log)
	if pair != nil {
		go pair.Watch(ctx, "relay", log)
	}
	go func() {
		defer close(r.done)
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("relay stopped", "error", err)
		}
	}()
	return r, nil
}

// Close stops listening and ends open connections.
func (r *Relay) Close() {
	r.cancel()
	_ = r.srv.Close()
	<-r.done
}
