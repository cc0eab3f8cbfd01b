package router

import (
	"context"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Server timeouts shared by every process that serves the router
// (`llorch router` and `llorch home`).
const (
	// serverReadHeaderTimeout bounds a client that opens a connection and
	// sends its headers slowly.
	serverReadHeaderTimeout = 10 * time.Second
	// serverReadTimeout bounds a slow upload: request bodies are at most
	// max-body-bytes.
	serverReadTimeout = time.Minute
	// serverIdleTimeout closes keep-alive connections nobody uses.
	serverIdleTimeout = 2 * time.Minute
)

// HTTPServer is the server to serve Handler with. It has no WriteTimeout:
// an answer streams for as long as the engine produces, and a client that
// stops reading is cut per write instead (client-write-timeout, see
// clientWriter), so a long answer to a live reader is never cut.
func (rt *Router) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           rt.handler,
		ReadHeaderTimeout: serverReadHeaderTimeout,
		ReadTimeout:       serverReadTimeout,
		IdleTimeout:       serverIdleTimeout,
		ErrorLog:          rt.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
}

// Drain stops srv accepting and waits up to drain-timeout for answers in
// flight; after that they are cut (the error says so).
func (rt *Router) Drain(srv *http.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), rt.cfg.DrainTimeout)
	defer cancel()
	err := srv.Shutdown(ctx)
	if err != nil {
		_ = srv.Close()
	}
	return err
}
