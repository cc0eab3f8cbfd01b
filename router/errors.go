package router

// Error codes the router answers with. They sit in error.code of the
// OpenAI envelope internal/apierr writes, so OpenAI SDKs surface them
// unchanged.
const (
	CodeModelNotAvailable = "MODEL_NOT_AVAILABLE" // 404: no instance serves the model (on that path)
	CodePoolUnavailable   = "POOL_UNAVAILABLE"    // 503: the model's instances are all ejected or draining
	CodeReplicaExhausted  = "REPLICA_EXHAUSTED"   // 502: every instance tried failed before answering
	CodeEngineTLS         = "ENGINE_TLS_FAILED"   // 503: every instance tried failed its TLS handshake (CA, name, client certificate)
	CodeWorkerReset       = "WORKER_RESET"        // SSE error event: the engine failed mid-answer
	CodeInvalidParams     = "INVALID_PARAMS"      // 400: the body is not what the endpoint takes
	CodeRequestTooLarge   = "REQUEST_TOO_LARGE"   // 413: body over max-body-bytes
	CodeMethodNotAllowed  = "METHOD_NOT_ALLOWED"  // 405
	CodeNotFound          = "NOT_FOUND"           // 404: no such endpoint
	CodeInternal          = "INTERNAL"            // 500
	CodeGenerationTimeout = "GENERATION_TIMEOUT"  // 504: a non-streamed answer ran past generation-timeout (not re-run)
	CodeEnginesBusy       = "ENGINES_BUSY"        // 429: every instance answered 429/503 + Retry-After until the queue timeout
	CodeNotSynced         = "NOT_SYNCED"          // 503: the router has not heard from the registry yet
	CodeEngineError       = "ENGINE_ERROR"        // /v2 error event: the engine refused the task (its status inside)
)
