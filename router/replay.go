package router

import "net/http"

// markReplayable lets net/http resend an upstream request on a fresh
// connection when a reused keep-alive connection fails before the first
// response byte: typically the engine closing it as idle just as we wrote
// (llama-server and uvicorn do so after 5 s). net/http only does that for
// requests it may replay, and a POST qualifies when it carries an
// idempotency key; a nil value marks it without sending the header. This
// is the router's own rule (retry before the first byte), applied to the
// same instance instead of failing the attempt.
func markReplayable(h http.Header) { h["X-Idempotency-Key"] = nil }
