package scheduler

import "fmt"

// Error codes placement answers with (the predecessor's vocabulary).
const (
	CodeModelNotAvailable = "MODEL_NOT_AVAILABLE" // 404: no instance serves the model
	CodeNodeUnavailable   = "NODE_UNAVAILABLE"    // 503: pinned node unknown or not serving the model
	CodePoolUnready       = "POOL_UNREADY"        // 503: pinned pool known but not ready
	CodePoolUnavailable   = "POOL_UNAVAILABLE"    // 503: no instance passes the filters
	CodeInvalidParams     = "INVALID_PARAMS"      // 400: the placement request itself is wrong
)

// Error is a placement failure with its HTTP status.
type Error struct {
	Code      string
	Status    int
	Message   string
	Retriable bool
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

func errorf(code string, status int, retriable bool, format string, args ...any) *Error {
	return &Error{Code: code, Status: status, Retriable: retriable, Message: fmt.Sprintf(format, args...)}
}
